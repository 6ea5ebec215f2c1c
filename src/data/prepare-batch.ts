// One batch of raw records through the data stage: parse, normalize, choose the split, render with the
// chat template, label and cut, and the facts the stats need. The same function runs on the main thread
// and in the preparation workers (prepare-worker.ts); what it returns is plain data (structured-clone
// safe, token ids in transferable typed arrays), put back in file order by prepare.ts.
import { createHash } from "node:crypto";
import { LorakitError, type Where } from "../errors.js";
import { type Conversation, conversationKey, type DataFormat, type FormatName, normalizeRecord } from "./formats.js";
import { buildLabels, IGNORE, type Labeled } from "./mask.js";
import { isBad, parseBatch, type RecordBatch } from "./read.js";
import type { SampleFacts } from "./stats.js";
import type { ChatTemplate, Rendered } from "./template.js";

const sha256 = (text: string) => createHash("sha256").update(text).digest("hex");

/** Held out when the hash of the record's JSON text falls below `split`. */
export function splitValue(record: unknown): number {
  return Number.parseInt(sha256(JSON.stringify(record)).slice(0, 8), 16) / 2 ** 32;
}

export interface Built {
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
  const { labels, roles } = labeled;
  for (let i = 0; i < labels.length; i++) {
    const l = labels[i] as number;
    if (l === IGNORE) continue;
    last = l;
    const r = roles[i] as keyof typeof byRole;
    byRole[r] = (byRole[r] ?? 0) + 1;
  }
  // Trained tokens of non-assistant turns that carry `loss: true`: asked for, not a masking mistake.
  let asked = 0;
  for (const span of rendered.spans) {
    const m = conv.messages[span.message];
    if (!m || m.role === "assistant" || m.loss !== true) continue;
    for (let i = span.start; i < Math.min(span.end, labeled.labels.length); i++)
      if (labeled.labels[i] !== IGNORE && labeled.roles[i] !== "assistant") asked++;
  }
  const facts: SampleFacts = {
    origin: conv.origin,
    length: rendered.ids.length,
    tokens: labeled.ids.length,
    trained: labeled.trained,
    trainedBefore: labeled.trainedBefore,
    truncated: labeled.truncated,
    endsWithStop: last >= 0 && template.stopIds.includes(last),
    trainedByRole: byRole,
    trainedAsked: asked,
    key: sha256(conversationKey(conv)),
    specialSpelling: (opts.spellings ?? []).some((s) => conv.messages.some((m) => m.content.includes(s))),
    contentSpecials: rendered.contentSpecials,
  };
  return { labeled, facts, conv, rendered };
}

/** Length of the trailing run that holds the last trained labels (with the untrained tokens after them). */
export function lastSpanLength(labels: readonly number[]): number {
  let i = labels.length - 1;
  while (i >= 0 && labels[i] === IGNORE) i--;
  while (i >= 0 && labels[i] !== IGNORE) i--;
  return labels.length - 1 - i;
}

/** A LorakitError as plain data (errors cross threads as data, and are rebuilt on the other side). */
export interface ErrorData {
  code: string;
  message: string;
  where?: Where;
  hint: string;
}

export const errorData = (e: LorakitError): ErrorData => ({
  code: e.code,
  message: e.message,
  ...(e.where ? { where: e.where } : {}),
  hint: e.hint,
});

export const fromData = (d: ErrorData): LorakitError =>
  new LorakitError(d.code, d.message, { ...(d.where ? { where: d.where } : {}), hint: d.hint });

/** Everything a batch needs besides the template: plain data, sent to each worker once. */
export interface BatchSettings {
  /** All files: the training files, then the held-out files from `evalFrom` on. */
  files: string[];
  evalFrom: number;
  format: DataFormat;
  system?: string;
  maxLength: number;
  maskHistory: boolean;
  spellings: string[];
  /** Share of training records held out by the hash of their JSON text (0 = none). */
  split: number;
  /** Records whose split is fixed (`recordId`): the one held out when the share would hold none out. */
  forced: Record<string, boolean>;
}

/** The numbers the stats keep of a rendered sample (SampleFacts without objects). */
export interface Facts {
  length: number;
  tokens: number;
  trained: number;
  trainedBefore: number;
  truncated: boolean;
  endsWithStop: boolean;
  /** Trained tokens in turns that are not the assistant's. */
  trainedPrompt: number;
  trainedAsked: number;
  /** The conversation key's sha256 (SampleFacts.key), first 8 bytes, as two int32. */
  keyHi: number;
  keyLo: number;
  specialSpelling: boolean;
  contentSpecials: number;
}

