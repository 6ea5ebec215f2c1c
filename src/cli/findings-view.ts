// Findings for a person at a terminal (grouped by stage: ✗/!/· lines with evidence and fix) and for scripts
// (`--json`: {findings, summary}), as `lorakit doctor`, `train` and `compare` print them.
import {
  type Counts,
  countFindings,
  type Finding,
  STAGES,
  type Stage,
  showValue,
  sortFindings,
} from "../findings/index.js";
import { colors, type Io } from "./io.js";

export interface TextOptions {
  /** Indentation before each finding. */
  indent?: string;
  /** Evidence keys shown per finding. */
  maxEvidence?: number;
  /** Info findings: title only (default), or with evidence and fix. */
  verboseInfo?: boolean;
}

/** One finding for a terminal: `✗ error CODE  title`, then evidence and fix lines. */
export function renderFinding(f: Finding, io: Io, opts: TextOptions = {}): string {
  const c = colors(io);
  const pad = opts.indent ?? "";
  const mark =
    f.severity === "error"
      ? c.red(`✗ error   ${f.code}`)
      : f.severity === "warning"
        ? c.yellow(`! warning ${f.code}`)
        : c.cyan(`· info    ${f.code}`);
  const lines = [`${pad}${mark}  ${f.title}`];
  if (f.severity !== "info" || opts.verboseInfo) {
    const entries = Object.entries(f.evidence).slice(0, opts.maxEvidence ?? 6);
    if (entries.length > 0) {
      lines.push(`${pad}  ${c.dim("evidence")} ${entries.map(([k, v]) => `${k}: ${showValue(v, 80)}`).join("; ")}`);
    }
    lines.push(`${pad}  ${c.dim("fix")}      ${f.fix}`);
  }
  return lines.join("\n");
}

/** Findings grouped by stage, for a terminal. */
export function renderFindings(findings: readonly Finding[], io: Io, opts: TextOptions = {}): string {
  const out: string[] = [];
  for (const stage of STAGES) {
    const here = sortFindings(findings.filter((f) => f.stage === stage));
    if (here.length === 0) continue;
    out.push(`${opts.indent ?? ""}${stage}`);
    for (const f of here) out.push(renderFinding(f, io, { ...opts, indent: `${opts.indent ?? ""}  ` }));
  }
  return out.join("\n");
}

// ---------------------------------------------------------------- --json

export interface FindingsJson {
  findings: Finding[];
  summary: Counts & { ok: boolean; byStage: Record<Stage, Counts> } & Record<string, unknown>;
}

/** `{findings, summary}` as `lorakit doctor --json` prints it; `extra` joins the summary. */
export function toJson(findings: readonly Finding[], extra: Record<string, unknown> = {}): FindingsJson {
  const sorted = sortFindings(findings);
  const byStage = Object.fromEntries(
    STAGES.map((s) => [s, countFindings(sorted.filter((f) => f.stage === s))]),
  ) as Record<Stage, Counts>;
  const counts = countFindings(sorted);
  return { findings: sorted, summary: { ok: counts.errors === 0, ...counts, byStage, ...extra } };
}
