// A SentencePiece model plus the tokens a checkpoint appends after its vocabulary. ChatGLM3 appends nine
// ([MASK] … <|observation|>, ids spSize…spSize+8) that SentencePiece itself never produces. Encoding with
// parseSpecial cuts the text at special spellings and encodes each piece of text on its own; decoding
// decodes each run between special tokens on its own, as ChatGLM3's tokenizer does.
import { LorakitError } from "../../errors.js";
import { TokenSplitter } from "./added.js";
import type { SentencePieceModel } from "./sentencepiece.js";
import { checkIds, resolveNamedId } from "./special-ids.js";
import type { DecodeOptions, EncodeOptions, Tokenizer, TokenNames, TokenSurface } from "./types.js";

export const CHATGLM3_SPECIALS = [
  "[MASK]",
  "[gMASK]",
  "[sMASK]",
  "sop",
  "eop",
  "<|system|>",
  "<|user|>",
  "<|assistant|>",
  "<|observation|>",
] as const;

export interface AppendedToken {
  content: string;
  id: number;
  special: boolean;
}

export class SentencePieceTokenizer implements Tokenizer {
  readonly kind = "sentencepiece" as const;
  readonly vocabSize: number;
  readonly specialTokens: ReadonlyMap<string, number>;
  readonly bosId?: number;
  readonly eosId?: number;
  readonly padId?: number;
  readonly unkId?: number;
  private readonly appendedById = new Map<number, string>();
  private readonly appendedByContent = new Map<string, number>();
  /** Splits on non-special appended tokens only (always applied). */
  private readonly alwaysSplitter: TokenSplitter;
  /** Splits on every special and appended token (parseSpecial). */
  private readonly specialSplitter: TokenSplitter;

  constructor(
    readonly model: SentencePieceModel,
    appended: readonly AppendedToken[],
    readonly hash: string,
    names: TokenNames,
    file: string,
  ) {
    let max = model.size - 1;
    const special = new Map<string, number>(model.reservedPieces());
    for (const t of appended) {
      if (t.id < model.size) {
        const piece = model.idToPiece(t.id);
        if (piece === t.content) continue; // a config listing <unk>/<s>/</s> at their own ids
        throw new LorakitError(
          "TOKENIZER_BAD_CONFIG",
          `added token ${JSON.stringify(t.content)} at id ${t.id} collides with SentencePiece piece ${JSON.stringify(piece)}`,
          {
            where: { file, key: "added_tokens_decoder" },
            hint: "added tokens must come after the SentencePiece vocabulary",
          },
        );
      }
      const clash = this.appendedById.get(t.id);
      const twice = this.appendedByContent.get(t.content);
      if ((clash !== undefined && clash !== t.content) || (twice !== undefined && twice !== t.id)) {
        const what =
          clash !== undefined && clash !== t.content
            ? `id ${t.id} is both ${JSON.stringify(clash)} and ${JSON.stringify(t.content)}`
            : `${JSON.stringify(t.content)} has ids ${twice} and ${t.id}`;
        throw new LorakitError("TOKENIZER_BAD_CONFIG", `added tokens disagree: ${what}`, {
          where: { file, key: "added_tokens_decoder" },
          hint: "each added token needs one id of its own (ChatGLM3's nine follow the SentencePiece vocabulary)",
        });
      }
      this.appendedById.set(t.id, t.content);
      this.appendedByContent.set(t.content, t.id);
      if (t.special) special.set(t.content, t.id);
      max = Math.max(max, t.id);
    }
    this.vocabSize = max + 1;
    this.specialTokens = special;
    const always = appended
      .filter((t) => !t.special && t.id >= model.size)
      .map((t): [string, number] => [t.content, t.id]);
    this.alwaysSplitter = new TokenSplitter(always);
    this.specialSplitter = new TokenSplitter([...special, ...always]);
    const lookup = (t: string) => this.tokenToId(t);
    this.unkId = names.unk === undefined ? model.unkId : resolveNamedId(names.unk, lookup);
    this.bosId = names.bos === undefined ? model.bosId : resolveNamedId(names.bos, lookup);
    this.eosId = names.eos === undefined ? model.eosId : resolveNamedId(names.eos, lookup);
    this.padId = names.pad === undefined ? model.padId : resolveNamedId(names.pad, lookup);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const splitter = opts.parseSpecial ? this.specialSplitter : this.alwaysSplitter;
    if (splitter.empty) return this.model.encode(text);
    const ids: number[] = [];
    for (const seg of splitter.split(text)) {
      if (typeof seg === "number") ids.push(seg);
      else for (const id of this.model.encode(seg)) ids.push(id);
    }
    return ids;
  }

  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    checkIds(ids, (id) => this.known(id));
    const kept = opts.skipSpecial ? ids.filter((id) => !this.isSpecial(id)) : ids;
    let text = "";
    let run: number[] = [];
    for (const id of kept) {
      const appended = this.appendedById.get(id);
      if (appended === undefined) {
        run.push(id);
        continue;
      }
      if (run.length > 0) text += this.model.decode(run);
      run = [];
      text += appended;
    }
    if (run.length > 0) text += this.model.decode(run);
    return text;
  }

  pieces(ids: readonly number[]): string[] {
    checkIds(ids, (id) => this.known(id));
    return ids.map((id) => this.idToToken(id) as string);
  }

  tokenSurface(id: number): TokenSurface {
    checkIds([id], (i) => this.known(i));
    const appended = this.appendedById.get(id);
    if (appended !== undefined) return { name: appended };
    const bytes = this.model.pieceBytes(id);
    return bytes ? { bytes } : { name: this.model.idToPiece(id) as string };
  }

  tokenToId(token: string): number | undefined {
    return this.appendedByContent.get(token) ?? this.model.lookup(token);
  }

  idToToken(id: number): string | undefined {
    return id < this.model.size ? this.model.idToPiece(id) : this.appendedById.get(id);
  }

  private known(id: number): boolean {
    return Number.isInteger(id) && id >= 0 && (id < this.model.size || this.appendedById.has(id));
  }

  private specialIds: Set<number> | undefined;
  private isSpecial(id: number): boolean {
    this.specialIds ??= new Set(this.specialTokens.values());
    return this.specialIds.has(id);
  }
}
