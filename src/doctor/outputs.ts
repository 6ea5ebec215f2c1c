// After the run: the held-out samples generated before and after training. A model that learned its
// end-of-turn stops on its own; an adapter that learned anything changes some answers.
import { type Finding, makeFinding } from "../findings/index.js";

/** A generated sample: the run store's sample row, or a decoded `sample` event. */
export interface OutputSample {
  phase: "before" | "after";
  idx: number;
  /** Text, or the generated ids. */
  output: string | readonly number[];
  /** Ended on a stop token rather than max_new_tokens (0/1 in the store). */
  stopped: boolean | number;
}

/** Below this share of after-samples that stop on their own: OUTPUT_NO_STOP. */
export const MIN_STOP_SHARE = 0.5;
/** At or above this share of after-samples identical to before: OUTPUT_UNCHANGED. */
export const MAX_UNCHANGED_SHARE = 0.8;
const LISTED = 20;

function same(a: OutputSample["output"], b: OutputSample["output"]): boolean {
  if (typeof a === "string" || typeof b === "string") return String(a).trim() === String(b).trim();
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export function outputFindings(
  samples: readonly OutputSample[],
  opts: { minStopShare?: number; maxUnchangedShare?: number } = {},
): Finding[] {
  const out: Finding[] = [];
  const after = samples.filter((s) => s.phase === "after");
  const before = new Map(samples.filter((s) => s.phase === "before").map((s) => [s.idx, s]));
  if (after.length === 0) return out;

  const stopped = after.filter((s) => Boolean(s.stopped));
  const stopShare = stopped.length / after.length;
  if (stopShare < (opts.minStopShare ?? MIN_STOP_SHARE)) {
    const beforeStopped = [...before.values()].filter((s) => Boolean(s.stopped)).length;
    out.push(
      makeFinding("OUTPUT_NO_STOP", {
        stopped: stopped.length,
        total: after.length,
        share: Number(stopShare.toFixed(3)),
        threshold: opts.minStopShare ?? MIN_STOP_SHARE,
        not_stopped: after
          .filter((s) => !s.stopped)
          .map((s) => s.idx)
          .slice(0, LISTED),
        before_stopped: before.size > 0 ? `${beforeStopped} of ${before.size}` : null,
      }),
    );
  }

  const pairs = after.filter((s) => before.has(s.idx));
  if (pairs.length > 0) {
    const identical = pairs.filter((s) => same(s.output, (before.get(s.idx) as OutputSample).output));
    const share = identical.length / pairs.length;
    if (share >= (opts.maxUnchangedShare ?? MAX_UNCHANGED_SHARE)) {
      out.push(
        makeFinding("OUTPUT_UNCHANGED", {
          identical: identical.length,
          pairs: pairs.length,
          share: Number(share.toFixed(3)),
          threshold: opts.maxUnchangedShare ?? MAX_UNCHANGED_SHARE,
          samples: identical.map((s) => s.idx).slice(0, LISTED),
        }),
      );
    }
  }
  return out;
}
