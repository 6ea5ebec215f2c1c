// The page of `lorakit compare`: one self-contained HTML file (no scripts, no network) with the verdict,
// how the two runs were obtained, what differs between them and what is the same, the loss curves, the
// findings of each run by name, and the samples after training beside the reference answer.

import type { Finding } from "../findings/index.js";
import { pct } from "../format.js";
import { type Difference, type FactDiff, findingCounts, originText, type RunSummary } from "../runs/compare.js";
import { ASPECTS } from "../runs/facts.js";
import type { SampleRow } from "../runs/store.js";
import { escapeHtml } from "./escape.js";
import { findingsTable } from "./findings-table.js";
import { cumulativeTokens, lineChart, PAGE_CSS } from "./html.js";

export interface CompareInput {
  a: RunSummary;
  b: RunSummary;
  diff: FactDiff;
  verdict: string[];
}

const fmt = (x: number | null, digits = 4) => (x === null ? "—" : x.toFixed(digits));

function diffRows(list: readonly Difference[]): string {
  return list
    .map(
      (d) =>
        `<tr class="${d.cause === "follows" ? "follows" : "changed"}" data-key="${escapeHtml(d.key)}"><td>${escapeHtml(d.cause === "follows" ? `${d.aspect} (follows)` : d.aspect)}</td><th><code>${escapeHtml(d.key)}</code></th><td>${escapeHtml(d.a?.shown ?? "—")}</td><td>${escapeHtml(d.b?.shown ?? "—")}</td></tr>`,
    )
    .join("");
}

function sampleCell(s: SampleRow | undefined): string {
  if (!s) return "<td class='muted'>—</td>";
  const match = s.reference !== null ? (s.output.trim() === s.reference.trim() ? " match" : " miss") : "";
  return `<td class="out${match}"><pre>${escapeHtml(s.output)}</pre>${s.stopped ? "" : `<span class="warn">did not stop</span>`}</td>`;
}

