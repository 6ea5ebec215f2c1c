// `lorakit data run.yaml`: prepare (or reuse) the run's data and show what will be trained —
// counts, lengths, truncation, trained share — and samples token by token.
import { loadConfig } from "../config/load.js";
import { pickConversations, viewSample } from "../data/prepare.js";
import { loadTokenizer } from "../data/tokenizer.js";
import { LorakitError } from "../errors.js";
import { inspectModel } from "../models/inspect.js";
import { prepareForRun } from "../train/prepare-run.js";
import { parse } from "./args.js";
import { DataProgress } from "./data-progress.js";
import { err, out } from "./io.js";
import type { Command } from "./main.js";
import { printTokens } from "./tokens-view.js";

const usage = "lorakit data <run.yaml> [--sample N]... [--show K] [--json]";

export const command: Command = {
  summary: "prepare a run's data and show samples token by token, with length and trained-token statistics",
  usage,
  async run(argv, io) {
    const { values, positionals } = parse(
      argv,
      { sample: { type: "string", multiple: true }, show: { type: "string" }, json: { type: "boolean" } },
      usage,
    );
    const [configPath] = positionals;
    if (!configPath) {
      err(io, `usage: ${usage}`);
      return 2;
    }
    const loaded = await loadConfig(configPath, io.cwd);
    const model = inspectModel(loaded.modelDir);
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
    const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
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
      printTokens(io, view);
    }
    return 0;
  },
};
