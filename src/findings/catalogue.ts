// The code catalogue as a whole: every code lorakit can answer with — the findings (codes/) and the errors
// that stop a command (error-codes.ts) — listed for the README's tables and exported for the engine as
// protocol/findings.json (`npm run protocol`; tests check both are current).
import { CODES } from "./codes/index.js";
import { ERRORS, RENAMED } from "./error-codes.js";
import { type CodeSpec, type ErrorSpec, STAGES, type Stage } from "./spec.js";

export interface CatalogueEntry {
  code: string;
  stage: Stage;
  kind: "finding" | "error";
  severity: string;
  when: string;
}

/** Every code, findings first (in registry order), then errors, per stage in STAGES order. */
export function catalogue(): CatalogueEntry[] {
  const findings = Object.entries(CODES as Record<string, CodeSpec>).map(([code, s]) => ({
    code,
    stage: s.stage,
    kind: "finding" as const,
    severity: s.severityNote ?? s.severity,
    when: s.when,
  }));
  const errors = Object.entries(ERRORS as Record<string, ErrorSpec>).map(([code, s]) => ({
    code,
    stage: s.stage,
    kind: "error" as const,
    severity: "error, stops the command",
    when: s.from === "engine" ? `(engine) ${s.when}` : s.when,
  }));
  const all = [...findings, ...errors];
  return STAGES.flatMap((stage) => all.filter((x) => x.stage === stage));
}

export function isCatalogued(code: string): boolean {
  return code in CODES || code in ERRORS;
}

// ---------------------------------------------------------------- the README's tables

const STAGE_TITLES: Record<Stage, string> = {
  env: "Environment",
  config: "Config",
  data: "Data",
  model: "Model",
  training: "Training",
  outputs: "Outputs",
};

export const README_BEGIN =
  "<!-- BEGIN GENERATED: codes (src/findings/; `npm run protocol` writes this, do not edit) -->";
export const README_END = "<!-- END GENERATED: codes -->";

const cell = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");

/** The code tables, one per stage, and the renamed codes. */
export function catalogueMarkdown(): string {
  const entries = catalogue();
  const out: string[] = [];
  for (const stage of STAGES) {
    out.push(`#### ${STAGE_TITLES[stage]} (\`${stage}\`)`, "", "| code | severity | when |", "| --- | --- | --- |");
    for (const x of entries.filter((y) => y.stage === stage)) {
      out.push(`| \`${x.code}\` | ${cell(x.severity)} | ${cell(x.when)} |`);
    }
    out.push("");
  }
  out.push(
    "Renamed codes (the old name is no longer emitted): " +
      Object.entries(RENAMED)
        .map(([from, to]) => `\`${from}\` → \`${to}\``)
        .join(", ") +
      ".",
  );
  return out.join("\n");
}

/** `readme` with the text between the markers replaced by the current tables. */
export function withCatalogue(readme: string): string {
  const a = readme.indexOf(README_BEGIN);
  const b = readme.indexOf(README_END);
  if (a < 0 || b < a) throw new Error(`README.md lacks the markers ${README_BEGIN} … ${README_END}`);
  return `${readme.slice(0, a + README_BEGIN.length)}\n\n${catalogueMarkdown()}\n\n${readme.slice(b)}`;
}

/** protocol/findings.json: every code with what the engine needs to emit it (a finding's title and fix are
 * templates, `{key}` filled from the evidence). */
export function findingsJson(): unknown {
  return {
    version: 1,
    codes: Object.fromEntries(
      Object.entries(CODES as Record<string, CodeSpec>).map(([code, s]) => [
        code,
        { stage: s.stage, severity: s.severity, title: s.title, fix: s.fix, row: s.row },
      ]),
    ),
    errors: ERRORS,
  };
}
