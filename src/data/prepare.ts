// Prepared data: samples read, normalized, rendered with the chat template, labelled and cut, written as
// `<cacheRoot>/<hash>/tokens.safetensors` (flat `input_ids` and `labels` int32, `offsets` int64 n+1) with
// `manifest.json`; the held-out split sits in `<hash>/eval/` the same way. The hash covers everything that
// changes the tokens (file contents, options, tokenizer, template text), so unchanged inputs reuse the
// directory. Written to a temporary directory, synced and renamed, so a directory that exists was complete;
// each split's SHA256SUMS (src/files/sums.ts, hashed as the files are written) is checked before the directory
// is reused, and one that does not verify (a torn or damaged entry) is prepared again, saying why. Checking
// costs a read of the tokens, ~0.8–1.3 s per GiB (bench/RESULTS.md; the engine checks them again before
// training). A full disk is DISK_FULL with what the tokens need; the temporary directory is removed.
//
// The eval split (when no eval file is given) is chosen per record by the hash of its JSON text: a record
// is held out when that hash falls below `split`. Appending rows never moves an existing record between
// splits, and exact duplicates always land in the same split. At least one sample is held out when the
// share would round to none (the record with the smallest hash). The eval origins go into the manifest.
// Records are identified by file and index in the file (`origin.sample`), never by line: every record of a
// minified one-line JSON array shares line 1.
//
// A sample with no trained token left (its answers cut away by max_length, or every assistant turn
// `loss: false`) is dropped from training; the count and origins are in the manifest and its stats.
//
// At scale: one streaming pass. The files are read in batches of raw records (read.ts), each batch is
// parsed, normalized, rendered and labelled on a worker thread (prepare-batch.ts, prepare-pool.ts) or on
// this one, and the results are taken back in file order: token ids go to spool files beside the output,
// the stats keep a few numbers per sample (stats.ts). At most `WINDOW` batches per worker are in flight, so
// memory does not grow with the file; only per-sample numbers do (tens of bytes each). When the held-out
// share would hold out none (or all) of the records, the pass runs again with that one record's split fixed.
import { createHash, randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import os from "node:os";
import path from "node:path";
import { LorakitError } from "../errors.js";
import { fsyncDir, HashedFile } from "../files/atomic.js";
import { diskFullError, isDiskFull } from "../files/disk.js";
import { checkSums, SUMS, writeSums } from "../files/sums.js";
import {
  type Conversation,
  type DataFormat,
  FileFormats,
  type NormalizeOptions,
  normalizeRecord,
  normalizeRecords,
} from "./formats.js";
import { IGNORE } from "./mask.js";
import {
  type BatchResult,
  type BatchSettings,
  buildSample,
  type Facts,
  fromData,
  type Outcome,
  recordId,
} from "./prepare-batch.js";
import { type BatchRunner, defaultWorkerScript, inThread, workerPool } from "./prepare-pool.js";
import {
  checkWholeObject,
  emptyFile,
  type FileInfo,
  isBad,
  type Origin,
  ProblemList,
  parseBatch,
  type RawRecord,
  readSamples,
  type SkippedLine,
  scanRecords,
} from "./read.js";
import { writeAll, writeSafetensors } from "./safetensors.js";
import { type DataStats, IntList, StatsBuilder } from "./stats.js";
import { type ChatTemplate, chooseTemplate, type TemplateOption } from "./template.js";
import type { Tokenizer } from "./tokenizer.js";

export { buildSample, splitValue } from "./prepare-batch.js";

/** Version 3: SHA256SUMS beside each split's files (version 2: records keyed by their index in the file). */
export const MANIFEST_VERSION = 3;
/** Held-out prompts kept in the eval manifest for before/after samples, unless `prompts` says otherwise. */
const PROMPTS = 16;
/** Batches in flight per worker: enough to keep each busy while results are written. */
const WINDOW = 3;
/** Inputs smaller than this are prepared on the main thread: starting workers (each loads the tokenizer)
 * would take longer than the work. */
const WORKERS_FROM = 8 << 20;

export interface PrepareProgress {
  /** `hash`: reading the files for their content hash; `prepare`: the pass; `write`: the output files. */
  phase: "hash" | "prepare" | "write";
  /** Bytes of the input files done, of `totalBytes`. */
  bytes: number;
  totalBytes: number;
  /** Records taken in so far. */
  records: number;
  elapsedS: number;
  /** Records read and not yet taken back (bounded by the pipeline's window). */
  inFlight: number;
  /** Worker threads (0: all on the main thread). */
  workers: number;
}

export interface PrepareOptions {
  files: string[];
  /** Held-out files; when given, `split` is not used. */
  evalFiles?: string[];
  format?: DataFormat;
  /** A template option (resolved against the checkpoint) or a template already built. */
  template?: TemplateOption | ChatTemplate;
  tokenizer: Tokenizer;
  modelDir: string;
  modelType?: string;
  maxLength: number;
  system?: string;
  maskHistory?: boolean;
  skipBadLines?: boolean;
  /** Share of the training records held out (0 = none). */
  split?: number;
  /** How many held-out prompts (with their answers) the eval manifest keeps for generation (default 16). */
  prompts?: number;
  /** Worker threads (default: one per core the process may use, when there are two or more and the input
   * files hold 8 MiB or more; 0: none). */
  workers?: number;
  /** The compiled worker script (default: prepare-worker.js beside this module; without it, no workers). */
  workerScript?: URL | string;
  /** Records per batch (default 512). */
  batchRecords?: number;
  /** Called now and then while hashing and preparing (at most every 200 ms, and once at the end). */
  onProgress?: (p: PrepareProgress) => void;
}

export interface SplitManifest {
  version: number;
  complete: true;
  hash: string;
  split: "train" | "eval";
  counts: {
    records: number;
    samples: number;
    tokens: number;
    trained_tokens: number;
    truncated: number;
    trained_tokens_lost: number;
    dropped: number;
    max_id: number;
  };
  /** Origins of the samples written, in order: [file index, line, record index in the file]. */
  origins: { files: string[]; samples: [file: number, line: number, sample?: number][] };
  /** Dropped samples (the first 1000; `counts.dropped` has them all). */
  dropped: (Origin & { reason: string })[];
  stats: DataStats;
  /** Prompts (conversation without its last answer) for generation, with the answer's ids. */
  prompts: { index: number; origin: Origin; prompt_ids: number[]; answer_ids: number[] }[];
}

export interface Manifest extends SplitManifest {
  created: string;
  inputs: {
    files: Omit<FileInfo, "records">[];
    eval_files: Omit<FileInfo, "records">[];
    options: Record<string, unknown>;
    tokenizer: { kind: string; hash: string; vocab_size: number };
    template: { name: string; sha256: string };
  };
  template: { name: string; source: string; stop_ids: number[]; special_tokens: Record<string, number> };
  formats: Record<string, string>;
  skipped: SkippedLine[];
  bom_files: number;
  first_samples: Origin[];
  /** The eval split (`eval/` beside), or null. */
  eval: { dir: "eval"; samples: number; tokens: number; origins: Origin[] } | null;
}

export interface PreparedSplit {
  dir: string;
  samples: number;
  tokens: number;
  trainedTokens: number;
  stats: DataStats;
}

export interface PrepareResult {
  hash: string;
  dir: string;
  reused: boolean;
  /** Why an entry already in the cache was not reused but prepared again (damaged, torn); null when not. */
  rebuilt: string | null;
  manifest: Manifest;
  train: PreparedSplit;
  eval: PreparedSplit | null;
  template: ChatTemplate;
}

const sha256 = (s: string | Buffer) => createHash("sha256").update(s).digest("hex");

/** A data file's identity for the content hash, read in pieces (the file is never held whole). */
function fileInfo(file: string, progress?: (bytes: number) => void): Omit<FileInfo, "records"> {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (e) {
    throw new LorakitError("DATA_NOT_FOUND", `cannot read the data file: ${(e as Error).message}`, {
      where: { file },
      hint: "Check data.train / data.eval; relative paths resolve against the config file.",
    });
  }
  const hash = createHash("sha256");
  const buf = Buffer.allocUnsafe(8 << 20);
  let head: Buffer | undefined;
  let bytes = 0;
  try {
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      if (!head) head = Buffer.from(buf.subarray(0, Math.min(n, 64)));
      else if (head.length < 64) head = Buffer.concat([head, buf.subarray(0, Math.min(n, 64 - head.length))]);
      hash.update(buf.subarray(0, n));
      bytes += n;
      progress?.(n);
    }
  } finally {
    closeSync(fd);
  }
  head ??= Buffer.alloc(0);
  const text = head.toString("utf8").replace(/^\uFEFF/, "");
  return {
    path: path.resolve(file),
    sha256: hash.digest("hex"),
    bytes,
    kind: text.trimStart().startsWith("[") ? "json" : "jsonl",
    bom: head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf,
  };
}

