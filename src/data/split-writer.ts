// One split of the prepared data written as its samples arrive: token ids staged and spooled beside the output,
// per-sample numbers kept for the manifest and stats, then tokens.safetensors copied together from the spools.
import { closeSync, openSync, rmSync } from "node:fs";
import path from "node:path";
import type { BatchResult, Facts, Outcome } from "./prepare-batch.js";
import { MANIFEST_VERSION, type SplitManifest } from "./prepare-types.js";
import { type Origin, ProblemList } from "./read.js";
import { writeAll, writeSafetensors } from "./safetensors.js";
import { type DataStats, IntList, StatsBuilder } from "./stats.js";

const STAGE = 1 << 20; // tokens staged before a spool write

/** The samples of one split as they arrive: tokens to spool files, numbers for the manifest and stats. */
export class SplitWriter {
  readonly stats = new StatsBuilder();
  /** Conversations routed here (`counts.records`). */
  records = 0;
  kept = 0;
  tokens = 0;
  trained = 0;
  truncated = 0;
  lost = 0;
  maxId = -1;
  readonly dropped: (Origin & { reason: string })[] = [];
  readonly prompts: SplitManifest["prompts"] = [];
  readonly templateErrors = new ProblemList();
  tokenMissing = false;
  /** Stats index of each kept sample (its origin is kept there). */
  private readonly keptIdx = new IntList();
  private offsets = new Float64Array(1024);
  private readonly ids: number;
  private readonly labels: number;
  private readonly stageIds = new Int32Array(STAGE);
  private readonly stageLabels = new Int32Array(STAGE);
  private staged = 0;
  private closed = false;

  constructor(
    readonly dir: string,
    readonly split: "train" | "eval",
    private readonly promptLimit: number,
  ) {
    this.ids = openSync(this.spool("input_ids"), "w");
    this.labels = openSync(this.spool("labels"), "w");
  }

  get wantsPrompts(): boolean {
    return this.split === "eval" && this.prompts.length < this.promptLimit;
  }

  add(origin: Origin, f: Facts, o: Outcome, r: BatchResult, at: number): void {
    this.stats.add(
      {
        origin,
        length: f.length,
        tokens: f.tokens,
        trained: f.trained,
        trainedBefore: f.trainedBefore,
        truncated: f.truncated,
        endsWithStop: f.endsWithStop,
        trainedByRole: f.trainedPrompt > 0 ? { user: f.trainedPrompt } : {},
        trainedAsked: f.trainedAsked,
        specialSpelling: f.specialSpelling,
        contentSpecials: f.contentSpecials,
      },
      [f.keyHi, f.keyLo],
    );
    this.lost += f.trainedBefore - f.trained;
    if (o.kept === undefined) {
      if (this.dropped.length < 1000)
        this.dropped.push({
          ...origin,
          reason: f.trainedBefore > 0 ? "nothing trained: answer cut by max_length" : "nothing trained",
        });
      return;
    }
    const n = o.kept;
    this.stage(r.ids.subarray(at, at + n), r.labels.subarray(at, at + n));
    this.keptIdx.push(this.stats.samples - 1);
    if (this.kept + 1 >= this.offsets.length) {
      const next = new Float64Array(this.offsets.length * 2);
      next.set(this.offsets);
      this.offsets = next;
    }
    this.tokens += n;
    this.offsets[++this.kept] = this.tokens;
    this.trained += f.trained;
    if (f.truncated) this.truncated++;
    if ((o.maxId as number) > this.maxId) this.maxId = o.maxId as number;
    if (o.prompt && this.prompts.length < this.promptLimit)
      this.prompts.push({
        index: this.kept - 1,
        origin,
        prompt_ids: o.prompt.promptIds,
        answer_ids: o.prompt.answerIds,
      });
  }

  private stage(ids: Int32Array, labels: Int32Array): void {
    if (this.staged + ids.length > STAGE) this.flush();
    if (ids.length > STAGE) {
      this.put("input_ids", new Uint8Array(ids.buffer, ids.byteOffset, ids.byteLength));
      this.put("labels", new Uint8Array(labels.buffer, labels.byteOffset, labels.byteLength));
      return;
    }
    this.stageIds.set(ids, this.staged);
    this.stageLabels.set(labels, this.staged);
    this.staged += ids.length;
  }

  private flush(): void {
    this.put("input_ids", new Uint8Array(this.stageIds.buffer, 0, this.staged * 4));
    this.put("labels", new Uint8Array(this.stageLabels.buffer, 0, this.staged * 4));
    this.staged = 0;
  }

  private spool(name: "input_ids" | "labels"): string {
    return path.join(this.dir, `.${this.split}.${name}.spool`);
  }

  /** To a spool; a failed write's error names the spool (writeSync's does not). */
  private put(name: "input_ids" | "labels", view: Uint8Array): void {
    try {
      writeAll(name === "input_ids" ? this.ids : this.labels, view);
    } catch (e) {
      (e as NodeJS.ErrnoException).path ??= this.spool(name);
      throw e;
    }
  }

  /** The origin of the i-th kept sample. */
  origin(i: number): Origin {
    return this.stats.origin(this.keptIdx.get(i));
  }

  /** The manifest's `origins`: files in order of first use, then one triple per kept sample. */
  originTriples(): { files: string[]; each: (fn: (t: SplitManifest["origins"]["samples"][number]) => void) => void } {
    const files: string[] = [];
    const idx = new Map<string, number>();
    for (let i = 0; i < this.kept; i++) {
      const o = this.origin(i);
      if (!idx.has(o.file)) idx.set(o.file, files.push(o.file) - 1);
    }
    return {
      files,
      each: (fn) => {
        for (let i = 0; i < this.kept; i++) {
          const o = this.origin(i);
          const f = idx.get(o.file) as number;
          fn(o.sample === undefined ? [f, o.line] : [f, o.line, o.sample]);
        }
      },
    };
  }

  /** tokens.safetensors in `dir` (the spools copied into place, then removed); its sha256. */
  finish(dir: string): string {
    this.flush();
    this.close();
    const offsets = new BigInt64Array(this.kept + 1);
    for (let i = 1; i <= this.kept; i++) offsets[i] = BigInt(this.offsets[i] as number);
    const spool = (name: "input_ids" | "labels") => this.spool(name);
    const { sha256 } = writeSafetensors(
      path.join(dir, "tokens.safetensors"),
      {
        input_ids: { dtype: "I32", shape: [this.tokens], file: spool("input_ids") },
        labels: { dtype: "I32", shape: [this.tokens], file: spool("labels") },
        offsets: { dtype: "I64", shape: [this.kept + 1], data: offsets },
      },
      { format: "lorakit-prepared-v1" },
    );
    rmSync(spool("input_ids"));
    rmSync(spool("labels"));
    return sha256;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeSync(this.ids);
    closeSync(this.labels);
  }

  manifest(hash: string, stats: DataStats): Omit<SplitManifest, "origins"> {
    return {
      version: MANIFEST_VERSION,
      complete: true,
      hash,
      split: this.split,
      counts: {
        records: this.records,
        samples: this.kept,
        tokens: this.tokens,
        trained_tokens: this.trained,
        truncated: this.truncated,
        trained_tokens_lost: this.lost,
        dropped: this.stats.samples - this.kept,
        max_id: this.maxId,
      },
      dropped: this.dropped,
      stats,
      prompts: this.prompts,
    };
  }
}
