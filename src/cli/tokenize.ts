// `lorakit tokenize --model DIR "text"`: pieces and ids of a text with the model's own tokenizer;
// `--chat FILE`: a conversation rendered with the model's template, every token marked trained or not.
import { readFileSync } from "node:fs";
import path from "node:path";
import { normalizeRecords } from "../data/formats.js";
import { viewSample } from "../data/prepare.js";
import { chooseTemplate } from "../data/template.js";
import { loadTokenizer } from "../data/tokenizer.js";
import { LorakitError, usageError } from "../errors.js";
import { inspectModel } from "../models/inspect.js";
import { parse } from "./args.js";
import { out } from "./io.js";
import type { Command } from "./main.js";
import { printTokens } from "./tokens-view.js";

const usage = 'lorakit tokenize --model DIR ("text" | --chat FILE) [--json] [--special] [--max-length N]';

export const command: Command = {
  summary: "show how the model's tokenizer and chat template see a text or a conversation",
  usage,
  async run(argv, io) {
    const { values, positionals } = parse(
      argv,
      {
        model: { type: "string" },
        chat: { type: "string" },
        json: { type: "boolean" },
        special: { type: "boolean" },
        "max-length": { type: "string" },
      },
      usage,
    );
    if (!values.model) throw usageError("--model is missing", usage);
    if (positionals.length === 0 && !values.chat) throw usageError("give a text or --chat FILE", usage);
    const modelDir = path.resolve(io.cwd, values.model);
    const tokenizer = await loadTokenizer(modelDir);
    if (values.chat) {
      const file = path.resolve(io.cwd, values.chat);
      let value: unknown;
      try {
        value = JSON.parse(readFileSync(file, "utf8"));
      } catch (e) {
        throw new LorakitError("DATA_BAD_JSON", `cannot read ${values.chat}: ${(e as Error).message}`, {
          where: { file },
          hint: 'give a JSON file with one conversation, e.g. {"messages": [{"role": "user", "content": "…"}, …]}',
        });
      }
      const record = Array.isArray(value) ? value[0] : value;
      const { conversations } = normalizeRecords([{ value: record, origin: { file, line: 1 } }]);
      const conv = conversations[0];
      if (!conv) throw new LorakitError("DATA_EMPTY", `${values.chat} holds no conversation`, { where: { file } });
      const model = inspectModel(modelDir);
      const template = chooseTemplate({ template: "auto", tokenizer, modelDir, modelType: model.modelType });
      const view = viewSample(conv, template, tokenizer, { maxLength: Number(values["max-length"] ?? 1e9) });
      if (values.json) {
        out(io, JSON.stringify({ template: template.name, ids: view.ids, pieces: view.pieces, trained: view.trained }));
        return 0;
      }
      out(
        io,
        `template ${template.name}; ${view.ids.length} tokens, ${view.trained.filter(Boolean).length} trained (T)`,
      );
      printTokens(io, view);
      return 0;
    }
    const text = positionals.join(" ");
    const ids = tokenizer.encode(text, { parseSpecial: Boolean(values.special) });
    const pieces = tokenizer.pieces(ids);
    if (values.json) {
      out(io, JSON.stringify({ ids, pieces }));
      return 0;
    }
    out(io, `${ids.length} tokens (${tokenizer.kind}, vocabulary ${tokenizer.vocabSize})`);
    printTokens(io, { ids, pieces });
    return 0;
  },
};
