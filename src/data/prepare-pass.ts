// The streaming pass of a preparation: the files read in batches, each batch run on a worker thread or this
// one, the results taken back in file order into the two splits' writers, every problem named at the end.
import { FileFormats } from "./formats.js";
import { type BatchResult, type BatchSettings, fromData, recordId } from "./prepare-batch.js";
import type { BatchRunner } from "./prepare-pool.js";
import type { PrepareOptions, PrepareProgress } from "./prepare-types.js";
import {
  checkWholeObject,
  emptyFile,
  type FileInfo,
  type Origin,
  ProblemList,
  type SkippedLine,
  scanRecords,
} from "./read.js";
import { SplitWriter } from "./split-writer.js";

/** Held-out prompts kept in the eval manifest for before/after samples, unless `prompts` says otherwise. */
export const PROMPTS = 16;
/** Batches in flight per worker: enough to keep each busy while results are written. */
const WINDOW = 3;

export interface Pass {
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

export async function runPass(input: PassInput): Promise<Pass> {
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
