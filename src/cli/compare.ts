// `lorakit compare a.yaml b.yaml`: the same recipe on two models (the seed's advice: try a second
// model, e.g. DeepSeek, to tell a model problem from a pipeline problem). Trains each run that has
// not finished yet, then puts loss curves, eval loss, exact match, findings and samples side by side
// in the terminal and in one HTML page.
import { writeFileSync } from "node:fs";
import path from "node:path";
import { type LoadedConfig, loadConfig } from "../config/load.js";
import { fromRow } from "../doctor/finding.js";
import { escapeHtml, lineChart } from "../report/html.js";
import { type MetricRow, type RunRow, RunStore, type SampleRow } from "../runs/store.js";
import { exactMatchShare, runRoad } from "../train/road.js";
import { defineCommand } from "./command.js";
import { withInterrupt } from "./interrupt.js";
import { colors, err, out, userPath } from "./io.js";
import { eventPrinter, stoppedLine } from "./progress.js";

export interface RunSummary {
  label: string;
  name: string;
  model: string;
  status: string;
  metrics: MetricRow[];
  findings: ReturnType<typeof fromRow>[];
  samples: SampleRow[];
  finalLoss: number | null;
  bestEval: { step: number; loss: number } | null;
  exactMatch: { before: number | null; after: number | null };
}

export function summarize(label: string, loaded: LoadedConfig, run: RunRow, store: RunStore): RunSummary {
  const metrics = store.metrics(run.id);
  const train = metrics.filter((m) => m.kind === "train" && m.loss !== null);
  const evals = metrics.filter((m) => m.kind === "eval" && m.loss !== null);
  const best = evals.reduce<MetricRow | null>(
    (b, m) => (b === null || (m.loss as number) < (b.loss as number) ? m : b),
    null,
  );
  const samples = store.samples(run.id);
  return {
    label,
    name: loaded.name,
    model: loaded.modelDir,
    status: run.status,
    metrics,
    findings: store.findings(run.id).map(fromRow),
    samples,
    finalLoss: train.at(-1)?.loss ?? null,
    bestEval: best ? { step: best.step, loss: best.loss as number } : null,
    exactMatch: { before: exactMatchShare(samples, "before"), after: exactMatchShare(samples, "after") },
  };
}

const fmt = (x: number | null, digits = 4) => (x === null ? "—" : x.toFixed(digits));
const pct = (x: number | null) => (x === null ? "—" : `${(100 * x).toFixed(1)}%`);