export function resolveTemplate(opts: PrepareOptions): ChatTemplate {
  if (opts.template !== undefined && typeof opts.template !== "string") return opts.template;
  return chooseTemplate({
    template: opts.template ?? "auto",
    tokenizer: opts.tokenizer,
    modelDir: opts.modelDir,
    ...(opts.modelType !== undefined ? { modelType: opts.modelType } : {}),
  });
}

/** Read and normalize the conversations of the given files (throws every problem at once). Small files only:
 * everything is held in memory (`pickConversations` streams). */
export function loadConversations(
  files: readonly string[],
  opts: { format?: DataFormat; system?: string; skipBadLines?: boolean },
) {
  const read = readSamples(files, { skipBadLines: opts.skipBadLines ?? false });
  const norm = normalizeRecords(read.records, {
    format: opts.format ?? "auto",
    ...(opts.system !== undefined ? { system: opts.system } : {}),
  });
  // Keep each conversation's raw record (for the split hash), by file and index in the file.
  const byOrigin = new Map<string, RawRecord>();
  for (const r of read.records) byOrigin.set(recordKey(r.origin), r);
  return { read, conversations: norm.conversations, formats: norm.formats, raw: byOrigin };
}

/**
 * The conversations at the given positions (0-based, among the files' conversations in order), reading
 * only as far as the last one; `count` is how many conversations were read (all of them when a position
 * lies past the end). Records that are not JSON or not a sample are passed over, as preparing with
 * `skip_bad_lines` would; preparing names them.
 */
