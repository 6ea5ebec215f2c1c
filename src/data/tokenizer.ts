// Tokenizers, one front door: a checkpoint folder's tokenizer.json (Hugging Face fast tokenizers, run by
// @huggingface/tokenizers) or tokenizer.model (SentencePiece BPE, our own, with ChatGLM3's appended special
// tokens). Both are held to the reference libraries' ids on tests/fixtures/tokenizer-corpus.json.
import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { LorakitError } from "../errors.js";
import { HfJsonTokenizer, type TokenizerJson } from "./tokenizer/hf-json.js";
import { SentencePieceModel } from "./tokenizer/sentencepiece.js";
import { type AppendedToken, CHATGLM3_SPECIALS, SentencePieceTokenizer } from "./tokenizer/spm-tokenizer.js";
import type { Tokenizer, TokenNames } from "./tokenizer/types.js";

export type { DecodeOptions, EncodeOptions, Tokenizer, TokenSurface } from "./tokenizer/types.js";
export { CHATGLM3_SPECIALS };

/**
 * Loads the tokenizer of a checkpoint folder: tokenizer.json when present, else tokenizer.model; bos/eos/pad/unk
 * names from tokenizer_config.json when present. `hash` is sha256 over the files read, in that order, each
 * as `<name>\n<byte length>\n<bytes>`.
 */
export async function loadTokenizer(modelDir: string): Promise<Tokenizer> {
  let entries: string[];
  try {
    entries = (await readdir(modelDir)).sort();
  } catch {
    throw new LorakitError("TOKENIZER_NOT_FOUND", `cannot read the folder ${modelDir}`, {
      where: { file: modelDir },
      hint: "point at a checkpoint folder (the one holding config.json and the tokenizer files)",
    });
  }
  const main = ["tokenizer.json", "tokenizer.model"].find((f) => entries.includes(f));
  if (!main) {
    const holds = entries.length > 0 ? `it holds: ${entries.join(", ")}` : "it is empty";
    throw new LorakitError("TOKENIZER_NOT_FOUND", `${modelDir} has no tokenizer.json or tokenizer.model; ${holds}`, {
      where: { file: modelDir },
      hint: "copy the tokenizer files that came with the checkpoint into this folder",
    });
  }
  const hash = createHash("sha256");
  const read = async (name: string): Promise<Buffer> => {
    const bytes = await readFile(path.join(modelDir, name));
    hash.update(`${name}\n${bytes.length}\n`);
    hash.update(bytes);
    return bytes;
  };
  const mainFile = path.join(modelDir, main);
  const mainBytes = await read(main);
  const configFile = path.join(modelDir, "tokenizer_config.json");
  const config = entries.includes("tokenizer_config.json")
    ? (parseJson(await read("tokenizer_config.json"), configFile) as Record<string, unknown>)
    : undefined;
  const digest = hash.digest("hex");
  const names = tokenNames(config);
  if (main === "tokenizer.json") {
    return new HfJsonTokenizer(parseJson(mainBytes, mainFile) as TokenizerJson, digest, names, mainFile);
  }
  const model = SentencePieceModel.fromBytes(new Uint8Array(mainBytes), mainFile);
  // ChatGLM3's tokenizer code pads with <unk>; its tokenizer_config.json names no pad token.
  if (isChatglm(config) && names.pad === undefined) names.pad = model.idToPiece(model.unkId);
  return new SentencePieceTokenizer(model, appendedTokens(config, model.size), digest, names, configFile);
}

function isChatglm(config: Record<string, unknown> | undefined): boolean {
  const autoMap = JSON.stringify((config?.auto_map as unknown) ?? "");
  return config?.tokenizer_class === "ChatGLMTokenizer" || autoMap.includes("ChatGLMTokenizer");
}

function parseJson(bytes: Buffer, file: string): unknown {
  // A leading U+FEFF here is the file's byte-order mark (Windows editors write one), not content.
  const text = bytes.toString("utf8").replace(/^\uFEFF/, "");
  try {
    return JSON.parse(text);
  } catch (err) {
    const message = (err as Error).message;
    const at = /position (\d+)/.exec(message);
    const upTo = at ? text.slice(0, Number(at[1])) : text;
    throw new LorakitError("TOKENIZER_BAD_JSON", `${file} is not valid JSON (${message})`, {
      where: { file, line: upTo.split("\n").length },
      hint: "check that the file is complete (a Git LFS pointer is not the file)",
    });
  }
}

function tokenName(value: unknown): string | null | undefined {
  if (value === null) return null;
  if (typeof value === "string") return value;
  if (value && typeof value === "object" && typeof (value as { content?: unknown }).content === "string") {
    return (value as { content: string }).content;
  }
  return undefined;
}

function tokenNames(config: Record<string, unknown> | undefined): TokenNames {
  if (!config) return {};
  return {
    bos: tokenName(config.bos_token),
    eos: tokenName(config.eos_token),
    pad: tokenName(config.pad_token),
    unk: tokenName(config.unk_token),
  };
}

/** Tokens after the SentencePiece vocabulary: ChatGLM3's nine, and tokenizer_config's added_tokens_decoder. */
function appendedTokens(config: Record<string, unknown> | undefined, spSize: number): AppendedToken[] {
  const out: AppendedToken[] = [];
  if (isChatglm(config)) {
    CHATGLM3_SPECIALS.forEach((content, i) => {
      out.push({ content, id: spSize + i, special: true });
    });
  }
  const decoder = config?.added_tokens_decoder;
  if (decoder && typeof decoder === "object") {
    for (const [key, value] of Object.entries(decoder as Record<string, { content?: unknown; special?: unknown }>)) {
      const id = Number(key);
      if (!Number.isInteger(id) || typeof value?.content !== "string") continue;
      out.push({ content: value.content, id, special: value.special !== false });
    }
  }
  return out;
}
