// A finding: one thing the doctor or the engine saw, with a stable code, a severity (an error stops the road, a
// warning does not), the evidence and the fix in one sentence. Made from the catalogue (codes/), carried on the
// wire as the `finding` event, stored as a row of the run store — and the one converter between findings and
// LorakitError, the error shape of a command: code = code, title = message, evidence ⊇ where, fix = hint.
import type { EventOf } from "../config/schema.js";
import { formatWhere, LorakitError } from "../errors.js";
import { CODES, type Code } from "./codes/index.js";
import { ERRORS } from "./error-codes.js";
import { type CodeSpec, type ErrorSpec, type Severity, STAGES, type Stage } from "./spec.js";

export interface Finding {
  code: string;
  severity: Severity;
  title: string;
  evidence: Record<string, unknown>;
  fix: string;
  stage: Stage;
}

export function specOf(code: string): CodeSpec | undefined {
  return (CODES as Record<string, CodeSpec>)[code];
}

/** The stage of any code, finding or error; a code the catalogue does not hold counts as training. */
export function stageOf(code: string): Stage {
  return specOf(code)?.stage ?? (ERRORS as Record<string, ErrorSpec>)[code]?.stage ?? "training";
}

/** A short text for an evidence value (numbers to 3 significant digits, lists of scalars joined). */
export function showValue(v: unknown, max = 120): string {
  let s: string;
  if (typeof v === "number") s = Number.isInteger(v) ? String(v) : Number(v.toPrecision(3)).toString();
  else if (typeof v === "string") s = v;
  else if (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x !== "object" || x === null))
    s = v.map((x) => showValue(x)).join(", ");
  else s = JSON.stringify(v) ?? String(v);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** Replaces `{key}` with the evidence value under `key` (left as is when absent). */
export function fill(template: string, evidence: Record<string, unknown>): string {
  return template.replace(/\{([A-Za-z0-9_]+)\}/g, (whole, key: string) =>
    key in evidence ? showValue(evidence[key]) : whole,
  );
}

/** A finding from the catalogue: title and fix filled from the evidence unless given. */
export function makeFinding(
  code: Code,
  evidence: Record<string, unknown>,
  over: { severity?: Severity; title?: string; fix?: string } = {},
): Finding {
  const s = CODES[code] as CodeSpec;
  return {
    code,
    severity: over.severity ?? s.severity,
    title: over.title ?? fill(s.title, evidence),
    evidence,
    fix: over.fix ?? fill(s.fix, evidence),
    stage: s.stage,
  };
}

/** A `finding` event from the engine as a Finding (its title and fix as sent; the stage from the catalogue). */
export function fromEvent(e: Omit<EventOf<"finding">, "type"> & { type?: "finding" }, stage?: Stage): Finding {
  return {
    code: e.code,
    severity: e.severity,
    title: e.title,
    evidence: e.evidence,
    fix: e.fix,
    stage: stage ?? stageOf(e.code),
  };
}

/** The wire shape (the `finding` event). */
export function toEvent(f: Finding): EventOf<"finding"> {
  return { type: "finding", code: f.code, severity: f.severity, title: f.title, evidence: f.evidence, fix: f.fix };
}

/** A row of the run store's findings table as a Finding. */
export function fromRow(r: {
  stage: string;
  code: string;
  severity: Severity;
  title: string;
  evidence_json: string;
  fix: string;
}): Finding {
  let evidence: Record<string, unknown> = {};
  try {
    evidence = JSON.parse(r.evidence_json) as Record<string, unknown>;
  } catch {
    evidence = { raw: r.evidence_json };
  }
  const stage = (STAGES as readonly string[]).includes(r.stage) ? (r.stage as Stage) : stageOf(r.code);
  return { code: r.code, severity: r.severity, title: r.title, evidence, fix: r.fix, stage };
}

export function hasErrors(findings: readonly Finding[]): boolean {
  return findings.some((f) => f.severity === "error");
}

const RANK: Record<Severity, number> = { error: 0, warning: 1, info: 2 };

/** Stage order, then errors before warnings before info, then code. */
export function sortFindings(findings: readonly Finding[]): Finding[] {
  return [...findings].sort(
    (a, b) =>
      STAGES.indexOf(a.stage) - STAGES.indexOf(b.stage) ||
      RANK[a.severity] - RANK[b.severity] ||
      a.code.localeCompare(b.code),
  );
}

export interface Counts {
  errors: number;
  warnings: number;
  info: number;
}

export function countFindings(findings: readonly Finding[]): Counts {
  return {
    errors: findings.filter((f) => f.severity === "error").length,
    warnings: findings.filter((f) => f.severity === "warning").length,
    info: findings.filter((f) => f.severity === "info").length,
  };
}

// ---------------------------------------------------------------- findings ⇄ LorakitError

/** Findings as one LorakitError: the first leads, the rest ride along (null when there are none). */
export function errorOfFindings(findings: readonly Pick<Finding, "code" | "title" | "fix">[]): LorakitError | null {
  if (findings.length === 0) return null;
  return LorakitError.fromList(findings.map((f) => new LorakitError(f.code, f.title, { hint: f.fix })));
}

/** The error findings as one LorakitError (the road stops with it); null when none is an error. */
export function findingsError(findings: readonly Finding[]): LorakitError | null {
  return errorOfFindings(findings.filter((f) => f.severity === "error"));
}

/** A LorakitError, with every problem it carries, as findings: where it happened joins the evidence. */
export function findingsOfError(err: LorakitError): Finding[] {
  return err.all().map((x) => {
    const where = Object.entries(x.where ?? {}).filter(([, v]) => v !== undefined);
    const evidence: Record<string, unknown> = { message: x.message, ...Object.fromEntries(where) };
    const at = formatWhere(x.where);
    const first = x.message.split("\n")[0] ?? x.message;
    return {
      code: x.code,
      severity: "error",
      title: at ? `${at}: ${first}` : first,
      evidence,
      fix: x.hint || "See the message; run the command again without --json for the whole output.",
      stage: stageOf(x.code),
    };
  });
}
