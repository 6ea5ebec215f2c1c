// The data stage of the road: prepare (or reuse) the tokens of a run's train and eval sets and
// pick the held-out prompts sampled before and after training.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import type { LoadedConfig } from "../config/load.js";
import {
  type PrepareProgress,
  type PrepareResult,
  plainPrepareProgress,
  prepareDataset,
  preparedLengths,
  type Tokenizer,
  writeRows,
} from "../data/index.js";
import { type ModelInfo, TOKENIZER_FILES } from "../models/checkpoint.js";

export interface HeldOutItem {
  index: number;
  promptIds: number[];
  /** What a person reads in the report: the prompt's text. */
  display: string;
  /** The held-out answer, when the sample has one: exact match is scored against it. */
  reference: string | null;
}

export interface PreparedRun {
  result: PrepareResult;
  train: { dir: string; samples: number; tokens: number };
  eval: { dir: string; samples: number; tokens: number } | null;
  /** Tokens of each training sample, in order (the rows of train.pack_tokens and the memory estimate). */
  trainLengths: number[] | null;
  /** With train.pack_tokens: the rows file beside the prepared tokens (src/data/pack.ts); else null. */
  rows: string | null;
  heldOut: HeldOutItem[];
  stopIds: number[];
  padId: number;
  /** Written beside the adapter: the template and special tokens used. */
  adapterExtras: Record<string, string>;
  /** Copied beside the adapter, name → path: the base's tokenizer files (see TOKENIZER_FILES). */
  adapterFiles: Record<string, string>;
}

export { TOKENIZER_FILES } from "../models/checkpoint.js";

/** The text of the last user turn of a rendered prompt (what the report shows). */
function promptText(tokenizer: Tokenizer, ids: readonly number[]): string {
  return tokenizer.decode(ids, { skipSpecial: true }).trim();
}

/** `onProgress`: how preparation shows its progress (default: a plain line through `log` every 10 s). */
export async function prepareForRun(
  loaded: LoadedConfig,
  model: ModelInfo,
  tokenizer: Tokenizer,
  log: (line: string) => void,
  onProgress: (p: PrepareProgress) => void = plainPrepareProgress(log),
): Promise<PreparedRun> {
  const d = loaded.config.data;
  const result = await prepareDataset(
    {
      files: loaded.trainFiles,
      evalFiles: loaded.evalFiles,
      format: d.format,
      template: d.template,
      tokenizer,
      modelDir: loaded.modelDir,
      modelType: model.modelType,
      maxLength: d.max_length,
      ...(d.system !== undefined ? { system: d.system } : {}),
      maskHistory: d.mask_history,
      skipBadLines: d.skip_bad_lines,
      split: d.eval_split,
      prompts: loaded.config.samples.count,
      onProgress,
    },
    path.join(path.dirname(loaded.file), "prepared"),
  );
  const m = result.manifest;
  if (result.rebuilt) log(`data        the cached prepared data was not reused (${result.rebuilt}): prepared again`);
  log(
    `data        ${result.train.samples} train / ${result.eval?.samples ?? 0} eval samples, ${result.train.tokens} tokens (${result.train.trainedTokens} trained), template ${result.template.name}${result.reused ? ", reused" : ""} → ${result.dir}`,
  );
  if (m.skipped.length > 0) log(`data        skipped ${m.skipped.length} bad lines (data.skip_bad_lines)`);
  if (m.counts.truncated > 0)
    log(
      `data        ${m.counts.truncated} samples cut to max_length ${d.max_length} (${m.counts.trained_tokens_lost} trained tokens lost)`,
    );
  if (m.counts.dropped > 0) log(`data        ${m.counts.dropped} samples dropped: nothing left to train after cutting`);

  const prompts = result.eval
    ? (JSON.parse(readFileSync(path.join(result.eval.dir, "manifest.json"), "utf8")) as typeof m).prompts
    : [];
  const heldOut: HeldOutItem[] = prompts.slice(0, loaded.config.samples.count).map((p) => ({
    index: p.index,
    promptIds: p.prompt_ids,
    display: promptText(tokenizer, p.prompt_ids),
    reference: p.answer_ids.length > 0 ? tokenizer.decode(p.answer_ids, { skipSpecial: true }) : null,
  }));
  // Prompts from the config: a user message each, rendered with the same template.
  loaded.config.samples.prompts.forEach((text, i) => {
    const ids = result.template.renderPrompt({
      messages: [
        ...(d.system ? [{ role: "system" as const, content: d.system }] : []),
        { role: "user", content: text },
      ],
      origin: { file: loaded.file, line: 0 },
    });
    heldOut.push({ index: 100_000 + i, promptIds: ids, display: text, reference: null });
  });

  const padId = tokenizer.padId ?? tokenizer.eosId ?? 0;
  const extras: Record<string, string> = {
    "lorakit_template.json": `${JSON.stringify(
      {
        template: result.template.name,
        stop_ids: result.template.stopIds,
        special_tokens: result.template.specialTokens,
        tokenizer_hash: tokenizer.hash,
        max_length: d.max_length,
      },
      null,
      2,
    )}\n`,
  };
  if (result.template.name === "jinja") extras["chat_template.jinja"] = result.template.source;
  const trainLengths = preparedLengths(result.train.dir);
  const pack = loaded.config.train.pack_tokens;
  return {
    result,
    train: result.train,
    eval: result.eval,
    trainLengths,
    rows: pack !== undefined ? writeRows(result.train.dir, trainLengths, pack) : null,
    heldOut,
    stopIds: result.template.stopIds,
    padId,
    adapterExtras: extras,
    adapterFiles: Object.fromEntries(
      TOKENIZER_FILES.map((f) => [f, path.join(loaded.modelDir, f)]).filter(([, p]) => existsSync(p as string)),
    ),
  };
}
