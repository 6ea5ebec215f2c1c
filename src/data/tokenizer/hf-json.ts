// A Hugging Face `tokenizer.json` (BPE byte-level like Qwen/SmolLM/Llama-3, or Metaspace/byte-fallback like
// Llama-2), run by @huggingface/tokenizers, which matches the Rust `tokenizers` library on our golden corpus.
// The library always splits text on every added token; to keep special-token spellings ordinary text
// (the Rust library's `encode_special_tokens`), a second instance is built without the special ones.
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { LorakitError } from "../../errors.js";
import { checkIds, resolveNamedId } from "./special-ids.js";
import type { DecodeOptions, EncodeOptions, Tokenizer, TokenNames, TokenSurface } from "./types.js";
import { strictUtf8, utf8Encoder } from "./utf8.js";

export interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
  [key: string]: unknown;
}

export interface TokenizerJson {
  added_tokens?: AddedTokenJson[];
  model: { type?: string; vocab?: unknown; unk_token?: string | null; [key: string]: unknown };
  [key: string]: unknown;
}

export class HfJsonTokenizer implements Tokenizer {
  readonly kind = "tokenizer.json" as const;
  readonly vocabSize: number;
  readonly specialTokens: ReadonlyMap<string, number>;
  readonly bosId?: number;
  readonly eosId?: number;
  readonly padId?: number;
  readonly unkId?: number;
  private readonly full: HfTokenizer;
  private plainTokenizer: HfTokenizer | undefined;
  private readonly json: TokenizerJson;
  private readonly addedById = new Map<number, string>();
  private readonly pieceBytes: (piece: string) => Uint8Array;

  constructor(
    json: TokenizerJson,
    readonly hash: string,
    names: TokenNames,
    private readonly file: string,
  ) {
    if (!json || typeof json !== "object" || !json.model || typeof json.model !== "object") {
      throw new LorakitError("TOKENIZER_BAD_JSON", `${file} has no "model" section`, {
        where: { file, key: "model" },
        hint: "check that the file is a Hugging Face tokenizer.json (a Git LFS pointer is not)",
      });
    }
    checkIdsOfJson(json, file);
    // Optional sections default to null, as the Rust library reads them.
    this.json = json = { normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, ...json };
    json.added_tokens ??= [];
    try {
      // Only the tokenizer.json decides how text is tokenized; tokenizer_config.json flags the library
      // would honour (remove_space, lowercasing, extra specials) are transformers' slow-tokenizer habits.
      this.full = new HfTokenizer(json, {});
      patchDecoder(this.full.decoder);
    } catch (err) {
      throw new LorakitError("TOKENIZER_UNSUPPORTED", `${file}: ${(err as Error).message}`, {
        where: { file, key: failingSection(json, (j) => new HfTokenizer(j, {})) },
        hint: "this tokenizer.json uses a component @huggingface/tokenizers cannot run",
      });
    }
    const special = new Map<string, number>();
    let max = -1;
    for (const t of json.added_tokens) {
      if (t.special) special.set(t.content, t.id);
      this.addedById.set(t.id, t.content);
      max = Math.max(max, t.id);
    }
    const vocab = json.model.vocab;
    if (Array.isArray(vocab)) max = Math.max(max, vocab.length - 1);
    else if (vocab && typeof vocab === "object") {
      for (const id of Object.values(vocab as Record<string, number>)) if (id > max) max = id;
    }
    this.vocabSize = max + 1;
    this.specialTokens = special;
    const modelUnk = typeof json.model.unk_token === "string" ? json.model.unk_token : undefined;
    const id = (key: keyof TokenNames, fallback?: string) =>
      resolveNamedId(names[key] === undefined ? fallback : names[key], (t) => this.tokenToId(t));
    this.bosId = id("bos");
    this.eosId = id("eos");
    this.padId = id("pad");
    this.unkId = id("unk", modelUnk);
    this.pieceBytes = pieceDecoder(json.decoder);
    // The decoder runs first when samples are shown, after training: a broken one is refused now.
    const probe = [0, 1, 2, 3].filter((i) => this.idToToken(i) !== undefined);
    if (probe.length > 0) this.decode(probe);
  }

  /** The instance that treats special-token spellings as ordinary text (built on first use; encode only). */
  private get plain(): HfTokenizer {
    if (!this.plainTokenizer) {
      const added = this.json.added_tokens ?? [];
      this.plainTokenizer =
        this.specialTokens.size === 0
          ? this.full
          : new HfTokenizer({ ...this.json, added_tokens: added.filter((t) => !t.special) }, {});
    }
    return this.plainTokenizer;
  }

