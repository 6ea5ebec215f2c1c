// runs/<name>/report.html: one self-contained page (no scripts, no network) with the loss and
// learning-rate charts, the findings, the resolved config and the samples before/after.
import { writeFileAtomic } from "../files/atomic.js";
import { fromRow } from "../findings/index.js";
import type { FindingRow, MetricRow, SampleRow } from "../runs/store.js";
import { escapeHtml } from "./escape.js";
import { findingsTable } from "./findings-table.js";
import { formatCount, formatTick, linearAxis, logAxis, spansDecades } from "./ticks.js";

export interface ReportInput {
  name: string;
  /** The outcome in words (road.ts outcomeText): "completed", "completed with 1 error finding: …", "failed". */
  status: string;
  /** How the status badge looks: ok (green), warning, error (red). Default: from the status's first word. */
  statusClass?: "ok" | "warning" | "error";
  configYaml: string;
  metrics: MetricRow[];
  findings: FindingRow[];
  samples: SampleRow[];
  summary: Record<string, string>;
}

export interface Series {
  label: string;
  color: string;
  points: [number, number][];
  /** Draw every point as a marker: eval points are few and each one matters. */
  markers?: boolean;
}

/** A row of token counts under the step ticks: cumulative trained tokens at each step. */
export interface TokenAxis {
  label: string;
  points: [step: number, tokens: number][];
}

export interface ChartOptions {
  /** auto (default): a log axis when every value is positive and they span a factor of 10 or more. */
  scale?: "linear" | "log" | "auto";
  /** What the y axis measures ("loss", "learning rate"). */
  yLabel?: string;
  tokens?: TokenAxis[];
  /** Keep 0 inside the y axis (a learning rate starts there). */
  zero?: boolean;
  /** The drawing's height in viewBox units (its width is 1000; the page scales both to fit). */
  height?: number;
}

/** The charts' style, one rule set for every page that draws them. */
export const CHART_CSS = `.chart{margin:12px 0 20px;width:100%}.chart figcaption{font-weight:600;margin-bottom:2px}
.chart svg{display:block;width:100%;height:auto}.chart svg text{font:14px system-ui,sans-serif;fill:#444}
.chart .legend text{font-size:15px;fill:#111}.chart .grid{stroke:#e5e7eb}.chart .axis{stroke:#9ca3af}
.chart .axis-title{font-weight:600}`;

/** The pages' common style (report.html, compare.html): text, headings, tables, code, the charts. */
export const PAGE_CSS = `body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#111;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
pre{margin:0;white-space:pre-wrap;word-break:break-word;font:12px/1.35 ui-monospace,monospace}
${CHART_CSS}`;

/** Cumulative trained tokens after each optimizer step, from the train metrics (each step's own count). */
export function cumulativeTokens(metrics: readonly MetricRow[]): [number, number][] {
  let sum = 0;
  return metrics
    .filter((m) => m.kind === "train")
    .sort((a, b) => a.step - b.step)
    .map((m) => {
      sum += m.tokens ?? 0;
      return [m.step, sum];
    });
}

/** Tokens at `step`: 0 before training, between recorded steps on the line joining them, none past the end. */
function tokensAt(points: readonly [number, number][], step: number): number | null {
  if (step <= 0) return 0;
  let prev: [number, number] = [0, 0];
  for (const p of points) {
    if (p[0] === step) return p[1];
    if (p[0] > step) return prev[1] + ((p[1] - prev[1]) * (step - prev[0])) / (p[0] - prev[0]);
    prev = p;
  }
  return null;
}

/**
 * A line chart as inline SVG that fills the width it is given (viewBox): 1-2-5 ticks (a log axis for values
 * spanning decades), markers where a series asks for them, the steps and the tokens trained under the x
 * axis, and a legend of coloured squares. Non-finite points are left out and break the line.
 */
