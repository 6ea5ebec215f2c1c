// Held-out exact match: the share of scored samples whose generated answer equals the reference, before and
// after training, and the one line that says it.
import { pct } from "../format.js";
import type { SampleRow } from "./store.js";

export interface ExactMatch {
  before: number | null;
  after: number | null;
  /** Held-out samples with a reference to score against. */
  n: number;
}

/** Share of scored samples of a phase whose output equals the reference exactly (null when none is scored). */
export function exactMatchShare(samples: readonly SampleRow[], phase: "before" | "after"): number | null {
  const scored = samples.filter((s) => s.phase === phase && s.reference !== null);
  if (scored.length === 0) return null;
  return scored.filter((s) => s.output.trim() === (s.reference as string).trim()).length / scored.length;
}

/** "before 25.0% → after 75.0% (4 samples)". */
export function exactMatchText(em: ExactMatch): string {
  return `before ${pct(em.before)} → after ${pct(em.after)} (${em.n} samples)`;
}
