// `lorakit data run.yaml`: prepare (or reuse) the run's data and show what will be trained —
// counts, lengths, truncation, trained share — and samples token by token.
import { loadConfig } from "../config/load.js";
import { loadTokenizer, pickConversations, viewSample } from "../data/index.js";
import { LorakitError } from "../errors.js";
import { pct } from "../format.js";
import { readCheckpoint } from "../models/checkpoint.js";
import { prepareForRun } from "../train/prepare-run.js";
import { defineCommand } from "./command.js";
import { DataProgress } from "./data-progress.js";
import { out } from "./io.js";
import { printTokens } from "./tokens-view.js";

export const command = defineCommand({
  name: "data",
  summary: "prepare a run's data and show samples token by token, with length and trained-token statistics",
  args: "<run.yaml>",
  positionals: [1, 1],
  description:
    "Reads the run's data files, renders each sample with the chat template, tokenizes it with the model's " +
    "tokenizer and masks the labels, as training will (the prepared data is kept and reused by `lorakit " +
    "train`). Prints lengths, trained tokens, truncation, stop tokens and duplicates, then samples token by " +
    "token: index, id, piece, and T for the tokens the loss is computed on.",
  options: {
    sample: {
      type: "string",
      multiple: true,
      value: "N",
      description: "show training sample N (0-based, in file order)",
    },
    show: { type: "string", value: "K", description: "show the first K samples (default 1)" },
    pieces: { type: "boolean", description: "also show each token's raw vocabulary piece beside its text" },
    json: {
      type: "boolean",
      description: "print the prepared data's folder, manifest and statistics as one JSON object instead",
    },
  },
  examples: [
    ["lorakit data run.yaml", "statistics and the first sample"],
    ["lorakit data run.yaml --sample 3 --sample 17", "samples 3 and 17, token by token"],
    ["lorakit data run.yaml --json | jq .manifest", "the manifest, for a script"],
  ],
  async run({ values, positionals }, io) {
    const configPath = positionals[0] as string;
    const loaded = await loadConfig(configPath, io.cwd, io.env);
    const model = readCheckpoint(loaded.modelDir);
    const tokenizer = await loadTokenizer(loaded.modelDir);
    const progress = new DataProgress(io);
    const prepared = await prepareForRun(
      loaded,
      model,
      tokenizer,
      values.json
        ? () => {}
        : (l) => {
            progress.end();
            out(io, l);
          },
      values.json ? () => {} : progress.update,
    );
    const { result } = prepared;
    const stats = result.train.stats;
    if (values.json) {
      out(io, JSON.stringify({ dir: result.dir, manifest: result.manifest, eval: result.eval?.stats ?? null }));
      return 0;
    }
    out(
      io,
      `lengths     min ${stats.length.min}, p50 ${stats.length.p50}, p95 ${stats.length.p95}, max ${stats.length.max} tokens (max_length ${loaded.config.data.max_length})`,
    );
    out(
      io,
      `trained     ${stats.trainedTokens} of ${stats.tokens} tokens (${pct(stats.trainedShare)}); in prompt turns: ${stats.trainedInPrompt.tokens}`,
    );
    out(
      io,
      `truncated   ${stats.truncated.samples} samples (${pct(stats.truncated.share)}), ${stats.truncated.trainedTokensLost} trained tokens lost`,
    );
    out(
      io,
      `ends        ${pct(stats.endsWithStop.share)} of the ${stats.endsWithStop.of} samples not cut learn a stop token at the end`,
    );
    out(io, `duplicates  ${stats.duplicates.samples}; train/eval overlap ${stats.overlap.samples}`);
    const wanted = values.sample?.length
      ? values.sample.map(Number)
      : Array.from({ length: Math.max(0, Number(values.show ?? 1)) }, (_, i) => i);
    // Only as far into the data as the last sample shown (the whole file when one lies past its end).
    const { picked, count } = pickConversations(loaded.trainFiles, wanted, {
      format: loaded.config.data.format,
      ...(loaded.config.data.system !== undefined ? { system: loaded.config.data.system } : {}),
      skipBadLines: loaded.config.data.skip_bad_lines,
    });
    const picks = values.sample?.length ? wanted : wanted.filter((i) => i < count);
    for (const i of picks) {
      const conv = picked.get(i);
      if (!conv || !Number.isInteger(i)) {
        throw new LorakitError("CLI_BAD_ARGS", `--sample ${i}: the training data has ${count} samples`, {
          hint: `pick 0..${count - 1}`,
        });
      }
      const view = viewSample(conv, result.template, tokenizer, {
        maxLength: loaded.config.data.max_length,
        maskHistory: loaded.config.data.mask_history,
      });
      out(
        io,
        `\nsample ${i} (${conv.origin.file}:${conv.origin.line}${conv.origin.sample !== undefined ? `, record ${conv.origin.sample}` : ""}): ${view.ids.length} tokens, ${view.trained.filter(Boolean).length} trained${view.truncated ? ", truncated" : ""}`,
      );
      printTokens(io, tokenizer, view, { pieces: Boolean(values.pieces) });
    }
    return 0;
  },
});