export function lineChart(title: string, series: Series[], opts: ChartOptions = {}): string {
  const W = 1000;
  const H = opts.height ?? 340;
  const tokenRows = (opts.tokens ?? []).filter((t) => t.points.length > 0);
  const pad = { l: 92, r: 24, t: 44, b: 50 + 20 * tokenRows.length };
  const finite = (p: [number, number]) => Number.isFinite(p[0]) && Number.isFinite(p[1]);
  const pts = series.flatMap((s) => s.points).filter(finite);
  const caption = `<figcaption>${escapeHtml(title)}</figcaption>`;
  if (pts.length === 0) return `<figure class="chart">${caption}<p class="muted">no data</p></figure>`;
  const ysRaw = pts.map(([, y]) => y);
  if (opts.zero && opts.scale !== "log") ysRaw.push(0);
  const log = opts.scale === "log" || ((opts.scale ?? "auto") === "auto" && spansDecades(ysRaw));
  const xAxis = linearAxis(Math.min(...pts.map(([x]) => x)), Math.max(...pts.map(([x]) => x)), 10, 1);
  const yAxis = log
    ? logAxis(Math.min(...ysRaw), Math.max(...ysRaw))
    : linearAxis(Math.min(...ysRaw), Math.max(...ysRaw), 5);
  const ty = (y: number) => (log ? Math.log10(y) : y);
  const [x0, x1] = xAxis.domain;
  const [y0, y1] = yAxis.domain.map(ty) as [number, number];
  const sx = (x: number) => pad.l + ((x - x0) / (x1 - x0)) * (W - pad.l - pad.r);
  const sy = (y: number) => H - pad.b - ((ty(y) - y0) / (y1 - y0)) * (H - pad.t - pad.b);
  const f1 = (v: number) => v.toFixed(1);
  const bottom = H - pad.b;

  const yStep = yAxis.ticks.length > 1 ? (yAxis.ticks[1] as number) - (yAxis.ticks[0] as number) : 1;
  const yTicks = yAxis.ticks
    .map((v) => {
      const py = f1(sy(v));
      const label = formatTick(v, log ? v : yStep);
      return `<line x1="${pad.l}" x2="${W - pad.r}" y1="${py}" y2="${py}" class="grid"/><text class="tick y" x="${pad.l - 8}" y="${py}" dy="5" text-anchor="end">${label}</text>`;
    })
    .join("");
  const xStep = xAxis.ticks.length > 1 ? (xAxis.ticks[1] as number) - (xAxis.ticks[0] as number) : 1;
  const rowY = (row: number) => bottom + 22 + 20 * row;
  const xTicks = xAxis.ticks
    .map((v) => {
      const px = f1(sx(v));
      const tokens = tokenRows
        .map((t, row) => {
          const n = tokensAt(t.points, v);
          return n === null
            ? ""
            : `<text class="tick tokens" x="${px}" y="${rowY(row + 1)}" text-anchor="middle">${formatCount(n)}</text>`;
        })
        .join("");
      return `<line x1="${px}" x2="${px}" y1="${bottom}" y2="${bottom + 5}" class="axis"/><text class="tick x" x="${px}" y="${rowY(0)}" text-anchor="middle">${formatTick(v, xStep)}</text>${tokens}`;
    })
    .join("");
  const rowTitles = [
    `<text class="axis-title" x="${pad.l - 16}" y="${rowY(0)}" text-anchor="end">step</text>`,
    ...tokenRows.map(
      (t, row) =>
        `<text class="axis-title" x="${pad.l - 16}" y="${rowY(row + 1)}" text-anchor="end">${escapeHtml(t.label)}</text>`,
    ),
  ].join("");
  const yTitle = opts.yLabel
    ? `<text class="axis-title" transform="translate(18 ${f1((pad.t + bottom) / 2)}) rotate(-90)" text-anchor="middle">${escapeHtml(opts.yLabel)}${log ? " (log scale)" : ""}</text>`
    : "";
  const frame = `<line x1="${pad.l}" x2="${W - pad.r}" y1="${bottom}" y2="${bottom}" class="axis"/><line x1="${pad.l}" x2="${pad.l}" y1="${pad.t}" y2="${bottom}" class="axis"/>`;

  const lines = series
    .map((s) => {
      const segments: string[] = [];
      let pen = "M";
      for (const p of s.points) {
        if (!finite(p) || (log && !(p[1] > 0))) {
          pen = "M";
          continue;
        }
        segments.push(`${pen}${f1(sx(p[0]))},${f1(sy(p[1]))}`);
        pen = "L";
      }
      const good = s.points.filter((p) => finite(p) && (!log || p[1] > 0));
      const dots = s.markers
        ? good
            .map(
              ([x, y]) =>
                `<circle class="marker" data-series="${escapeHtml(s.label)}" cx="${f1(sx(x))}" cy="${f1(sy(y))}" r="5" fill="${s.color}" stroke="#fff" stroke-width="1.5"/>`,
            )
            .join("")
        : good.length < 40
          ? good.map(([x, y]) => `<circle cx="${f1(sx(x))}" cy="${f1(sy(y))}" r="2.5" fill="${s.color}"/>`).join("")
          : "";
      const path =
        segments.length > 1
          ? `<path data-series="${escapeHtml(s.label)}" d="${segments.join("")}" fill="none" stroke="${s.color}" stroke-width="2"/>`
          : "";
      return path + dots;
    })
    .join("");

  let lx = pad.l;
  const legend = series
    .map((s) => {
      const item = `<g class="legend-item" data-series="${escapeHtml(s.label)}"><rect class="swatch" x="${lx}" y="14" width="14" height="14" rx="2" fill="${s.color}"/><text x="${lx + 20}" y="26">${escapeHtml(s.label)}</text></g>`;
      lx += 44 + 8.5 * s.label.length;
      return item;
    })
    .join("");
  return `<figure class="chart">${caption}<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="xMidYMid meet" role="img" aria-label="${escapeHtml(title)}">${yTicks}${frame}${xTicks}${rowTitles}${yTitle}${lines}<g class="legend">${legend}</g></svg></figure>`;
}