export function pickConversations(
  files: readonly string[],
  positions: readonly number[],
  opts: NormalizeOptions & { skipBadLines?: boolean },
): { picked: Map<number, Conversation>; count: number } {
  const want = new Set(positions.filter((p) => Number.isInteger(p) && p >= 0));
  const last = Math.max(-1, ...want);
  const picked = new Map<number, Conversation>();
  const formats = new FileFormats(opts.format ?? "auto");
  let count = 0;
  const scan = scanRecords(files, { batchRecords: 64, readBytes: 1 << 20 });
  try {
    for (const ev of scan) {
      if (ev.type !== "batch") continue;
      for (const rec of parseBatch(ev, files[ev.fileIndex] as string)) {
        if (isBad(rec)) continue;
        const n = normalizeRecord(rec, opts);
        if (!n.conversation || (n.format && formats.check(rec.origin, n.format))) continue;
        if (want.has(count)) picked.set(count, n.conversation);
        count++;
        if (want.size > 0 && picked.size === want.size && count > last) return { picked, count };
      }
    }
  } finally {
    scan.return(undefined);
  }
  return { picked, count };
}

/** A record's identity: its file and its index there (lines are shared by the records of a one-line array). */
export function recordKey(o: Origin): string {
  return `${o.file}\u0000${o.sample ?? `line ${o.line}`}`;
}

function specialSpellings(tok: Tokenizer): string[] {
  // Spellings that cannot occur in ordinary words (ChatGLM3's `sop`/`eop` would match "isopropyl").
  return [...tok.specialTokens.keys()].filter((s) => s.length >= 3 && /[^A-Za-z0-9]/.test(s));
}

// ---------------------------------------------------------------- one split, written as it comes

const STAGE = 1 << 20; // tokens staged before a spool write

