// The one shape every tokenizer has (tokenizer.json or SentencePiece); `src/data/tokenizer.ts` re-exports it.

export interface EncodeOptions {
  /** Text spelling a special token becomes that token's id. Default false: it stays ordinary pieces. */
  parseSpecial?: boolean;
}

export interface DecodeOptions {
  /** Leave special tokens out of the text. Default false. */
  skipSpecial?: boolean;
}

export interface Tokenizer {
  readonly kind: "tokenizer.json" | "sentencepiece";
  /** All ids, added and special tokens included (max id + 1). */
  readonly vocabSize: number;
  /** sha256 hex over the tokenizer files read (see `loadTokenizer`). */
  readonly hash: string;
  /** Never adds BOS/EOS. */
  encode(text: string, opts?: EncodeOptions): number[];
  decode(ids: readonly number[], opts?: DecodeOptions): string;
  /** The token strings, for display. */
  pieces(ids: readonly number[]): string[];
  /** What one token stands for in decoded text, for showing text token by token: its bytes (a byte-level or
   * byte-fallback token may hold only part of a character), or the name of a special, added or control token. */
  tokenSurface(id: number): TokenSurface;
  /** Special/added tokens and vocabulary pieces. */
  tokenToId(token: string): number | undefined;
  idToToken(id: number): string | undefined;
  /** Added/special tokens. */
  readonly specialTokens: ReadonlyMap<string, number>;
  readonly bosId?: number;
  readonly eosId?: number;
  readonly padId?: number;
  readonly unkId?: number;
}

export type TokenSurface = { bytes: Uint8Array } | { name: string };

/** Token names from tokenizer_config.json: a string, an AddedToken object, null (explicitly none) or absent. */
export interface TokenNames {
  bos?: string | null;
  eos?: string | null;
  pad?: string | null;
  unk?: string | null;
}
