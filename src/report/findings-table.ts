// The findings table of the pages lorakit writes: one row per finding (classes error/warning/info) with its
// code, title and fix; the run's report adds the evidence, the comparison page the run each finding is from.
import type { Finding } from "../findings/index.js";
import { escapeHtml } from "./escape.js";

export interface FindingsTableOptions {
  /** What the page says when there is nothing to list. */
  empty: string;
  /** Show each finding's evidence (as JSON, cut at 1,500 characters). */
  evidence?: boolean;
  /** A first column: the run each finding is from, by row. */
  runs?: readonly string[];
}

export function findingsTable(findings: readonly Finding[], o: FindingsTableOptions): string {
  if (findings.length === 0) return `<p class="ok">${escapeHtml(o.empty)}</p>`;
  const head = [...(o.runs ? ["run"] : []), "severity", "code", "finding", ...(o.evidence ? ["evidence"] : []), "fix"];
  const rows = findings.map((f, i) => {
    const cells = [
      ...(o.runs ? [escapeHtml(o.runs[i] ?? "")] : []),
      f.severity,
      `<code>${escapeHtml(f.code)}</code>`,
      escapeHtml(f.title),
      ...(o.evidence ? [`<pre>${escapeHtml(JSON.stringify(f.evidence, null, 1).slice(0, 1500))}</pre>`] : []),
      escapeHtml(f.fix),
    ];
    return `<tr class="${f.severity}">${cells.map((c) => `<td>${c}</td>`).join("")}</tr>`;
  });
  return `<table class="findings"><tr>${head.map((h) => `<th>${h}</th>`).join("")}</tr>${rows.join("")}</table>`;
}