export function compareHtml(a: RunSummary, b: RunSummary): string {
  const series = (r: RunSummary, kind: "train" | "eval", color: string) => ({
    label: `${r.label} ${kind}`,
    color,
    points: r.metrics.filter((m) => m.kind === kind).map((m) => [m.step, m.loss ?? Number.NaN] as [number, number]),
  });
  const chart = lineChart("Loss", [
    series(a, "train", "#2563eb"),
    series(b, "train", "#dc2626"),
    series(a, "eval", "#93c5fd"),
    series(b, "eval", "#fca5a5"),
  ]);
  const row = (k: string, f: (r: RunSummary) => string) =>
    `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(f(a))}</td><td>${escapeHtml(f(b))}</td></tr>`;
  const findings = (r: RunSummary) =>
    r.findings.length === 0 ? "none" : r.findings.map((f) => `${f.severity} ${f.code}`).join("; ");
  const idx = [...new Set([...a.samples, ...b.samples].filter((s) => s.phase === "after").map((s) => s.idx))].slice(
    0,
    12,
  );
  const after = (r: RunSummary, i: number) => r.samples.find((s) => s.phase === "after" && s.idx === i);
  const samples = idx
    .map((i) => {
      const sa = after(a, i);
      const sb = after(b, i);
      return `<tr><td><pre>${escapeHtml((sa ?? sb)?.prompt ?? "")}</pre></td><td><pre>${escapeHtml(sa?.output ?? "—")}</pre></td><td><pre>${escapeHtml(sb?.output ?? "—")}</pre></td></tr>`;
    })
    .join("");
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lorakit compare</title>
<style>body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;padding:0 16px}table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}pre{margin:0;white-space:pre-wrap;font:12px ui-monospace,monospace}.chart svg text{font-size:11px;fill:#444}.grid{stroke:#eee}</style>
</head><body><h1>lorakit compare</h1>
<table><tr><th></th><th>${escapeHtml(a.label)}</th><th>${escapeHtml(b.label)}</th></tr>
${row("run", (r) => r.name)}${row("model", (r) => r.model)}${row("status", (r) => r.status)}
${row("final train loss", (r) => fmt(r.finalLoss))}${row("best eval loss", (r) => (r.bestEval ? `${fmt(r.bestEval.loss)} (step ${r.bestEval.step})` : "—"))}
${row("held-out exact match", (r) => `${pct(r.exactMatch.before)} → ${pct(r.exactMatch.after)}`)}${row("findings", findings)}</table>
<h2>Loss</h2>${chart}
<h2>Samples after training</h2><table><tr><th>prompt</th><th>${escapeHtml(a.label)}</th><th>${escapeHtml(b.label)}</th></tr>${samples}</table>
</body></html>
`;
}

export const command = defineCommand({
  name: "compare",
  summary: "run the same recipe on two models (or read two finished runs) and compare them side by side",
  args: "<a.yaml> <b.yaml>",
  positionals: [2, 2],
  description:
    "Trains each of the two runs that has not completed yet (a stopped one continues from its checkpoint, a " +
    "failed one starts over), then prints final and best eval loss, held-out exact match and findings side by " +
    "side, and writes one HTML page with both loss curves and the samples.",
  options: {
    "no-train": {
      type: "boolean",
      description: "only read runs that have completed; stop with an error if one has not",
    },
    out: {
      type: "string",
      value: "FILE",
      description: "where the HTML page goes (default compare-<a>-<b>.html in the current folder)",
    },
  },
  examples: [
    ["lorakit compare qwen.yaml deepseek.yaml", "train both (if needed) and compare them"],
    ["lorakit compare a.yaml b.yaml --no-train --out cmp.html", "compare two finished runs, page in cmp.html"],
  ],
  async run({ values, positionals }, io) {
    const summaries: RunSummary[] = [];
    for (const [i, configPath] of positionals.entries()) {
      const label = i === 0 ? "A" : "B";
      const loaded = await loadConfig(configPath as string, io.cwd, io.env);
      let store = RunStore.forOutputDir(loaded.outputDir);
      let run = store.getRun(loaded.name);
      if (run?.status !== "completed") {
        if (values["no-train"]) {
          err(io, `error: run '${loaded.name}' (${configPath}) has not finished; drop --no-train to train it`);
          store.close();
          return 1;
        }
        store.close();
        out(io, `${label}: training ${loaded.name} (${configPath})`);
        const { onEvent, progress, trace } = eventPrinter(io, loaded.config.train.log_every);
        const result = await withInterrupt(
          io,
          (signal) =>
            runRoad(loaded, {
              signal,
              env: io.env,
              log: (l) => progress.line(l),
              onEvent,
              // A run stopped earlier continues from its checkpoint; a failed one starts over.
              resume: run?.status === "stopped",
              fresh: run?.status === "failed",
            }),
          progress,
        ).finally(() => progress.end());
        if (result.status === "stopped") {
          out(io, stoppedLine(trace, `lorakit compare ${positionals.join(" ")}`));
          return 130;
        }
        if (result.error) throw result.error;
        store = RunStore.forOutputDir(loaded.outputDir);
        run = store.getRun(loaded.name) as RunRow;
      }
      summaries.push(summarize(label, loaded, run, store));
      store.close();
    }
    const [a, b] = summaries as [RunSummary, RunSummary];
    const c = colors(io);
    const line = (k: string, f: (r: RunSummary) => string) => out(io, `${k.padEnd(22)} ${f(a).padEnd(34)} ${f(b)}`);
    out(io, "");
    line("", (r) => c.bold(r.label));
    line("run", (r) => r.name);
    line("model", (r) => path.basename(r.model));
    line("final train loss", (r) => fmt(r.finalLoss));
    line("best eval loss", (r) => (r.bestEval ? `${fmt(r.bestEval.loss)} @${r.bestEval.step}` : "—"));
    line("exact match", (r) => `${pct(r.exactMatch.before)} → ${pct(r.exactMatch.after)}`);
    line(
      "findings",
      (r) =>
        `${r.findings.filter((f) => f.severity === "error").length} errors, ${r.findings.filter((f) => f.severity === "warning").length} warnings`,
    );
    const verdict =
      a.findings.some((f) => f.stage === "data") && b.findings.some((f) => f.stage === "data")
        ? "both runs have data findings: look at the pipeline (data, template) before the models"
        : a.finalLoss !== null &&
            b.finalLoss !== null &&
            Math.abs(a.finalLoss - b.finalLoss) / Math.max(a.finalLoss, b.finalLoss) > 0.5
          ? "the losses differ widely on the same recipe: the weaker model (or its template) is the suspect"
          : "the two runs behave alike: a problem shared by both is in the pipeline or the data, not the model";
    out(io, `\n${verdict}`);
    const file = userPath(io, values.out ?? `compare-${a.name}-${b.name}.html`);
    writeFileSync(file, compareHtml(a, b));
    out(io, `report      ${file}`);
    return 0;
  },
});
