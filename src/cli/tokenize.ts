// `lorakit tokenize --model DIR "text"`: ids and the decoded text of each token with the model's own tokenizer
// (`--pieces`: the raw vocabulary pieces too; `--json` has both);
// `--chat FILE`: a conversation rendered with the model's template, every token marked trained or not. A
// conversation that ends with a user (or tool-result) turn is shown as the inference prompt, generation
// prompt included. FILE holds one conversation in any data format, a bare OpenAI message array, or a data
// file (JSON array or JSONL) whose record `--sample N` is shown.
import { readFileSync } from "node:fs";
import {
  type Conversation,
  chooseTemplate,
  loadTokenizer,
  normalizeRecords,
  type RawRecord,
  readSamples,
  viewSample,
} from "../data/index.js";
import { LorakitError } from "../errors.js";
import { readCheckpoint } from "../models/checkpoint.js";
import { badArgs, defineCommand } from "./command.js";
import { out, userPath } from "./io.js";
import { printTokens, tokenTexts } from "./tokens-view.js";

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
/** A turn of a bare OpenAI message array (not a record of some data format). */
const isTurn = (v: unknown) =>
  isObject(v) && typeof v.role === "string" && !("messages" in v || "conversations" in v || "instruction" in v);

/** The records of a --chat file: one conversation object, a bare message array (one record), or a data file. */
function chatRecords(file: string): RawRecord[] {
  let value: unknown;
  let parsed = true;
  try {
    value = JSON.parse(readFileSync(file, "utf8").replace(/^\uFEFF/, ""));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT")
      throw new LorakitError("DATA_NOT_FOUND", `cannot read the conversation file: ${(e as Error).message}`, {
        where: { file },
        hint: "Give the path of a JSON file with one conversation.",
      });
    parsed = false; // JSON Lines, or malformed: the data reader says which, located
  }
  if (parsed && Array.isArray(value) && value.length > 0 && value.every(isTurn))
    return [{ value: { messages: value }, origin: { file, line: 1, sample: 0 } }];
  if (parsed && isObject(value)) return [{ value, origin: { file, line: 1, sample: 0 } }];
  return readSamples([file]).records;
}

/** The conversation to show: record `sample` of the file, normalized (a conversation without an answer is fine). */
function chatConversation(file: string, shown: string, sample: number): { conv: Conversation; of: number } {
  const records = chatRecords(file);
  const rec = records[sample];
  if (!rec)
    throw new LorakitError("CLI_BAD_ARGS", `--sample ${sample}: ${shown} holds ${records.length} conversation(s)`, {
      where: { file },
      hint: `Pick --sample 0..${records.length - 1}.`,
    });
  const { conversations } = normalizeRecords([rec], { prompt: true });
  const conv = conversations[0];
  if (!conv) throw new LorakitError("DATA_EMPTY", `${shown} holds no conversation`, { where: { file } });
  return { conv, of: records.length };
}

export const command = defineCommand({
  name: "tokenize",
  summary: "show how the model's tokenizer and chat template see a text or a conversation",
  args: '["text"]',
  positionals: [0, Number.POSITIVE_INFINITY],
  description:
    "With a text: its tokens (index, id, piece) with the model's own tokenizer. With --chat: a conversation " +
    "rendered with the model's chat template, every token marked T when training computes the loss on it; a " +
    "conversation that ends with a user turn is shown as the inference prompt, generation prompt included.",
  options: {
    model: { type: "string", value: "DIR", required: true, description: "the model's checkpoint folder" },
    chat: {
      type: "string",
      value: "FILE",
      description:
        "a JSON file with one conversation in any data format, a bare message array, or a data file (JSON or JSONL)",
    },
    sample: { type: "string", value: "N", description: "with --chat and a data file: show record N (default 0)" },
    json: {
      type: "boolean",
      description: "print ids, raw pieces and each token's decoded text (and trained flags) as one JSON object",
    },
    pieces: { type: "boolean", description: "also show each token's raw vocabulary piece beside its text" },
    special: {
      type: "boolean",
      description: "read special tokens written in the text (<|user|>) as those tokens, as a template does",
    },
    "max-length": {
      type: "string",
      value: "N",
      description: "with --chat: cut the conversation at N tokens, as data.max_length does",
    },
  },
  examples: [
    ['lorakit tokenize --model ~/models/chatglm3-6b "你好，世界"', "the tokens of a text"],
    ["lorakit tokenize --model ~/models/chatglm3-6b --chat chat.json", "a conversation, trained tokens marked T"],
    ["lorakit tokenize --model ~/models/chatglm3-6b --chat train.jsonl --sample 5", "record 5 of a data file"],
  ],
  async run({ values, positionals }, io) {
    if (positionals.length === 0 && !values.chat) {
      throw badArgs("give a text to tokenize, or --chat FILE", {
        hint: 'e.g. lorakit tokenize --model DIR "hello"',
      });
    }
    const sample = Number(values.sample ?? 0);
    if (!Number.isInteger(sample) || sample < 0)
      throw badArgs(`--sample ${values.sample}: not a record index`, { hint: "Give --sample a whole number from 0." });
    const modelDir = userPath(io, values.model as string);
    const tokenizer = await loadTokenizer(modelDir);
    const show = { pieces: Boolean(values.pieces) };
    // --json: the raw vocabulary pieces and the decoded text of each token side by side.
    const texts = (ids: readonly number[]) => tokenTexts(tokenizer, ids).texts;
    if (values.chat) {
      const file = userPath(io, values.chat);
      const { conv, of } = chatConversation(file, values.chat, sample);
      const model = readCheckpoint(modelDir);
      const template = chooseTemplate({ template: "auto", tokenizer, modelDir, modelType: model.modelType });
      const which = of > 1 ? `record ${sample} of ${of}; ` : "";
      if (conv.messages[conv.messages.length - 1]?.role !== "assistant") {
        // What the model is given at inference: the conversation so far and the generation prompt.
        const ids = template.renderPrompt(conv);
        const pieces = tokenizer.pieces(ids);
        const trained = ids.map(() => false);
        if (values.json) {
          out(io, JSON.stringify({ template: template.name, prompt: true, ids, pieces, texts: texts(ids), trained }));
          return 0;
        }
        out(
          io,
          `template ${template.name}; ${which}inference prompt: ${ids.length} tokens, ending with the generation prompt (nothing trained)`,
        );
        printTokens(io, tokenizer, { ids }, show);
        return 0;
      }
      const view = viewSample(conv, template, tokenizer, { maxLength: Number(values["max-length"] ?? 1e9) });
      if (values.json) {
        out(
          io,
          JSON.stringify({
            template: template.name,
            prompt: false,
            ids: view.ids,
            pieces: view.pieces,
            texts: texts(view.ids),
            trained: view.trained,
          }),
        );
        return 0;
      }
      out(
        io,
        `template ${template.name}; ${which}${view.ids.length} tokens, ${view.trained.filter(Boolean).length} trained (T)`,
      );
      printTokens(io, tokenizer, view, show);
      return 0;
    }
    const text = positionals.join(" ");
    const ids = tokenizer.encode(text, { parseSpecial: Boolean(values.special) });
    const pieces = tokenizer.pieces(ids);
    if (values.json) {
      out(io, JSON.stringify({ ids, pieces, texts: texts(ids) }));
      return 0;
    }
    out(io, `${ids.length} tokens (${tokenizer.kind}, vocabulary ${tokenizer.vocabSize})`);
    printTokens(io, tokenizer, { ids }, show);
    return 0;
  },
});
