// runs/<name>/report.html: one self-contained page (no scripts, no network) with the loss and
// learning-rate charts, the findings, the resolved config and the samples before/after.
import { fromRow } from "../findings/index.js";
import type { FindingRow, MetricRow, SampleRow } from "../runs/store.js";
import { escapeHtml } from "./escape.js";
import { findingsTable } from "./findings-table.js";

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

interface Series {
  label: string;
  color: string;
  points: [number, number][];
}

/** A line chart as inline SVG; non-finite points are left out. */
export function lineChart(title: string, series: Series[], opts: { log?: boolean } = {}): string {
  const W = 560;
  const H = 220;
  const pad = { l: 58, r: 12, t: 26, b: 30 };
  const pts = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (pts.length === 0)
    return `<figure class="chart"><figcaption>${escapeHtml(title)}</figcaption><p class="muted">no data</p></figure>`;
  const tf = (y: number) => (opts.log ? Math.log10(Math.max(y, 1e-12)) : y);
  const xs = pts.map(([x]) => x);
  const ys = pts.map(([, y]) => tf(y));
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
  const sx = (x: number) => pad.l + ((x - x0) / (x1 - x0)) * (W - pad.l - pad.r);
  const sy = (y: number) => H - pad.b - ((tf(y) - y0) / (y1 - y0)) * (H - pad.t - pad.b);
  const fmt = (v: number) =>
    Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(1) : v.toPrecision(3);
  const ticks = [0, 0.5, 1].map((f) => {
    const yv = y0 + f * (y1 - y0);
    const real = opts.log ? 10 ** yv : yv;
    const py = H - pad.b - f * (H - pad.t - pad.b);
    return `<line x1="${pad.l}" x2="${W - pad.r}" y1="${py}" y2="${py}" class="grid"/><text x="${pad.l - 6}" y="${py + 4}" text-anchor="end">${fmt(real)}</text>`;
  });
  const lines = series
    .filter((s) => s.points.length > 0)
    .map((s) => {
      const good = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
      const d = good.map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join("");
      const dots =
        good.length < 40
          ? good
              .map(([x, y]) => `<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="2.5" fill="${s.color}"/>`)
              .join("")
          : "";
      return `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"/>${dots}`;
    });
  const legend = series
    .map((s, i) => `<text x="${pad.l + 8 + i * 110}" y="16" fill="${s.color}">■ ${escapeHtml(s.label)}</text>`)
    .join("");
  return `<figure class="chart"><figcaption>${escapeHtml(title)}</figcaption><svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${escapeHtml(title)}">${ticks.join("")}${lines.join("")}${legend}<text x="${(W + pad.l) / 2}" y="${H - 6}" text-anchor="middle">step (${x0}–${x1})</text></svg></figure>`;
}

export function renderReport(r: ReportInput): string {
  const train = r.metrics.filter((m) => m.kind === "train");
  const evals = r.metrics.filter((m) => m.kind === "eval");
  const lossChart = lineChart("Loss", [
    { label: "train", color: "#2563eb", points: train.map((m) => [m.step, m.loss ?? Number.NaN]) },
    { label: "eval", color: "#dc2626", points: evals.map((m) => [m.step, m.loss ?? Number.NaN]) },
  ]);
  const lrChart = lineChart("Learning rate", [
    { label: "lr", color: "#059669", points: train.map((m) => [m.step, m.lr ?? Number.NaN]) },
  ]);
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
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#111;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
pre{margin:0;white-space:pre-wrap;word-break:break-word;font:12px/1.35 ui-monospace,monospace}
.charts{display:flex;flex-wrap:wrap;gap:16px}.chart{margin:0}.chart svg text{font-size:11px;fill:#444}.grid{stroke:#eee}
figcaption{font-weight:600}.muted{color:#888}.ok{color:#059669}.error td:first-child{color:#dc2626;font-weight:600}
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
