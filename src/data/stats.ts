// Numbers about a prepared split that the doctor reads: lengths, the trained share and where the
// trained tokens sit, truncation and its cost, samples with nothing trained, whether trained labels
// end with a stop token, duplicates and train/eval overlap, and special-token spellings typed in text.
//
// One cause, one number: the stop-token share is taken over the samples that were not cut by max_length
// and still train something. A cut sample lacks its stop because it was cut (counted under `truncated`); a
// sample with nothing trained is counted under `nothingTrained`.

import { createHash } from "node:crypto";
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

export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

export function lengthStats(lengths: ArrayLike<number>): LengthStats {
  const sorted = Float64Array.from(lengths).sort();
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
  let sum = 0;
  for (const x of sorted) sum += x;
  return {
    min: sorted[0] ?? 0,
    max,
    mean: sorted.length ? sum / sorted.length : 0,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p95: percentile(sorted, 95),
    p99: percentile(sorted, 99),
    histogram,
  };
}

const share = (a: number, b: number) => (b > 0 ? a / b : 0);

/** A growable array of 32-bit integers. */
export class IntList {
  data = new Int32Array(1024);
  length = 0;
  push(x: number): void {
    if (this.length === this.data.length) {
      const next = new Int32Array(this.data.length * 2);
      next.set(this.data);
      this.data = next;
    }
    this.data[this.length++] = x;
  }
  get(i: number): number {
    return this.data[i] as number;
  }
  view(): Int32Array {
    return this.data.subarray(0, this.length);
  }
}

/** 64-bit keys (two 32-bit halves) → a number, by open addressing. */
export class KeyTable {
  private hi = new Int32Array(1024);
  private lo = new Int32Array(1024);
  private val = new Int32Array(1024).fill(-1);
  size = 0;

  private slot(hi: number, lo: number): number {
    const mask = this.val.length - 1;
    let h = (lo ^ Math.imul(hi, 0x9e3779b1)) & mask;
    while (this.val[h] !== -1 && (this.hi[h] !== hi || this.lo[h] !== lo)) h = (h + 1) & mask;
    return h;
  }

  get(hi: number, lo: number): number {
    return this.val[this.slot(hi, lo)] as number;
  }

  set(hi: number, lo: number, value: number): void {
    if ((this.size + 1) * 2 > this.val.length) {
      const [h, l, v] = [this.hi, this.lo, this.val];
      this.hi = new Int32Array(v.length * 2);
      this.lo = new Int32Array(v.length * 2);
      this.val = new Int32Array(v.length * 2).fill(-1);
      this.size = 0;
      for (let i = 0; i < v.length; i++) if (v[i] !== -1) this.set(h[i] as number, l[i] as number, v[i] as number);
    }
    const i = this.slot(hi, lo);
    if (this.val[i] === -1) this.size++;
    this.hi[i] = hi;
    this.lo[i] = lo;
    this.val[i] = value;
  }
}

/** A conversation key (any string) as 64 bits: the first eight bytes of its sha256. */
export function key64(key: string): [number, number] {
  const d = createHash("sha256").update(key).digest();
  return [d.readInt32LE(0), d.readInt32LE(4)];
}

/**
 * The stats of one split, built one sample at a time in bounded memory per sample: running sums, the
 * first origins of each list, and per sample only numbers (length, origin, duplicate group), so a
 * million samples take tens of megabytes. Duplicates and overlap compare 64-bit hashes of the keys.
 */
export class StatsBuilder {
  samples = 0;
  private tokens = 0;
  private trained = 0;
  private trainedBefore = 0;
  private truncated = 0;
  private ends = 0;
  private endsOf = 0;
  private readonly missing: Origin[] = [];
  private prompt = 0;
  private asked = 0;
  private parsed = 0;
  private readonly nothing: Origin[] = [];
  private nothingN = 0;
  private readonly spell: Origin[] = [];
  private spellN = 0;
  private readonly lengths = new IntList();
  /** Per sample: file (index into `files`), line, record index (-1: none). */
  private readonly originFile = new IntList();
  private readonly originLine = new IntList();
  private readonly originSample = new IntList();
  private readonly files: string[] = [];
  private readonly fileIdx = new Map<string, number>();
  /** Per sample: its duplicate group; per group: how many, and its key. */
  private readonly groupOf = new IntList();
  private readonly groupCount = new IntList();
  private readonly groupHi = new IntList();
  private readonly groupLo = new IntList();
  private readonly groups = new KeyTable();