  /** Runs the library, whose components check some settings only when used: what it throws is refused, with
   * the section that fails (found by retrying `retry` without each one). */
  private library<T>(what: string, run: () => T, retry: (json: TokenizerJson) => void): T {
    try {
      return run();
    } catch (err) {
      if (err instanceof LorakitError) throw err;
      throw new LorakitError("TOKENIZER_UNSUPPORTED", `${this.file}: cannot ${what} (${(err as Error).message})`, {
        where: { file: this.file, key: failingSection(this.json, retry) },
        hint: "this tokenizer.json uses a component or a setting @huggingface/tokenizers cannot run",
      });
    }
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    if (text.length === 0) return [];
    const ids = this.library(
      `encode ${JSON.stringify(text.slice(0, 40))}`,
      () => (opts.parseSpecial ? this.full : this.plain).encode(text, { add_special_tokens: false }).ids,
      (json) => new HfTokenizer(json, {}).encode(text, { add_special_tokens: false }),
    );
    // The library maps a token its vocabulary lacks (an unk_token that is not in it) to undefined.
    for (const id of ids)
      if (!isId(id))
        throw new LorakitError(
          "TOKENIZER_BAD_JSON",
          `${this.file} has no id for a token of ${JSON.stringify(text.slice(0, 40))} (its unk_token is not in the vocabulary?)`,
          {
            where: { file: this.file, key: "model.vocab" },
            hint: "check that the file is complete and unedited, or re-export it with the tokenizers library",
          },
        );
    return ids;
  }

  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    checkIds(ids, (id) => this.idToToken(id) !== undefined);
    if (ids.length === 0) return "";
    const options = { skip_special_tokens: opts.skipSpecial ?? false, clean_up_tokenization_spaces: false };
    return this.library(
      "decode",
      () => this.full.decode([...ids], options),
      (json) => {
        const t = new HfTokenizer(json, {});
        patchDecoder(t.decoder);
        t.decode([...ids], options);
      },
    );
  }

  pieces(ids: readonly number[]): string[] {
    checkIds(ids, (id) => this.idToToken(id) !== undefined);
    return ids.map((id) => this.idToToken(id) as string);
  }

  tokenSurface(id: number): TokenSurface {
    checkIds([id], (i) => this.idToToken(i) !== undefined);
    const added = this.addedById.get(id);
    return added !== undefined ? { name: added } : { bytes: this.pieceBytes(this.idToToken(id) as string) };
  }

  tokenToId(token: string): number | undefined {
    return this.full.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.full.id_to_token(id);
  }
}

/** GPT-2's byte-level alphabet reversed: the character standing for each byte (printable Latin-1 bytes stand for
 * themselves, the others for U+0100 onwards in byte order) back to the byte. */
const BYTE_OF_CHAR: ReadonlyMap<string, number> = (() => {
  const map = new Map<string, number>();
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    map.set(String.fromCodePoint(printable ? b : next++), b);
  }
  return map;
})();

/** A vocabulary piece to the bytes it stands for, as the tokenizer.json's decoder turns it into text: ByteLevel
 * maps each character back to its byte; otherwise Replace/Metaspace undo the word-start symbol and ByteFallback
 * reads <0xNN> pieces as one byte. Decoders that only join or trim the whole text (Fuse, Strip) are left out. */
function pieceDecoder(decoder: unknown): (piece: string) => Uint8Array {
  const steps: Record<string, unknown>[] = [];
  const walk = (d: unknown) => {
    if (!d || typeof d !== "object") return;
    const o = d as Record<string, unknown>;
    if (Array.isArray(o.decoders)) for (const inner of o.decoders) walk(inner);
    else steps.push(o);
  };
  walk(decoder);
  if (steps.some((s) => s.type === "ByteLevel")) {
    return (piece) => Uint8Array.from([...piece].flatMap((c) => BYTE_OF_CHAR.get(c) ?? [...utf8Encoder.encode(c)]));
  }
  const byteFallback = steps.some((s) => s.type === "ByteFallback");
  const replace: [string, string][] = [];
  for (const s of steps) {
    const pattern = (s.pattern as { String?: unknown } | undefined)?.String;
    if (s.type === "Replace" && typeof pattern === "string" && typeof s.content === "string")
      replace.push([pattern, s.content]);
    if (s.type === "Metaspace") replace.push([typeof s.replacement === "string" ? s.replacement : "\u2581", " "]);
  }
  return (piece) => {
    if (byteFallback && /^<0x[0-9A-Fa-f]{2}>$/.test(piece))
      return Uint8Array.of(Number.parseInt(piece.slice(3, 5), 16));
    let text = piece;
    for (const [from, to] of replace) text = text.replaceAll(from, to);
    return utf8Encoder.encode(text);
  };
}

/** Prepared data holds ids as int32: every id a tokenizer can produce must be an integer in [0, 2^31). */
const isId = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) < 2 ** 31;

