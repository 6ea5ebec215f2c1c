// Numbers about a prepared split that the doctor reads: lengths, the trained share and where the
// trained tokens sit, truncation and its cost, samples with nothing trained, whether trained labels
// end with a stop token, duplicates and train/eval overlap, and special-token spellings typed in text.
//
// One cause, one number: the stop-token share is taken over the samples that were not cut by max_length
// and still train something. A cut sample lacks its stop because it was cut (counted under `truncated`); a
// sample with nothing trained is counted under `nothingTrained`.

import type { Role } from "./formats.js";
import type { Origin } from "./read.js";

export interface SampleFacts {
  origin: Origin;
  /** Tokens of the rendered sample before the cut. */
  length: number;
  /** Tokens kept. */
  tokens: number;
  trained: number;
  trainedBefore: number;
  truncated: boolean;
  /** The last trained label is one of the stop ids. */
  endsWithStop: boolean;
  trainedByRole: Partial<Record<Role, number>>;
  /** Trained tokens of non-assistant turns the data asked to learn (`loss: true`): not a masking mistake. */
  trainedAsked?: number;
  /** Normalized conversation (duplicates and overlap). */
  key: string;
  /** Message content spells a special token (e.g. `<|user|>` typed as text). */
  specialSpelling: boolean;
  /** Such spellings that became special ids (jinja templates that transform content). */
  contentSpecials: number;
}

export interface LengthStats {
  min: number;
  max: number;
  mean: number;
  p50: number;
  p90: number;
  p95: number;
  p99: number;
  /** Samples per length bucket: `upTo` is the inclusive upper edge. */
  histogram: { upTo: number; count: number }[];
}

export interface DataStats {
  samples: number;
  tokens: number;
  trainedTokens: number;
  /** trainedTokens / tokens. */
  trainedShare: number;
  /** Rendered lengths before the cut. */
  length: LengthStats;
  truncated: { samples: number; share: number; trainedTokensLost: number; trainedShareLost: number };
  nothingTrained: { samples: number; origins: Origin[] };
  /** Of the samples not cut and with something trained (`of`), those whose trained labels end with a stop id. */
  endsWithStop: { samples: number; of: number; share: number; missing: Origin[] };
  /**
   * Trained tokens inside system/user/observation/tool turns that no `loss: true` asked for (the prompt being
   * learned by mistake); `asked`: those the data marked to learn.
   */
  trainedInPrompt: { tokens: number; share: number; asked: number };
  duplicates: { samples: number; examples: Origin[][] };
  /** Samples of this split whose conversation is also in the other split. */
  overlap: { samples: number; origins: Origin[] };
  specialSpellings: { samples: number; origins: Origin[]; parsedAsSpecial: number };
}

const LIST = 20;

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

export function lengthStats(lengths: readonly number[]): LengthStats {
  const sorted = [...lengths].sort((a, b) => a - b);
  const max = sorted[sorted.length - 1] ?? 0;
  const histogram: LengthStats["histogram"] = [];
  let edge = 32;
  let i = 0;
  for (;;) {
    let count = 0;
    while (i < sorted.length && (sorted[i] as number) <= edge) {
      count++;
      i++;
    }
    histogram.push({ upTo: edge, count });
    if (edge >= max) break;
    edge *= 2;
  }
  return {
    min: sorted[0] ?? 0,
    max,
    mean: sorted.length ? sorted.reduce((a, b) => a + b, 0) / sorted.length : 0,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p95: percentile(sorted, 95),
    p99: percentile(sorted, 99),
    histogram,
  };
}

const share = (a: number, b: number) => (b > 0 ? a / b : 0);

/** Stats of one split; `otherKeys` are the other split's conversation keys (for overlap). */
export function computeStats(samples: readonly SampleFacts[], otherKeys?: ReadonlySet<string>): DataStats {
  let tokens = 0;
  let trained = 0;
  let trainedBefore = 0;
  let truncated = 0;
  let ends = 0;
  let endsOf = 0;
  const missing: Origin[] = [];
  let prompt = 0;
  let asked = 0;
  let parsed = 0;
  const nothing: Origin[] = [];
  let nothingN = 0;
  const groups = new Map<string, Origin[]>();
  const overlap: Origin[] = [];
  let overlapN = 0;
  const spell: Origin[] = [];
  let spellN = 0;
  for (const s of samples) {
    tokens += s.tokens;
    trained += s.trained;
    trainedBefore += s.trainedBefore;
    if (s.truncated) truncated++;
    if (!s.truncated && s.trained > 0) {
      endsOf++;
      if (s.endsWithStop) ends++;
      else if (missing.length < LIST) missing.push(s.origin);
    }
    for (const [role, n] of Object.entries(s.trainedByRole)) if (role !== "assistant") prompt += n ?? 0;
    asked += s.trainedAsked ?? 0;
    if (s.trained === 0) {
      nothingN++;
      if (nothing.length < LIST) nothing.push(s.origin);
    }
    const g = groups.get(s.key);
    if (g) g.push(s.origin);
    else groups.set(s.key, [s.origin]);
    if (otherKeys?.has(s.key)) {
      overlapN++;
      if (overlap.length < LIST) overlap.push(s.origin);
    }
    if (s.specialSpelling) {
      spellN++;
      if (spell.length < LIST) spell.push(s.origin);
    }
    parsed += s.contentSpecials;
  }
  const dupGroups = [...groups.values()].filter((g) => g.length > 1);
  return {
    samples: samples.length,
    tokens,
    trainedTokens: trained,
    trainedShare: share(trained, tokens),
    length: lengthStats(samples.map((s) => s.length)),
    truncated: {
      samples: truncated,
      share: share(truncated, samples.length),
      trainedTokensLost: trainedBefore - trained,
      trainedShareLost: share(trainedBefore - trained, trainedBefore),
    },
    nothingTrained: { samples: nothingN, origins: nothing },
    // With no sample to judge (all cut or untrained) the share is 1: nothing shows a missing stop.
    endsWithStop: { samples: ends, of: endsOf, share: endsOf > 0 ? ends / endsOf : 1, missing },
    trainedInPrompt: { tokens: prompt - asked, share: share(prompt - asked, trained), asked },
    duplicates: {
      samples: dupGroups.reduce((n, g) => n + g.length - 1, 0),
      examples: dupGroups.slice(0, LIST).map((g) => g.slice(0, 5)),
    },
    overlap: { samples: overlapN, origins: overlap },
    specialSpellings: { samples: spellN, origins: spell, parsedAsSpecial: parsed },
  };
}
