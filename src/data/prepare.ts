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
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { LorakitError } from "../errors.js";
import { fsyncDir } from "../files/atomic.js";
import { diskFullError, isDiskFull } from "../files/disk.js";
import { SUMS, writeSums } from "../files/sums.js";
import {
  type Conversation,
  type DataFormat,
  FileFormats,
  type NormalizeOptions,
  normalizeRecord,
  normalizeRecords,
} from "./formats.js";
import { IGNORE } from "./mask.js";
import { type BatchSettings, buildSample } from "./prepare-batch.js";
import {
  bytesUnder,
  fileInfo,
  lazyOrigins,
  removeAbandoned,
  result,
  reusable,
  writeManifest,
} from "./prepare-cache.js";
import { type Pass, PROMPTS, runPass } from "./prepare-pass.js";
import { type BatchRunner, defaultWorkerScript, inThread, workerPool } from "./prepare-pool.js";
import {
  MANIFEST_VERSION,
  type Manifest,
  type PrepareOptions,
  type PrepareProgress,
  type PrepareResult,
} from "./prepare-types.js";
import { isBad, type Origin, parseBatch, type RawRecord, readSamples, scanRecords } from "./read.js";
import { type ChatTemplate, chooseTemplate } from "./template.js";
import type { Tokenizer } from "./tokenizer.js";

export { buildSample, splitValue } from "./prepare-batch.js";
export { writeManifest } from "./prepare-cache.js";
export {
  MANIFEST_VERSION,
  type Manifest,
  type PreparedSplit,
  type PrepareOptions,
  type PrepareProgress,
  type PrepareResult,
  type SplitManifest,
} from "./prepare-types.js";

/** Inputs smaller than this are prepared on the main thread: starting workers (each loads the tokenizer)
 * would take longer than the work. */
const WORKERS_FROM = 8 << 20;

const sha256 = (s: string | Buffer) => createHash("sha256").update(s).digest("hex");

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