/** The samples of one split as they arrive: tokens to spool files, numbers for the manifest and stats. */
class SplitWriter {
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

// ---------------------------------------------------------------- the pass

interface Pass {
  train: SplitWriter;
  eval: SplitWriter;
  formats: Record<string, string>;
  skipped: SkippedLine[];
  bomFiles: number;
  /** Training conversations, and which one has the smallest / largest split hash (first of equals). */
  conversations: number;
  min: { h: number; id: string };
  max: { h: number; id: string };
}

interface PassInput {
  opts: PrepareOptions;
  settings: BatchSettings;
  runner: BatchRunner;
  dir: string;
  progress: (p: Omit<PrepareProgress, "elapsedS" | "totalBytes" | "workers">, force?: boolean) => void;
}

async function runPass(input: PassInput): Promise<Pass> {
  const pass: Pass = {
    train: new SplitWriter(input.dir, "train", PROMPTS),
    eval: new SplitWriter(input.dir, "eval", input.opts.prompts ?? PROMPTS),
    formats: {},
    skipped: [],
    bomFiles: 0,
    conversations: 0,
    min: { h: Number.POSITIVE_INFINITY, id: "" },
    max: { h: Number.NEGATIVE_INFINITY, id: "" },
  };
  try {
    return await fillPass(pass, input);
  } catch (e) {
    // A removed spool whose descriptor is still open keeps its space until the process ends.
    pass.train.close();
    pass.eval.close();
    throw e;
  }
}

async function fillPass(pass: Pass, { opts, settings, runner, progress }: PassInput): Promise<Pass> {
  const { files, evalFrom } = settings;
  const fileFormats = new FileFormats(settings.format);
  const phases = {
    trainRead: new ProblemList(),
    trainNorm: new ProblemList(),
    evalRead: new ProblemList(),
    evalNorm: new ProblemList(),
  };
  const skip = opts.skipBadLines ?? false;
  let bad = 0;
  let records = 0;
  let bytesBefore = 0; // bytes of the files already finished
  let bytesDone = 0;
  let inFlight = 0;
  const queue: { batch?: Promise<BatchResult>; count?: number; end?: FileInfo; fileIndex: number; offset: number }[] =
    [];

  const take = (fileIndex: number, r: BatchResult) => {
    const file = files[fileIndex] as string;
    const isEval = fileIndex >= evalFrom;
    const read = isEval ? phases.evalRead : phases.trainRead;
    const norm = isEval ? phases.evalNorm : phases.trainNorm;
    let at = 0;
    for (const o of r.outcomes) {
      const origin: Origin = { file, line: o.line, sample: o.sample };
      records++;
      if (o.bad) {
        bad++;
        if (skip) pass.skipped.push({ ...origin, reason: o.bad.reason });
        else read.push(fromData(o.bad.error));
        continue;
      }
      if (o.format) {
        const mixed = fileFormats.check(origin, o.format);
        if (mixed) {
          norm.push(mixed);
          at += o.kept ?? 0;
          continue;
        }
      }
      for (const e of o.errors ?? []) norm.push(fromData(e));
      if (o.held === undefined) continue;
      if (!isEval && settings.split > 0) {
        const h = o.splitHash as number;
        const id = recordId(fileIndex, o.sample);
        if (h < pass.min.h) pass.min = { h, id };
        if (h > pass.max.h) pass.max = { h, id };
      }
      if (!isEval) pass.conversations++;
      const w = o.held ? pass.eval : pass.train;
      w.records++;
      if (o.templateError) {
        if (!w.tokenMissing) w.templateErrors.push(fromData(o.templateError));
        if (o.templateError.code === "TEMPLATE_TOKEN_MISSING") w.tokenMissing = true;
        continue;
      }
      if (!o.facts) continue;
      if (!w.tokenMissing) w.add(origin, o.facts, o, r, at);
      at += o.kept ?? 0;
    }
  };
  const fileEnd = (info: FileInfo, fileIndex: number) => {
    const file = files[fileIndex] as string;
    const read = fileIndex >= evalFrom ? phases.evalRead : phases.trainRead;
    if (info.kind === "jsonl" && bad > 0) checkWholeObject(file, info.bytes);
    if (info.records === 0) read.push(emptyFile(file));
    if (info.bom) pass.bomFiles++;
    bad = 0;
    bytesBefore += info.bytes;
    if (fileIndex === evalFrom - 1) {
      // Every training record is in: their problems are named before the held-out files are read.
      const e = phases.trainRead.error() ?? phases.trainNorm.error();
      if (e) throw e;
    }
  };
  /** Takes the oldest item of the queue back (waiting for its batch). */
  const next = async () => {
    const item = queue.shift();
    if (!item) return;
    if (item.batch) {
      take(item.fileIndex, await item.batch);
      inFlight -= item.count ?? 0;
    }
    if (item.end) fileEnd(item.end, item.fileIndex);
    bytesDone = Math.max(bytesDone, item.end ? bytesBefore : bytesBefore + item.offset);
    progress({ phase: "prepare", bytes: bytesDone, records, inFlight });
  };
  const window = WINDOW * Math.max(1, runner.workers);
  try {
    for (const ev of scanRecords(files, { batchRecords: opts.batchRecords ?? 512 })) {
      if (ev.type === "end") {
        queue.push({ end: ev.info, fileIndex: ev.fileIndex, offset: ev.info.bytes });
        // At the last training file, everything before it must be taken back (its problems come first).
        if (ev.fileIndex === evalFrom - 1) while (queue.length > 0) await next();
        continue;
      }
      const wantPrompts = ev.fileIndex >= evalFrom || settings.split > 0 ? pass.eval.wantsPrompts : false;
      queue.push({ batch: runner.run(ev, wantPrompts), count: ev.count, fileIndex: ev.fileIndex, offset: ev.offset });
      inFlight += ev.count;
      while (queue.filter((q) => q.batch).length >= window) await next();
    }
    while (queue.length > 0) await next();
  } catch (e) {
    // Batches still running must not be left unawaited (their rejections would go unhandled).
    await Promise.allSettled(queue.map((q) => q.batch));
    throw e;
  }
  progress({ phase: "prepare", bytes: bytesDone, records, inFlight: 0 }, true);
  const e =
    phases.trainRead.error() ??
    phases.trainNorm.error() ??
    phases.evalRead.error() ??
    phases.evalNorm.error() ??
    pass.train.templateErrors.error() ??
    pass.eval.templateErrors.error();
  if (e) throw e;
  pass.formats = fileFormats.formats;
  return pass;
}

// ---------------------------------------------------------------- writing

/**
 * `JSON.stringify(m, null, 1)` with `origins` placed after `counts` as JSON.stringify would, its samples
 * written one at a time (a million samples are tens of megabytes of text, never held as one string).
 */
export function writeManifest(
  file: string,
  m: object,
  origins: { files: string[]; each: (fn: (t: SplitManifest["origins"]["samples"][number]) => void) => void },
): string {
  const marker = `__samples_${randomBytes(8).toString("hex")}__`;
  const placed: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(m)) {
    placed[k] = v;
    if (k === "counts") placed.origins = { files: origins.files, samples: marker };
  }
  const text = JSON.stringify(placed, null, 1);
  const at = text.indexOf(`"${marker}"`);
  if (at < 0) throw new Error("internal: no origins in the manifest");
  const indent = /^ */.exec(text.slice(text.lastIndexOf("\n", at) + 1))?.[0] ?? "";
  const out = new HashedFile(file);
  try {
    const put = (s: string) => out.write(Buffer.from(s, "utf8"));
    put(text.slice(0, at));
    let first = true;
    let chunk = "";
    origins.each((t) => {
      chunk += `${first ? "[\n" : ",\n"}${indent} [\n${t.map((x) => `${indent}  ${x}`).join(",\n")}\n${indent} ]`;
      first = false;
      if (chunk.length > 1 << 20) {
        put(chunk);
        chunk = "";
      }
    });
    put(`${chunk}${first ? "[]" : `\n${indent}]`}${text.slice(at + marker.length + 2)}\n`);
    return out.finish().sha256;
  } finally {
    out.close();
  }
}