/** What became of one record. */
export interface Outcome {
  line: number;
  sample: number;
  /** Not JSON: the reason and the located error. */
  bad?: { reason: string; error: ErrorData };
  /** The record's format (for the one-format-per-file check, made in file order). */
  format?: FormatName;
  /** Problems normalizing it. */
  errors?: ErrorData[];
  /** A conversation: held out (eval) or not, and the split hash when a share is held out. */
  held?: boolean;
  splitHash?: number;
  /** The chat template failed on it. */
  templateError?: ErrorData;
  facts?: Facts;
  /** Tokens of the sample in the batch's `ids`/`labels` (kept samples: something is trained), its largest id. */
  kept?: number;
  maxId?: number;
  /** Held-out samples ending with an answer: the prompt to generate from and the answer's ids. */
  prompt?: { promptIds: number[]; answerIds: number[] };
}

export interface BatchResult {
  fileIndex: number;
  outcomes: Outcome[];
  /** Ids and labels of the kept samples, in order. */
  ids: Int32Array;
  labels: Int32Array;
}

/** A record's identity across files: the file's index among all files, and its index in the file. */
export const recordId = (fileIndex: number, sample: number): string => `${fileIndex}:${sample}`;

/** Runs one batch. `wantPrompts`: compute held-out prompts (only the first few are ever kept). */
export function processBatch(
  batch: RecordBatch,
  s: BatchSettings,
  template: ChatTemplate,
  wantPrompts: boolean,
): BatchResult {
  const file = s.files[batch.fileIndex] as string;
  const isEvalFile = batch.fileIndex >= s.evalFrom;
  const normOpts = { format: s.format, ...(s.system !== undefined ? { system: s.system } : {}) };
  const outcomes: Outcome[] = [];
  let ids = new Int32Array(1 << 16);
  let labels = new Int32Array(1 << 16);
  let at = 0;
  for (const rec of parseBatch(batch, file)) {
    const o: Outcome = { line: rec.origin.line, sample: rec.origin.sample as number };
    outcomes.push(o);
    if (isBad(rec)) {
      o.bad = { reason: rec.reason, error: errorData(rec.error) };
      continue;
    }
    const n = normalizeRecord(rec, normOpts);
    if (n.format) o.format = n.format;
    if (n.errors.length > 0) o.errors = n.errors.map(errorData);
    const conv = n.conversation;
    if (!conv) continue;
    if (isEvalFile) o.held = true;
    else {
      const forced = s.forced[recordId(batch.fileIndex, o.sample)];
      if (s.split > 0) o.splitHash = splitValue(rec.value);
      o.held = forced ?? (s.split > 0 && (o.splitHash as number) < s.split);
    }
    let built: ReturnType<typeof buildSample>;
    try {
      built = buildSample(conv, template, {
        maxLength: s.maxLength,
        maskHistory: s.maskHistory,
        spellings: s.spellings,
      });
    } catch (e) {
      if (!(e instanceof LorakitError)) throw e;
      o.templateError = errorData(e);
      continue;
    }
    const { labeled, facts } = built;
    let prompt = 0;
    for (const [role, k] of Object.entries(facts.trainedByRole)) if (role !== "assistant") prompt += k ?? 0;
    o.facts = {
      length: facts.length,
      tokens: facts.tokens,
      trained: facts.trained,
      trainedBefore: facts.trainedBefore,
      truncated: facts.truncated,
      endsWithStop: facts.endsWithStop,
      trainedPrompt: prompt,
      trainedAsked: facts.trainedAsked ?? 0,
      keyHi: Number.parseInt(facts.key.slice(0, 8), 16) | 0,
      keyLo: Number.parseInt(facts.key.slice(8, 16), 16) | 0,
      specialSpelling: facts.specialSpelling,
      contentSpecials: facts.contentSpecials,
    };
    if (labeled.trained === 0) continue;
    const k = labeled.ids.length;
    if (at + k > ids.length) {
      const size = Math.max(ids.length * 2, at + k);
      const [i2, l2] = [new Int32Array(size), new Int32Array(size)];
      i2.set(ids.subarray(0, at));
      l2.set(labels.subarray(0, at));
      [ids, labels] = [i2, l2];
    }
    let max = -1;
    for (let i = 0; i < k; i++) {
      const id = labeled.ids[i] as number;
      ids[at + i] = id;
      if (id > max) max = id;
    }
    labels.set(labeled.labels, at);
    at += k;
    o.kept = k;
    o.maxId = max;
    const last = conv.messages[conv.messages.length - 1];
    if (o.held && wantPrompts && last?.role === "assistant") {
      const answer = labeled.labels.slice(labeled.labels.length - lastSpanLength(labeled.labels));
      o.prompt = { promptIds: template.renderPrompt(conv), answerIds: answer.filter((l) => l !== IGNORE) };
    }
  }
  return { fileIndex: batch.fileIndex, outcomes, ids: ids.slice(0, at), labels: labels.slice(0, at) };
}
