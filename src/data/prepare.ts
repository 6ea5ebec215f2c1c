// Prepared data: samples read, normalized, rendered with the chat template, labelled and cut, written as
// `<cacheRoot>/<hash>/tokens.safetensors` (flat `input_ids` and `labels` int32, `offsets` int64 n+1) with
// `manifest.json`; the held-out split sits in `<hash>/eval/` the same way. The hash covers everything that
// changes the tokens (file contents, options, tokenizer, template text), so unchanged inputs reuse the
// directory. Written to a temporary directory and renamed, so a directory that exists is complete.
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
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { LorakitError } from "../errors.js";
import { type Conversation, conversationKey, type DataFormat, normalizeRecords } from "./formats.js";
import { buildLabels, IGNORE, type Labeled } from "./mask.js";
import { errorFromList, type FileInfo, type Origin, type RawRecord, readSamples, type SkippedLine } from "./read.js";
import { flat, writeSafetensors } from "./safetensors.js";
import { computeStats, type DataStats, type SampleFacts } from "./stats.js";
import { type ChatTemplate, chooseTemplate, type Rendered, type TemplateOption } from "./template.js";
import type { Tokenizer } from "./tokenizer.js";

/** Version 2: records keyed by their index in the file (the eval split of one-line JSON arrays changed). */
export const MANIFEST_VERSION = 2;
/** Held-out prompts kept in the eval manifest for before/after samples, unless `prompts` says otherwise. */
const PROMPTS = 16;

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
  manifest: Manifest;
  train: PreparedSplit;
  eval: PreparedSplit | null;
  template: ChatTemplate;
}

const sha256 = (s: string | Buffer) => createHash("sha256").update(s).digest("hex");