/** What a split's SHA256SUMS must vouch for (the engine checks the same: engine/lorakit_engine/data.py). */
const SPLIT_FILES = ["tokens.safetensors", "manifest.json"];

/**
 * The manifest of a cache entry whose files all match their SHA256SUMS; or why it is not to be reused (a
 * sentence naming the file); or undefined when there is no entry.
 */
function reusable(dir: string): Manifest | string | undefined {
  if (!existsSync(dir)) return undefined;
  const problems = checkSums(dir, SPLIT_FILES);
  if (problems.length > 0) return problems[0];
  let m: Manifest;
  try {
    m = JSON.parse(readFileSync(path.join(dir, "manifest.json"), "utf8")) as Manifest;
  } catch (e) {
    return `${path.join(dir, "manifest.json")} is not JSON (${(e as Error).message})`;
  }
  if (m.complete !== true || m.version !== MANIFEST_VERSION)
    return `${path.join(dir, "manifest.json")} is not a complete version ${MANIFEST_VERSION} manifest`;
  if (m.eval) {
    const evalProblems = checkSums(path.join(dir, "eval"), SPLIT_FILES);
    if (evalProblems.length > 0) return evalProblems[0];
  }
  return m;
}

function result(
  dir: string,
  manifest: Manifest,
  reused: boolean,
  template: ChatTemplate,
  rebuilt: string | null = null,
): PrepareResult {
  let evalSplit: PreparedSplit | null = null;
  if (manifest.eval) {
    const em = JSON.parse(readFileSync(path.join(dir, "eval", "manifest.json"), "utf8")) as SplitManifest;
    evalSplit = {
      dir: path.join(dir, "eval"),
      samples: em.counts.samples,
      tokens: em.counts.tokens,
      trainedTokens: em.counts.trained_tokens,
      stats: em.stats,
    };
  }
  return {
    hash: manifest.hash,
    dir,
    reused,
    rebuilt,
    manifest,
    template,
    train: {
      dir,
      samples: manifest.counts.samples,
      tokens: manifest.counts.tokens,
      trainedTokens: manifest.counts.trained_tokens,
      stats: manifest.stats,
    },
    eval: evalSplit,
  };
}