/** report.html written whole or not at all (a full disk: DISK_FULL, the report written before intact). */
export function writeReport(file: string, r: ReportInput): void {
  writeFileAtomic(file, renderReport(r), { what: "the report" });
}

export function renderReport(r: ReportInput): string {
  const train = r.metrics.filter((m) => m.kind === "train");
  const evals = r.metrics.filter((m) => m.kind === "eval");
  const tokens = [{ label: "tokens", points: cumulativeTokens(r.metrics) }];
  const lossChart = lineChart(
    "Loss",
    [
      { label: "train", color: "#2563eb", points: train.map((m) => [m.step, m.loss ?? Number.NaN]) },
      { label: "eval", color: "#dc2626", points: evals.map((m) => [m.step, m.loss ?? Number.NaN]), markers: true },
    ],
    { yLabel: "loss", tokens },
  );
  const lrChart = lineChart(
    "Learning rate",
    [{ label: "lr", color: "#059669", points: train.map((m) => [m.step, m.lr ?? Number.NaN]) }],
    { yLabel: "learning rate", scale: "linear", zero: true, tokens, height: 260 },
  );
  const findings = findingsTable(r.findings.map(fromRow), { empty: "No findings.", evidence: true });
  const byIdx = new Map<number, { before?: SampleRow; after?: SampleRow }>();
  for (const s of r.samples) {
    const e = byIdx.get(s.idx) ?? {};
    e[s.phase] = s;
    byIdx.set(s.idx, e);
  }
  const cell = (s: SampleRow | undefined) => {
    if (!s) return "<td class='muted'>—</td>";
    const match = s.reference !== null ? (s.output.trim() === s.reference.trim() ? " match" : " miss") : "";
    return `<td class="out${match}"><pre>${escapeHtml(s.output)}</pre>${s.stopped ? "" : `<span class="warn">did not stop</span>`}</td>`;
  };
  const samples =
    byIdx.size === 0
      ? "<p class='muted'>No samples.</p>"
      : `<table><tr><th>#</th><th>prompt</th><th>reference</th><th>before</th><th>after</th></tr>${[...byIdx.entries()]
          .map(([idx, p]) => {
            const any = (p.after ?? p.before) as SampleRow;
            return `<tr><td>${idx}</td><td><pre>${escapeHtml(any.prompt)}</pre></td><td><pre>${escapeHtml(any.reference ?? "")}</pre></td>${cell(p.before)}${cell(p.after)}</tr>`;
          })
          .join("")}</table>`;
  const statusClass = r.statusClass ?? (r.status === "completed" ? "ok" : r.status === "stopped" ? "warning" : "error");
  const summary = Object.entries(r.summary)
    .map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`)
    .join("");
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lorakit — ${escapeHtml(r.name)}</title>
<style>
${PAGE_CSS}
.muted{color:#888}.ok{color:#059669}.error td:first-child{color:#dc2626;font-weight:600}
.warning td:first-child{color:#b45309;font-weight:600}.match{background:#ecfdf5}.miss{background:#fef2f2}.warn{color:#b45309;font-size:11px}
.status{display:inline-block;padding:1px 8px;border-radius:8px;background:#eef;font-size:12px}
.status.ok{background:#ecfdf5;color:#065f46}.status.warning{background:#fffbeb;color:#92400e}.status.error{background:#fef2f2;color:#991b1b}
</style></head><body>
<h1>lorakit run <code>${escapeHtml(r.name)}</code> <span class="status ${statusClass}">${escapeHtml(r.status)}</span></h1>
<table class="summary">${summary}</table>
<h2>Training</h2><div class="charts">${lossChart}${lrChart}</div>
<h2>Findings</h2>${findings}
<h2>Samples before and after</h2>${samples}
<h2>Config</h2><pre>${escapeHtml(r.configYaml)}</pre>
</body></html>
`;
}