/** The vocabulary's and the added tokens' ids, which the library takes on trust (a null id encodes as undefined). */
function checkIdsOfJson(json: TokenizerJson, file: string): void {
  const bad = (key: string, what: string) =>
    new LorakitError("TOKENIZER_BAD_JSON", `${file}: ${what}`, {
      where: { file, key },
      hint: "check that the file is complete and unedited, or re-export it with the tokenizers library",
    });
  const added: unknown = json.added_tokens;
  if (added !== undefined && added !== null) {
    if (!Array.isArray(added)) throw bad("added_tokens", "`added_tokens` is not a list");
    added.forEach((t: unknown, i) => {
      const token = t as Partial<AddedTokenJson> | null;
      if (!token || typeof token !== "object") throw bad(`added_tokens[${i}]`, `added token ${i} is not an object`);
      if (typeof token.content !== "string" || token.content.length === 0)
        throw bad(`added_tokens[${i}].content`, `added token ${i} has no text (\`content\`)`);
      if (!isId(token.id))
        throw bad(
          `added_tokens[${i}].id`,
          `added token ${JSON.stringify(token.content)} has the id ${JSON.stringify(token.id)}`,
        );
    });
  }
  // Every component names its kind by a string `type`; the library would print any other value as "[object Object]".
  const stack: [unknown, string][] = ["model", "normalizer", "pre_tokenizer", "post_processor", "decoder"].map((k) => [
    json[k],
    k,
  ]);
  for (let item = stack.pop(); item; item = stack.pop()) {
    const [v, key] = item;
    if (Array.isArray(v)) for (const [i, x] of v.entries()) stack.push([x, `${key}[${i}]`]);
    else if (v && typeof v === "object") {
      const type = (v as { type?: unknown }).type;
      if (type !== undefined && typeof type !== "string")
        throw bad(`${key}.type`, `\`${key}.type\` is ${JSON.stringify(type)}, not the name of a component`);
      for (const [k, x] of Object.entries(v)) if (k !== "vocab" && k !== "merges") stack.push([x, `${key}.${k}`]);
    }
  }
  const vocab = json.model.vocab;
  if (Array.isArray(vocab)) {
    // Unigram: [piece, score] pairs, the id is the position.
    vocab.forEach((entry: unknown, i) => {
      if (!Array.isArray(entry) || typeof entry[0] !== "string" || typeof entry[1] !== "number")
        throw bad(`model.vocab[${i}]`, `vocabulary entry ${i} is not a [piece, score] pair`);
    });
  } else if (!vocab || typeof vocab !== "object") {
    throw bad(
      "model.vocab",
      `\`model.vocab\` is ${(JSON.stringify(vocab) ?? "missing").slice(0, 40)}, not a vocabulary`,
    );
  } else {
    for (const [token, id] of Object.entries(vocab))
      if (!isId(id))
        throw bad(
          `model.vocab[${JSON.stringify(token)}]`,
          `vocabulary token ${JSON.stringify(token)} has the id ${JSON.stringify(id)}`,
        );
  }
}

/** The section that makes `run` fail: the first whose removal lets it succeed, else the model. */
function failingSection(json: TokenizerJson, run: (json: TokenizerJson) => void): string {
  for (const key of ["normalizer", "pre_tokenizer", "post_processor", "decoder", "added_tokens"]) {
    if (json[key] === null || json[key] === undefined) continue;
    try {
      run({ ...json, [key]: key === "added_tokens" ? [] : null });
      return key;
    } catch {}
  }
  return "model";
}

/** Rust's ByteFallback decoder: a run of <0xNN> tokens that is not valid UTF-8 becomes one U+FFFD per byte
 * (the library substitutes per malformed subsequence instead). */
function byteFallbackChain(tokens: string[]): string[] {
  const out: string[] = [];
  let run: number[] = [];
  const flush = () => {
    if (run.length === 0) return;
    try {
      out.push(strictUtf8.decode(Uint8Array.from(run)));
    } catch {
      for (let i = 0; i < run.length; i++) out.push("\uFFFD");
    }
    run = [];
  };
  for (const token of tokens) {
    const byte = /^<0x[0-9A-Fa-f]{2}>$/.test(token) ? Number.parseInt(token.slice(3, 5), 16) : -1;
    if (byte >= 0) run.push(byte);
    else {
      flush();
      out.push(token);
    }
  }
  flush();
  return out;
}

/** The library's decoder objects, as far as we touch them (its Decoder class and `decode_chain`). */
interface DecoderLike {
  config?: { type?: string };
  decode_chain: (tokens: string[]) => string[];
  decoders?: unknown;
}

function patchDecoder(decoder: unknown): void {
  if (!decoder || (typeof decoder !== "object" && typeof decoder !== "function")) return;
  const d = decoder as DecoderLike;
  if (d.config?.type === "ByteFallback") d.decode_chain = byteFallbackChain;
  if (Array.isArray(d.decoders)) for (const inner of d.decoders) patchDecoder(inner);
}