/**
 * The manifest with `origins` (after `counts`, where manifest.json has it) read from manifest.json when first
 * asked for: a million samples' origins are not kept in memory unless someone looks.
 */
function lazyOrigins(manifest: Omit<Manifest, "origins">, file: string): Manifest {
  let origins: Manifest["origins"] | undefined;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(manifest)) {
    out[k] = v;
    if (k !== "counts") continue;
    Object.defineProperty(out, "origins", {
      enumerable: true,
      get() {
        origins ??= (JSON.parse(readFileSync(file, "utf8")) as Manifest).origins;
        return origins;
      },
    });
  }
  return out as unknown as Manifest;
}

// ---------------------------------------------------------------- prepare

/**
 * Temporary directories of preparations whose process is gone (killed: they never reached their rename).
 * Their token spools can be gigabytes; a directory whose process still runs is left alone.
 */
/** Bytes of the files under `dir` (what a preparation had written when it stopped). */
function bytesUnder(dir: string): number {
  let n = 0;
  try {
    for (const d of readdirSync(dir, { withFileTypes: true, recursive: true })) {
      if (d.isFile()) n += statSync(path.join(d.parentPath ?? d.path, d.name)).size;
    }
  } catch {
    // gone already
  }
  return n;
}

function removeAbandoned(cacheRoot: string): void {
  for (const name of readdirSync(cacheRoot)) {
    const pid = /^\.tmp-[0-9a-f]+-(\d+)-[0-9a-f]+$/.exec(name)?.[1];
    if (pid === undefined || Number(pid) === process.pid) continue;
    try {
      process.kill(Number(pid), 0);
      continue; // alive (or another user's): not ours to remove
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ESRCH") continue;
    }
    rmSync(path.join(cacheRoot, name), { recursive: true, force: true });
  }
}