  /** Adds a sample; `key` is the 64-bit hash of its conversation key (see `key64`). */
  add(s: Omit<SampleFacts, "key">, key: [number, number]): void {
    this.samples++;
    this.tokens += s.tokens;
    this.trained += s.trained;
    this.trainedBefore += s.trainedBefore;
    if (s.truncated) this.truncated++;
    if (!s.truncated && s.trained > 0) {
      this.endsOf++;
      if (s.endsWithStop) this.ends++;
      else if (this.missing.length < LIST) this.missing.push(s.origin);
    }
    for (const [role, n] of Object.entries(s.trainedByRole)) if (role !== "assistant") this.prompt += n ?? 0;
    this.asked += s.trainedAsked ?? 0;
    if (s.trained === 0) {
      this.nothingN++;
      if (this.nothing.length < LIST) this.nothing.push(s.origin);
    }
    if (s.specialSpelling) {
      this.spellN++;
      if (this.spell.length < LIST) this.spell.push(s.origin);
    }
    this.parsed += s.contentSpecials;
    this.lengths.push(s.length);
    let f = this.fileIdx.get(s.origin.file);
    if (f === undefined) {
      f = this.files.push(s.origin.file) - 1;
      this.fileIdx.set(s.origin.file, f);
    }
    this.originFile.push(f);
    this.originLine.push(s.origin.line);
    this.originSample.push(s.origin.sample ?? -1);
    const [hi, lo] = key;
    let g = this.groups.get(hi, lo);
    if (g < 0) {
      g = this.groupCount.length;
      this.groups.set(hi, lo, g);
      this.groupCount.push(0);
      this.groupHi.push(hi);
      this.groupLo.push(lo);
    }
    this.groupCount.data[g] = this.groupCount.get(g) + 1;
    this.groupOf.push(g);
  }

  /** Whether some sample of this split has the key. */
  has(hi: number, lo: number): boolean {
    return this.groups.get(hi, lo) >= 0;
  }

  /** The origin of sample `i`, as it was given. */
  origin(i: number): Origin {
    const sample = this.originSample.get(i);
    const o: Origin = { file: this.files[this.originFile.get(i)] as string, line: this.originLine.get(i) };
    if (sample >= 0) o.sample = sample;
    return o;
  }

  /** The stats; `other` is the other split (for overlap). */
  finish(other?: { has(hi: number, lo: number): boolean }): DataStats {
    const n = this.samples;
    let dupSamples = 0;
    const chosen = new Map<number, Origin[]>();
    for (let g = 0; g < this.groupCount.length; g++) {
      const c = this.groupCount.get(g);
      if (c <= 1) continue;
      dupSamples += c - 1;
      if (chosen.size < LIST) chosen.set(g, []);
    }
    const overlap: Origin[] = [];
    let overlapN = 0;
    for (let i = 0; i < n; i++) {
      const g = this.groupOf.get(i);
      const list = chosen.get(g);
      if (list && list.length < 5) list.push(this.origin(i));
      if (other?.has(this.groupHi.get(g), this.groupLo.get(g))) {
        overlapN++;
        if (overlap.length < LIST) overlap.push(this.origin(i));
      }
    }
    const { tokens, trained, trainedBefore, truncated, prompt, asked } = this;
    return {
      samples: n,
      tokens,
      trainedTokens: trained,
      trainedShare: share(trained, tokens),
      length: lengthStats(this.lengths.view()),
      truncated: {
        samples: truncated,
        share: share(truncated, n),
        trainedTokensLost: trainedBefore - trained,
        trainedShareLost: share(trainedBefore - trained, trainedBefore),
      },
      nothingTrained: { samples: this.nothingN, origins: this.nothing },
      // With no sample to judge (all cut or untrained) the share is 1: nothing shows a missing stop.
      endsWithStop: {
        samples: this.ends,
        of: this.endsOf,
        share: this.endsOf > 0 ? this.ends / this.endsOf : 1,
        missing: this.missing,
      },
      trainedInPrompt: { tokens: prompt - asked, share: share(prompt - asked, trained), asked },
      duplicates: { samples: dupSamples, examples: [...chosen.values()] },
      overlap: { samples: overlapN, origins: overlap },
      specialSpellings: { samples: this.spellN, origins: this.spell, parsedAsSpecial: this.parsed },
    };
  }
}

/** Stats of one split; `otherKeys` are the other split's conversation keys (for overlap). */
export function computeStats(samples: readonly SampleFacts[], otherKeys?: ReadonlySet<string>): DataStats {
  const b = new StatsBuilder();
  for (const s of samples) b.add(s, key64(s.key));
  if (!otherKeys) return b.finish();
  const other = new KeyTable();
  for (const k of otherKeys) {
    const [hi, lo] = key64(k);
    other.set(hi, lo, 1);
  }
  return b.finish({ has: (hi, lo) => other.get(hi, lo) >= 0 });
}
