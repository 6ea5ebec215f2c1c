// Labels from a rendered sample: the id where the template trains, -100 elsewhere. `max_length` caps
// the whole sample (prompt + answer): the end is cut, the prompt's start kept, and what the cut cost is
// counted. `mask_history` trains only the last trained assistant turn of a multi-turn sample.
import type { Role } from "./formats.js";
import type { Rendered } from "./template.js";

export const IGNORE = -100;

export interface MaskOptions {
  maxLength: number;
  maskHistory?: boolean;
}

export interface Labeled {
  ids: number[];
  labels: number[];
  roles: Role[];
  /** Trained tokens kept (a label at position 0 is never predicted, so it never counts). */
  trained: number;
  /** Trained tokens before the cut. */
  trainedBefore: number;
  truncated: boolean;
  /** Tokens cut off the end. */
  cut: number;
}

export function buildLabels(r: Rendered, opts: MaskOptions): Labeled {
  const trained = r.trained.slice();
  if (opts.maskHistory && r.spans.length > 1) {
    const last = r.spans[r.spans.length - 1] as Rendered["spans"][number];
    for (let i = 0; i < trained.length; i++) if (i < last.start || i >= last.end) trained[i] = false;
  }
  trained[0] = false;
  const trainedBefore = trained.reduce((n, t) => n + (t ? 1 : 0), 0);
  const keep = Math.min(r.ids.length, opts.maxLength);
  const ids = r.ids.slice(0, keep);
  const labels = ids.map((id, i) => (trained[i] ? id : IGNORE));
  const kept = labels.reduce((n, l) => n + (l !== IGNORE ? 1 : 0), 0);
  return {
    ids,
    labels,
    roles: r.roles.slice(0, keep),
    trained: kept,
    trainedBefore,
    truncated: keep < r.ids.length,
    cut: r.ids.length - keep,
  };
}