/** Prepare (or reuse) the tokens of a dataset under `cacheRoot/<hash>/`. */
export async function prepareDataset(opts: PrepareOptions, cacheRoot: string): Promise<PrepareResult> {
  const t0 = performance.now();
  const template = resolveTemplate(opts);
  const allFiles = [...opts.files, ...(opts.evalFiles ?? [])];
  let workers = 0;
  let totalBytes = 0;
  for (const f of allFiles) {
    try {
      totalBytes += statSync(f).size;
    } catch {
      // fileInfo names the missing file
    }
  }
  let last = 0;
  const report = (p: Omit<PrepareProgress, "elapsedS" | "totalBytes" | "workers">, force = false) => {
    if (!opts.onProgress) return;
    const now = performance.now();
    if (!force && now - last < 200) return;
    last = now;
    opts.onProgress({ ...p, totalBytes, workers, elapsedS: (now - t0) / 1000 });
  };
  let hashed = 0;
  const hashProgress = (n: number) => {
    hashed += n;
    report({ phase: "hash", bytes: hashed, records: 0, inFlight: 0 });
  };
  const files = opts.files.map((f) => fileInfo(f, hashProgress));
  const evalFiles = (opts.evalFiles ?? []).map((f) => fileInfo(f, hashProgress));
  const split = opts.evalFiles?.length ? 0 : (opts.split ?? 0);
  const options = {
    format: opts.format ?? "auto",
    max_length: opts.maxLength,
    system: opts.system ?? null,
    mask_history: opts.maskHistory ?? false,
    skip_bad_lines: opts.skipBadLines ?? false,
    eval_split: split,
    prompts: opts.prompts ?? PROMPTS,
  };
  const inputs: Manifest["inputs"] = {
    files,
    eval_files: evalFiles,
    options,
    tokenizer: { kind: opts.tokenizer.kind, hash: opts.tokenizer.hash, vocab_size: opts.tokenizer.vocabSize },
    template: { name: template.name, sha256: sha256(template.source) },
  };
  const hash = sha256(JSON.stringify({ v: MANIFEST_VERSION, ...inputs })).slice(0, 16);
  const dir = path.join(cacheRoot, hash);
  const existing = reusable(dir);
  if (typeof existing === "object") return result(dir, existing, true, template);
  const rebuilt = typeof existing === "string" ? existing : null;

  const settings: BatchSettings = {
    files: allFiles,
    evalFrom: opts.files.length,
    format: options.format,
    ...(opts.system !== undefined ? { system: opts.system } : {}),
    maxLength: opts.maxLength,
    maskHistory: opts.maskHistory ?? false,
    spellings: specialSpellings(opts.tokenizer),
    split,
    forced: {},
  };
  mkdirSync(cacheRoot, { recursive: true });
  removeAbandoned(cacheRoot);
  const tmp = path.join(cacheRoot, `.tmp-${hash}-${process.pid}-${randomBytes(4).toString("hex")}`);
  let runner: BatchRunner | undefined;
  let pass: Pass | undefined;
  let writing: string | undefined; // the output file being written, once the pass is done
  try {
    const cores = os.availableParallelism();
    const wanted = opts.workers ?? (cores >= 2 && totalBytes >= WORKERS_FROM ? cores : 0);
    if (wanted > 0 && typeof opts.template !== "object") {
      runner = await workerPool(wanted, opts.workerScript ?? defaultWorkerScript(), {
        settings,
        modelDir: opts.modelDir,
        ...(opts.modelType !== undefined ? { modelType: opts.modelType } : {}),
        template: opts.template ?? "auto",
        tokenizerHash: opts.tokenizer.hash,
        templateSource: template.source,
      });
    }
    runner ??= inThread(settings, template);
    workers = runner.workers;

    for (let attempt = 0; ; attempt++) {
      rmSync(tmp, { recursive: true, force: true });
      mkdirSync(tmp);
      pass = await runPass({ opts, settings, runner, dir: tmp, progress: report });
      // The held-out share must hold out one record at least, and not all (the smallest / largest hash).
      const held = pass.eval.records;
      const n = pass.conversations;
      let forced: Record<string, boolean> | undefined;
      if (split > 0 && n >= 2 && held === 0) forced = { [pass.min.id]: true };
      else if (split > 0 && n > 0 && held === n) forced = { [pass.max.id]: false };
      if (!forced || attempt > 0) break;
      pass.train.close();
      pass.eval.close();
      await runner.close();
      settings.forced = forced;
      runner = inThread(settings, template);
      if (opts.workers !== 0 && typeof opts.template !== "object") {
        runner =
          (await workerPool(workers, opts.workerScript ?? defaultWorkerScript(), {
            settings,
            modelDir: opts.modelDir,
            ...(opts.modelType !== undefined ? { modelType: opts.modelType } : {}),
            template: opts.template ?? "auto",
            tokenizerHash: opts.tokenizer.hash,
            templateSource: template.source,
          })) ?? runner;
      }
    }
    const { train, eval: ev } = pass;
    if (train.kept === 0) {
      const first = train.stats.samples > 0 ? train.stats.origin(0) : undefined;
      throw new LorakitError(
        "DATA_NOTHING_TRAINED",
        `no training sample has a trained token left (${train.stats.samples} rendered)`,
        {
          where: first ? { file: first.file, line: first.line } : { file: opts.files[0] ?? "" },
          hint: "Raise data.max_length (answers were cut away) or check the assistant turns and their `loss` flags.",
        },
      );
    }
    report({ phase: "write", bytes: totalBytes, records: 0, inFlight: 0 }, true);
    const hasEval = ev.kept > 0;
    const trainStats = train.stats.finish(ev.stats.samples > 0 ? ev.stats : undefined);
    const trainM = train.manifest(hash, trainStats);
    const evalM = hasEval ? ev.manifest(hash, ev.stats.finish(train.stats)) : null;
    const evalOrigins: Origin[] = [];
    for (let i = 0; i < ev.kept; i++) evalOrigins.push(ev.origin(i));
    const firstSamples: Origin[] = [];
    for (let i = 0; i < Math.min(5, train.kept); i++) firstSamples.push(train.origin(i));
    const manifest: Omit<Manifest, "origins"> = {
      ...trainM,
      created: new Date().toISOString(),
      inputs,
      template: {
        name: template.name,
        source: template.source,
        stop_ids: template.stopIds,
        special_tokens: template.specialTokens,
      },
      formats: pass.formats,
      skipped: pass.skipped,
      bom_files: pass.bomFiles,
      first_samples: firstSamples,
      eval: evalM
        ? { dir: "eval", samples: evalM.counts.samples, tokens: evalM.counts.tokens, origins: evalOrigins }
        : null,
    };

    // Everything into the temporary directory, each split's SHA256SUMS last, synced, then renamed.
    const sums = (splitDir: string, tokens: string, manifestFile: string) => {
      writing = path.join(splitDir, SUMS);
      writeSums(
        splitDir,
        new Map([
          ["tokens.safetensors", tokens],
          ["manifest.json", manifestFile],
        ]),
      );
    };
    writing = path.join(tmp, "tokens.safetensors"); // (a spool, when the tokens staged last do not fit)
    const trainTokens = train.finish(tmp);
    if (evalM) {
      const evalDir = path.join(tmp, "eval");
      mkdirSync(evalDir);
      writing = path.join(evalDir, "tokens.safetensors");
      const evalTokens = ev.finish(evalDir);
      writing = path.join(evalDir, "manifest.json");
      sums(evalDir, evalTokens, writeManifest(writing, evalM, ev.originTriples()));
    } else {
      ev.close();
      rmSync(path.join(tmp, ".eval.input_ids.spool"), { force: true });
      rmSync(path.join(tmp, ".eval.labels.spool"), { force: true });
    }
    writing = path.join(tmp, "manifest.json");
    sums(tmp, trainTokens, writeManifest(writing, manifest, train.originTriples()));
    if (existsSync(dir)) rmSync(dir, { recursive: true, force: true }); // a damaged or torn leftover
    try {
      renameSync(tmp, dir);
      fsyncDir(cacheRoot);
    } catch (e) {
      const done = reusable(dir); // another process finished the same preparation first
      if (typeof done === "object") return result(dir, done, true, template);
      throw e;
    }
    return result(dir, lazyOrigins(manifest, path.join(dir, "manifest.json")), false, template, rebuilt);
  } catch (e) {
    pass?.train.close();
    pass?.eval.close();
    if (!isDiskFull(e)) throw e;
    // The need: the tokens twice (spooled, then copied into tokens.safetensors); during the pass, at least
    // twice what was spooled so far.
    const spooled = bytesUnder(tmp);
    const tokens = writing && pass ? 8 * (pass.train.tokens + pass.eval.tokens) : undefined;
    const file = (e as NodeJS.ErrnoException).path ?? writing;
    rmSync(tmp, { recursive: true, force: true });
    throw diskFullError({
      what: "the prepared data",
      dir: cacheRoot,
      ...(file ? { writing: file } : {}),
      need: 2 * (tokens ?? spooled),
      basis:
        tokens !== undefined
          ? "the tokens twice: spooled, then copied into tokens.safetensors"
          : "at least twice the tokens spooled so far: they are copied into tokens.safetensors, and records were still to come",
      kept: `the cache's other entries are untouched and nothing was written to ${dir}.`,
      hint: `Free space on that disk (prepared data goes to ${cacheRoot}, beside the config), then run the same command again.`,
    });
  } finally {
    await runner?.close();
    rmSync(tmp, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- views for `lorakit data`

export interface SampleView {
  origin: Origin;
  ids: number[];
  pieces: string[];
  trained: boolean[];
  labels: number[];
  roles: string[];
  truncated: boolean;
  /** Rendered text of the whole sample (specials spelled out). */
  text: string;
}

/** Token-level view of one conversation as it will be trained. */
export function viewSample(
  conv: Conversation,
  template: ChatTemplate,
  tokenizer: Tokenizer,
  opts: { maxLength: number; maskHistory?: boolean },
): SampleView {
  const { labeled } = buildSample(conv, template, opts);
  return {
    origin: conv.origin,
    ids: labeled.ids,
    pieces: tokenizer.pieces(labeled.ids),
    trained: labeled.labels.map((l) => l !== IGNORE),
    labels: labeled.labels,
    roles: labeled.roles,
    truncated: labeled.truncated,
    text: tokenizer.decode(labeled.ids, { skipSpecial: false }),
  };
}