export function renderCompare({ a, b, diff, verdict }: CompareInput): string {
  const series = (r: RunSummary, kind: "train" | "eval", color: string) => ({
    label: `${r.label} ${kind}`,
    color,
    points: r.metrics.filter((m) => m.kind === kind).map((m) => [m.step, m.loss ?? Number.NaN] as [number, number]),
    markers: kind === "eval",
  });
  // Token counts per step differ between runs (tokenizers, data): one row each, or one when they agree.
  const [ta, tb] = [cumulativeTokens(a.metrics), cumulativeTokens(b.metrics)];
  const tokens =
    JSON.stringify(ta) === JSON.stringify(tb)
      ? [{ label: "tokens", points: ta }]
      : [
          { label: `${a.label} tokens`, points: ta },
          { label: `${b.label} tokens`, points: tb },
        ];
  const chart = lineChart(
    "Loss",
    [
      series(a, "train", "#2563eb"),
      series(b, "train", "#dc2626"),
      series(a, "eval", "#7c3aed"),
      series(b, "eval", "#ea580c"),
    ],
    { yLabel: "loss", tokens },
  );
  const row = (k: string, f: (r: RunSummary) => string, cls = "") =>
    `<tr${cls ? ` class="${cls}"` : ""}><th>${escapeHtml(k)}</th><td>${escapeHtml(f(a))}</td><td>${escapeHtml(f(b))}</td></tr>`;

  const changed = diff.differences.filter((d) => d.cause !== "follows");
  const follows = diff.differences.filter((d) => d.cause === "follows");
  const differs =
    diff.differences.length === 0
      ? `<p class="ok">Nothing differs in what the two runs trained with.</p>`
      : `<table class="diff"><tr><th>aspect</th><th>setting</th><th>${escapeHtml(a.label)}</th><th>${escapeHtml(b.label)}</th></tr>${diffRows(changed)}${diffRows(follows)}</table>${follows.length > 0 ? `<p class="muted">“follows”: differs only because of another change (e.g. a value chosen for each model).</p>` : ""}`;
  const same =
    diff.same.length === 0
      ? "<p class='muted'>nothing</p>"
      : `<table><tr><th>aspect</th><th>setting</th><th>both</th></tr>${[...diff.same]
          .sort((x, y) => ASPECTS.indexOf(x.aspect) - ASPECTS.indexOf(y.aspect))
          .map(
            (f) =>
              `<tr><td>${escapeHtml(f.aspect)}</td><th><code>${escapeHtml(f.key)}</code></th><td>${escapeHtml(f.shown)}</td></tr>`,
          )
          .join("")}</table>`;

  // Each finding once: one both runs have (same code and title) is marked "both".
  const key = (f: Finding) => `${f.code}\n${f.title}`;
  const inA = new Set(a.findings.map(key));
  const inB = new Set(b.findings.map(key));
  const findingRows: [string, Finding][] = [
    ...a.findings.map((f): [string, Finding] => [inB.has(key(f)) ? "both" : a.label, f]),
    ...b.findings.filter((f) => !inA.has(key(f))).map((f): [string, Finding] => [b.label, f]),
  ];
  const findings = findingsTable(
    findingRows.map(([, f]) => f),
    { empty: "No findings in either run.", runs: findingRows.map(([run]) => run) },
  );

  const after = (r: RunSummary, i: number) => r.samples.find((s) => s.phase === "after" && s.idx === i);
  const idx = [...new Set([...a.samples, ...b.samples].filter((s) => s.phase === "after").map((s) => s.idx))]
    .sort((x, y) => x - y)
    .slice(0, 24);
  const samples =
    idx.length === 0
      ? "<p class='muted'>No samples.</p>"
      : `<table class="samples"><tr><th>#</th><th>prompt</th><th>reference</th><th>${escapeHtml(a.label)} after</th><th>${escapeHtml(b.label)} after</th></tr>${idx
          .map((i) => {
            const sa = after(a, i);
            const sb = after(b, i);
            const any = (sa ?? sb) as SampleRow;
            return `<tr><td>${i}</td><td><pre>${escapeHtml(any.prompt)}</pre></td><td class="reference"><pre>${escapeHtml(any.reference ?? "—")}</pre></td>${sampleCell(sa)}${sampleCell(sb)}</tr>`;
          })
          .join("")}</table>`;

  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lorakit compare — ${escapeHtml(a.name)} vs ${escapeHtml(b.name)}</title>
<style>
${PAGE_CSS}
.verdict{background:#f5f7ff;border:1px solid #c7d2fe;border-radius:6px;padding:8px 12px}.verdict p{margin:4px 0}
.muted{color:#888}.ok{color:#059669}.changed td,.changed th{background:#fff7ed}.follows{color:#666}
.error td:nth-child(2){color:#dc2626;font-weight:600}.warning td:nth-child(2){color:#b45309;font-weight:600}
.match{background:#ecfdf5}.miss{background:#fef2f2}.warn{color:#b45309;font-size:11px}
</style></head><body><h1>lorakit compare: <code>${escapeHtml(a.name)}</code> vs <code>${escapeHtml(b.name)}</code></h1>
<div class="verdict">${verdict.map((l) => `<p>${escapeHtml(l)}</p>`).join("")}</div>
<h2>Runs</h2>
<table class="summary"><tr><th></th><th>${escapeHtml(a.label)}</th><th>${escapeHtml(b.label)}</th></tr>
${row("run", (r) => r.name)}${row("model", (r) => r.model)}${row("origin", originText, "origin")}${row("status", (r) => r.status)}
${row("final train loss", (r) => fmt(r.finalLoss))}${row("best eval loss", (r) => (r.bestEval ? `${fmt(r.bestEval.loss)} (step ${r.bestEval.step})` : "—"))}
${row("held-out exact match", (r) => `${pct(r.exactMatch.before)} → ${pct(r.exactMatch.after)}`)}${row("findings", (r) => findingCounts(r.findings))}</table>
<h2>What differs</h2>${differs}
<h2>What is the same</h2><details class="same"><summary>${diff.same.length} settings are the same in both runs</summary>${same}</details>
<h2>Loss</h2>${chart}
<h2>Findings</h2>${findings}
<h2>Samples after training</h2>${samples}
</body></html>
`;
}