function fileInfo(file: string): Omit<FileInfo, "records"> {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (e) {
    throw new LorakitError("DATA_NOT_FOUND", `cannot read the data file: ${(e as Error).message}`, {
      where: { file },
      hint: "Check data.train / data.eval; relative paths resolve against the config file.",
    });
  }
  const text = bytes
    .subarray(0, 64)
    .toString("utf8")
    .replace(/^\uFEFF/, "");
  return {
    path: path.resolve(file),
    sha256: sha256(bytes),
    bytes: bytes.length,
    kind: text.trimStart().startsWith("[") ? "json" : "jsonl",
    bom: bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf,
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

/** Read and normalize the conversations of the given files (throws every problem at once). */
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

/** A record's identity: its file and its index there (lines are shared by the records of a one-line array). */
export function recordKey(o: Origin): string {
  return `${o.file}\u0000${o.sample ?? `line ${o.line}`}`;
}

/** Held out when the hash of the record's JSON text falls below `split`. */
export function splitValue(record: unknown): number {
  return Number.parseInt(sha256(JSON.stringify(record)).slice(0, 8), 16) / 2 ** 32;
}

function pickEval(convs: readonly Conversation[], raw: Map<string, RawRecord>, split: number): boolean[] {
  const h = convs.map((c) => {
    const rec = raw.get(recordKey(c.origin));
    if (!rec) throw new Error(`internal: no record for ${c.origin.file}:${c.origin.line}`);
    return splitValue(rec.value);
  });
  const held = h.map((x) => x < split);
  if (split > 0 && convs.length >= 2 && !held.some(Boolean)) held[h.indexOf(Math.min(...h))] = true;
  if (held.length > 0 && held.every(Boolean)) held[h.indexOf(Math.max(...h))] = false;
  return held;
}

function specialSpellings(tok: Tokenizer): string[] {
  // Spellings that cannot occur in ordinary words (ChatGLM3's `sop`/`eop` would match "isopropyl").
  return [...tok.specialTokens.keys()].filter((s) => s.length >= 3 && /[^A-Za-z0-9]/.test(s));
}

interface Built {
  labeled: Labeled;
  facts: SampleFacts;
  conv: Conversation;
}

/** Render and label one conversation, with the facts the stats need. */
export function buildSample(
  conv: Conversation,
  template: ChatTemplate,
  opts: { maxLength: number; maskHistory?: boolean; spellings?: readonly string[] },
): Built & { rendered: Rendered } {
  const rendered = template.render(conv);
  const labeled = buildLabels(rendered, { maxLength: opts.maxLength, maskHistory: opts.maskHistory ?? false });
  let last = -1;
  const byRole: SampleFacts["trainedByRole"] = {};
  labeled.labels.forEach((l, i) => {
    if (l === IGNORE) return;
    last = l;
    const r = labeled.roles[i] as keyof typeof byRole;
    byRole[r] = (byRole[r] ?? 0) + 1;
  });
  // Trained tokens of non-assistant turns that carry `loss: true`: asked for, not a masking mistake.
  let asked = 0;
  for (const span of rendered.spans) {
    const m = conv.messages[span.message];
    if (!m || m.role === "assistant" || m.loss !== true) continue;
    for (let i = span.start; i < Math.min(span.end, labeled.labels.length); i++)
      if (labeled.labels[i] !== IGNORE && labeled.roles[i] !== "assistant") asked++;
  }
  const stop = new Set(template.stopIds);
  const facts: SampleFacts = {
    origin: conv.origin,
    length: rendered.ids.length,
    tokens: labeled.ids.length,
    trained: labeled.trained,
    trainedBefore: labeled.trainedBefore,
    truncated: labeled.truncated,
    endsWithStop: last >= 0 && stop.has(last),
    trainedByRole: byRole,
    trainedAsked: asked,
    key: sha256(conversationKey(conv)),
    specialSpelling: (opts.spellings ?? []).some((s) => conv.messages.some((m) => m.content.includes(s))),
    contentSpecials: rendered.contentSpecials,
  };
  return { labeled, facts, conv, rendered };
}

/** Render every conversation; template errors of all samples are reported at once. */
function buildAll(
  convs: readonly Conversation[],
  template: ChatTemplate,
  opts: PrepareOptions,
  spellings: string[],
): Built[] {
  const out: Built[] = [];
  const errors: LorakitError[] = [];
  for (const conv of convs) {
    try {
      out.push(
        buildSample(conv, template, { maxLength: opts.maxLength, maskHistory: opts.maskHistory ?? false, spellings }),
      );
    } catch (e) {
      if (!(e instanceof LorakitError)) throw e;
      errors.push(e);
      if (e.code === "TEMPLATE_TOKEN_MISSING") break;
    }
  }
  if (errors.length > 0) throw errorFromList(errors);
  return out;
}

function splitManifest(
  hash: string,
  split: "train" | "eval",
  records: number,
  built: readonly Built[],
  kept: readonly Built[],
  template: ChatTemplate,
  otherKeys: ReadonlySet<string> | undefined,
  limit = PROMPTS,
): SplitManifest {
  const files: string[] = [];
  const fileIdx = new Map<string, number>();
  const samples: SplitManifest["origins"]["samples"] = kept.map((b) => {
    let i = fileIdx.get(b.conv.origin.file);
    if (i === undefined) {
      i = files.push(b.conv.origin.file) - 1;
      fileIdx.set(b.conv.origin.file, i);
    }
    return b.conv.origin.sample === undefined ? [i, b.conv.origin.line] : [i, b.conv.origin.line, b.conv.origin.sample];
  });
  let tokens = 0;
  let trained = 0;
  let maxId = -1;
  for (const b of kept) {
    tokens += b.labeled.ids.length;
    trained += b.labeled.trained;
    for (const id of b.labeled.ids) if (id > maxId) maxId = id;
  }
  const prompts: SplitManifest["prompts"] = [];
  if (split === "eval") {
    kept.forEach((b, index) => {
      const last = b.conv.messages[b.conv.messages.length - 1];
      if (prompts.length >= limit || last?.role !== "assistant") return;
      prompts.push({
        index,
        origin: b.conv.origin,
        prompt_ids: template.renderPrompt(b.conv),
        answer_ids: [],
      });
    });
    // The answer: the trained tokens of the last span.
    for (const p of prompts) {
      const b = kept[p.index] as Built;
      p.answer_ids = b.labeled.labels
        .slice(b.labeled.labels.length - lastSpanLength(b.labeled.labels))
        .filter((l) => l !== IGNORE);
    }
  }
  const stats = computeStats(
    built.map((b) => b.facts),
    otherKeys,
  );
  return {
    version: MANIFEST_VERSION,
    complete: true,
    hash,
    split,
    counts: {
      records,
      samples: kept.length,
      tokens,
      trained_tokens: trained,
      truncated: kept.filter((b) => b.labeled.truncated).length,
      trained_tokens_lost: built.reduce((n, b) => n + b.labeled.trainedBefore - b.labeled.trained, 0),
      dropped: built.length - kept.length,
      max_id: maxId,
    },
    origins: { files, samples },
    dropped: built
      .filter((b) => b.labeled.trained === 0)
      .slice(0, 1000)
      .map((b) => ({
        ...b.conv.origin,
        reason: b.labeled.trainedBefore > 0 ? "nothing trained: answer cut by max_length" : "nothing trained",
      })),
    stats,
    prompts,
  };
}

/** Length of the trailing run that holds the last trained labels (with the untrained tokens after them). */
function lastSpanLength(labels: readonly number[]): number {
  let i = labels.length - 1;
  while (i >= 0 && labels[i] === IGNORE) i--;
  while (i >= 0 && labels[i] !== IGNORE) i--;
  return labels.length - 1 - i;
}

function writeTokens(dir: string, kept: readonly Built[]): void {
  let n = 0;
  for (const b of kept) n += b.labeled.ids.length;
  const ids = new Int32Array(n);
  const labels = new Int32Array(n);
  const offsets = new BigInt64Array(kept.length + 1);
  let at = 0;
  kept.forEach((b, i) => {
    ids.set(b.labeled.ids, at);
    labels.set(b.labeled.labels, at);
    at += b.labeled.ids.length;
    offsets[i + 1] = BigInt(at);
  });
  writeSafetensors(
    path.join(dir, "tokens.safetensors"),
    { input_ids: flat(ids), labels: flat(labels), offsets: flat(offsets) },
    { format: "lorakit-prepared-v1" },
  );
}

function isComplete(dir: string): Manifest | undefined {
  const file = path.join(dir, "manifest.json");
  if (!existsSync(file) || !existsSync(path.join(dir, "tokens.safetensors"))) return undefined;
  try {
    const m = JSON.parse(readFileSync(file, "utf8")) as Manifest;
    if (m.complete !== true || m.version !== MANIFEST_VERSION) return undefined;
    if (m.eval && !existsSync(path.join(dir, "eval", "tokens.safetensors"))) return undefined;
    return m;
  } catch {
    return undefined;
  }
}

function result(dir: string, manifest: Manifest, reused: boolean, template: ChatTemplate): PrepareResult {
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

/** Prepare (or reuse) the tokens of a dataset under `cacheRoot/<hash>/`. */
export async function prepareDataset(opts: PrepareOptions, cacheRoot: string): Promise<PrepareResult> {
  const template = resolveTemplate(opts);
  const files = opts.files.map(fileInfo);
  const evalFiles = (opts.evalFiles ?? []).map(fileInfo);
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
  const existing = isComplete(dir);
  if (existing) return result(dir, existing, true, template);

  // Read, normalize, split.
  const skipBadLines = opts.skipBadLines ?? false;
  const normOpts = {
    format: options.format,
    skipBadLines,
    ...(opts.system !== undefined ? { system: opts.system } : {}),
  };
  const main = loadConversations(opts.files, normOpts);
  let trainConvs = main.conversations;
  let evalConvs: Conversation[] = [];
  let evalRecords = 0;
  const skipped = [...main.read.skipped];
  let bomFiles = main.read.bomFiles;
  const formats: Record<string, string> = { ...main.formats };
  if (opts.evalFiles?.length) {
    const ev = loadConversations(opts.evalFiles, normOpts);
    evalConvs = ev.conversations;
    evalRecords = ev.read.records.length;
    skipped.push(...ev.read.skipped);
    bomFiles += ev.read.bomFiles;
    Object.assign(formats, ev.formats);
  } else if (split > 0) {
    const held = pickEval(trainConvs, main.raw, split);
    evalConvs = trainConvs.filter((_, i) => held[i]);
    trainConvs = trainConvs.filter((_, i) => !held[i]);
    evalRecords = evalConvs.length;
  }

  // Render and label.
  const spellings = specialSpellings(opts.tokenizer);
  const trainBuilt = buildAll(trainConvs, template, opts, spellings);
  const evalBuilt = buildAll(evalConvs, template, opts, spellings);
  const trainKept = trainBuilt.filter((b) => b.labeled.trained > 0);
  const evalKept = evalBuilt.filter((b) => b.labeled.trained > 0);
  if (trainKept.length === 0) {
    const first = trainBuilt[0]?.conv.origin;
    throw new LorakitError(
      "DATA_NOTHING_TRAINED",
      `no training sample has a trained token left (${trainBuilt.length} rendered)`,
      {
        where: first ? { file: first.file, line: first.line } : { file: opts.files[0] ?? "" },
        hint: "Raise data.max_length (answers were cut away) or check the assistant turns and their `loss` flags.",
      },
    );
  }
  const trainKeys = new Set(trainBuilt.map((b) => b.facts.key));
  const evalKeys = new Set(evalBuilt.map((b) => b.facts.key));

  const trainM = splitManifest(
    hash,
    "train",
    trainConvs.length,
    trainBuilt,
    trainKept,
    template,
    evalBuilt.length ? evalKeys : undefined,
  );
  const evalM = evalKept.length
    ? splitManifest(hash, "eval", evalRecords, evalBuilt, evalKept, template, trainKeys, options.prompts)
    : null;
  const manifest: Manifest = {
    ...trainM,
    created: new Date().toISOString(),
    inputs,
    template: {
      name: template.name,
      source: template.source,
      stop_ids: template.stopIds,
      special_tokens: template.specialTokens,
    },
    formats,
    skipped,
    bom_files: bomFiles,
    first_samples: trainKept.slice(0, 5).map((b) => b.conv.origin),
    eval: evalM
      ? {
          dir: "eval",
          samples: evalM.counts.samples,
          tokens: evalM.counts.tokens,
          origins: evalKept.map((b) => b.conv.origin),
        }
      : null,
  };

  // Write to a temporary directory, then rename.
  mkdirSync(cacheRoot, { recursive: true });
  const tmp = path.join(cacheRoot, `.tmp-${hash}-${process.pid}-${randomBytes(4).toString("hex")}`);
  mkdirSync(tmp);
  try {
    writeTokens(tmp, trainKept);
    if (evalM) {
      mkdirSync(path.join(tmp, "eval"));
      writeTokens(path.join(tmp, "eval"), evalKept);
      writeFileSync(path.join(tmp, "eval", "manifest.json"), `${JSON.stringify(evalM, null, 1)}\n`);
    }
    writeFileSync(path.join(tmp, "manifest.json"), `${JSON.stringify(manifest, null, 1)}\n`);
    if (existsSync(dir)) rmSync(dir, { recursive: true, force: true }); // an incomplete leftover
    renameSync(tmp, dir);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    const done = isComplete(dir); // another process finished the same preparation first
    if (done) return result(dir, done, true, template);
    throw e;
  }
  return result(dir, manifest, false, template);
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
