// The shape of the code catalogue: the stages a code belongs to, severities, and what the catalogue holds for
// a finding code and for an error code. Types only, so the catalogue's data files depend on nothing else.

export const STAGES = ["env", "config", "data", "model", "training", "outputs"] as const;
export type Stage = (typeof STAGES)[number];
export type Severity = "error" | "warning" | "info";

/** A finding code: what the doctor or the engine reports, with its default severity and the texts to fill. */
export interface CodeSpec {
  stage: Stage;
  severity: Severity;
  /** The README's severity where it depends on the config ("info (error with `train.device: cuda`)"). */
  severityNote?: string;
  /** The catalogue row (DOCTOR.md) the code answers. */
  row: string;
  /** `{key}` is replaced by the evidence value under `key`. */
  title: string;
  /** One sentence; `{key}` as in the title. */
  fix: string;
  /** When it is raised, for the README. */
  when: string;
}

/** An error code: what stops a command. */
export interface ErrorSpec {
  stage: Stage;
  /** Where it is raised: lorakit itself (TypeScript), the engine, or both under the same name. */
  from: "lorakit" | "engine" | "both";
  when: string;
}
