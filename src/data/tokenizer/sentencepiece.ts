// A SentencePiece BPE model (`tokenizer.model`), exact against the C++ library: normalize, split into
// characters (user-defined pieces whole), merge the adjacent pair whose merged piece has the highest score
// (ties: leftmost) until none is in the vocabulary, then unknown characters become UTF-8 byte pieces
// (byte fallback) or one merged <unk>. Decoding reassembles byte runs and turns ▁ back into spaces.
//
// Speed, with the same ids: symbols are integers and a candidate merge is one lookup in a table of the pairs
// met so far; the normalized text is cut between two characters that no piece holds side by side (no merge
// can cross such a cut), which leaves "▁word"s and one- or two-character CJK segments, encoded once and then
// served from a cache.
import { LorakitError } from "../../errors.js";
import { type ModelProto, PieceType, parseModelProto } from "./protobuf.js";
import { ABSENT, PairHeap, PairTable, Work } from "./spm-bpe.js";
import { SentencePieceNormalizer } from "./spm-normalizer.js";
import { readVocab } from "./spm-vocab.js";
import { decodeBytesPerChar, utf8Encoder } from "./utf8.js";

const SPACE_SYMBOL = "\u2581";
const CACHE_LIMIT = 100_000; // entries; the cache is dropped when full
const CACHE_MAX_SEGMENT = 64; // UTF-16 units; longer segments are rarely repeated
const UNSEEN = -2;
const PAIR_LIMIT = 1 << 20; // pairs remembered; the table starts over when full

export class SentencePieceModel {
  readonly size: number;
  readonly unkId: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  readonly padId: number | undefined;
  private readonly pieceOf: string[];
  private readonly types: Uint8Array;
  private readonly scores: Float64Array;
  /** NORMAL, USER_DEFINED and UNUSED pieces: what merges may produce. */
  private readonly mergeable: Map<string, number>;
  /** CONTROL, UNKNOWN and BYTE pieces: looked up first, never produced by merges. */
  private readonly reserved: Map<string, number>;
  private readonly byteIds: Int32Array;
  private readonly byteOf: Int16Array;
  private readonly byteFallback: boolean;
  private readonly unkSurface: string;
  private readonly stripBosSpace: boolean;
  private readonly removeExtraWhitespaces: boolean;
  private readonly normalizer: SentencePieceNormalizer;
  /** User-defined pieces by first UTF-16 unit, longest first. */
  private readonly userDefined = new Map<string, string[]>();
  /** (left symbol, right symbol) → the mergeable piece their concatenation is, or -1: filled as pairs are met. */
  private readonly pairs = new PairTable();
  /**
   * Adjacent code points inside some mergeable piece. Between two characters that are not, no merge can
   * ever cross (every merged symbol is a piece), so the text is cut there and each segment encoded alone.
   */
  private readonly bigrams = new PairTable();
  /** Symbol of each BMP character (UNSEEN until first asked). */
  private readonly charSym = new Int32Array(0x10000).fill(UNSEEN);
  /** What PieceToId gives for each mergeable piece (a reserved piece of the same text wins). */
  private readonly outId: Int32Array;
  /** Segmenting and caching are exact unless UNUSED pieces exist (their resegmentation spans the text). */
  private readonly segmentable: boolean;
  /** Ids of one-character segments that are one id (UNSEEN until first met). */
  private readonly single = new Int32Array(0x10000).fill(UNSEEN);
  private readonly cache = new Map<string, number[]>();
  private readonly triples: number[] = [];
  private readonly work = new Work();
  private readonly heap = new PairHeap();

  static fromBytes(buf: Uint8Array, file: string): SentencePieceModel {
    return new SentencePieceModel(parseModelProto(buf, file), file);
  }

  constructor(proto: ModelProto, file: string) {
    const v = readVocab(proto, file);
    const n = proto.pieces.length;
    this.size = n;
    this.pieceOf = v.pieceOf;
    this.types = v.types;
    this.scores = v.scores;
    this.byteOf = v.byteOf;
    this.byteIds = v.byteIds;
    this.mergeable = v.mergeable;
    this.reserved = v.reserved;
    const { unkId, userDefined } = v;
    this.unkId = unkId;
    const control = (piece: string) => {
      const id = this.pieceToId(piece);
      return this.types[id] === PieceType.CONTROL ? id : undefined;
    };
    this.bosId = control(proto.trainer.bosPiece);
    this.eosId = control(proto.trainer.eosPiece);
    this.padId = control(proto.trainer.padPiece);
    this.byteFallback = proto.trainer.byteFallback;
    this.unkSurface = proto.trainer.unkSurface;
    this.stripBosSpace = proto.normalizer.addDummyPrefix || proto.normalizer.removeExtraWhitespaces;
    this.removeExtraWhitespaces = proto.normalizer.removeExtraWhitespaces;
    this.normalizer = new SentencePieceNormalizer(proto.normalizer, userDefined, file);
    for (const u of userDefined.sort((a, b) => b.length - a.length)) {
      const first = u[0] as string;
      const list = this.userDefined.get(first) ?? [];
      list.push(u);
      this.userDefined.set(first, list);
    }
    this.outId = new Int32Array(n);
    let unused = false;
    for (let id = 0; id < n; id++) {
      this.outId[id] = this.pieceToId(this.pieceOf[id] as string);
      if (this.types[id] === PieceType.UNUSED) unused = true;
    }
    this.segmentable = !unused;
    this.buildBigrams();
  }

  /** The bigrams of every mergeable piece (code points side by side). */
  private buildBigrams(): void {
    for (const piece of this.mergeable.keys()) {
      let prev = piece.codePointAt(0) as number;
      for (let at = prev > 0xffff ? 2 : 1; at < piece.length; ) {
        const cp = piece.codePointAt(at) as number;
        this.bigrams.set(prev, cp, 1);
        prev = cp;
        at += cp > 0xffff ? 2 : 1;
      }
    }
  }

  /** The text of a symbol: a piece, or (ids from size on) a character that is none. */
  private symbolText(sym: number): string {
    return sym < this.size ? (this.pieceOf[sym] as string) : String.fromCodePoint(sym - this.size);
  }

  /** The mergeable piece two adjacent symbols make, or -1; looked up once per pair, then from the table. */
  private merge(a: number, b: number): number {
    let m = this.pairs.get(a, b);
    if (m === ABSENT) {
      m = this.mergeable.get(this.symbolText(a) + this.symbolText(b)) ?? -1;
      if (this.pairs.size >= PAIR_LIMIT) this.pairs.clear();
      this.pairs.set(a, b, m);
    }
    return m;
  }

  /** SentencePiece's PieceToId: reserved pieces first, then the rest, else <unk>. */
  pieceToId(piece: string): number {
    return this.reserved.get(piece) ?? this.mergeable.get(piece) ?? this.unkId;
  }

  /** The id of `piece` when it is in the vocabulary. */
  lookup(piece: string): number | undefined {
    return this.reserved.get(piece) ?? this.mergeable.get(piece);
  }

  idToPiece(id: number): string | undefined {
    return this.pieceOf[id];
  }

  isControl(id: number): boolean {
    return this.types[id] === PieceType.CONTROL;
  }

  isUnknown(id: number): boolean {
    return this.types[id] === PieceType.UNKNOWN;
  }

  /** A piece's bytes in decoded text (byte pieces one byte, ▁ a space), or null for control and unknown pieces. */
  pieceBytes(id: number): Uint8Array | null {
    const byte = this.byteOf[id] as number;
    if (byte >= 0) return Uint8Array.of(byte);
    const t = this.types[id];
    if (t === PieceType.CONTROL || t === PieceType.UNKNOWN) return null;
    return utf8Encoder.encode((this.pieceOf[id] as string).replaceAll(SPACE_SYMBOL, " "));
  }

  /** Control and unknown pieces (<unk>, <s>, </s>, …): never produced from text. */
  reservedPieces(): Map<string, number> {
    const out = new Map<string, number>();
    for (let id = 0; id < this.size; id++) {
      const t = this.types[id];
      if (t === PieceType.CONTROL || t === PieceType.UNKNOWN) out.set(this.pieceOf[id] as string, id);
    }
    return out;
  }

  normalize(text: string): string {
    return this.normalizer.normalize(text);
  }

  encode(text: string): number[] {
    const normalized = this.normalizer.normalize(text);
    const out: number[] = [];
    if (normalized.length === 0) return out;
    if (!this.segmentable) {
      const triples: number[] = [];
      this.bpe(normalized, 0, normalized.length, triples);
      this.finish(normalized, triples, out);
      return out;
    }
    // Cut the text where no piece can cross (see PairTable `bigrams`) and encode each segment on its own,
    // through the caches: most segments are one or two characters of CJK or a whole "▁word".
    const s = normalized;
    const n = s.length;
    let segStart = 0;
    let prev = s.charCodeAt(0);
    let i = 1;
    if (prev >= 0xd800 && prev < 0xdc00 && n > 1) {
      prev = s.codePointAt(0) as number;
      i = 2;
    }
    while (i < n) {
      let cp = s.charCodeAt(i);
      const step = cp >= 0xd800 && cp < 0xdc00 && i + 1 < n ? 2 : 1;
      if (step === 2) cp = s.codePointAt(i) as number;
      if (!this.bigrams.has(prev, cp)) {
        this.segment(s, segStart, i, out);
        segStart = i;
      }
      prev = cp;
      i += step;
    }
    this.segment(s, segStart, n, out);
    return out;
  }

  /** Appends the ids of normalized[from, to), a segment no piece crosses, from the caches when there. */
  private segment(s: string, from: number, to: number, out: number[]): void {
    if (to - from === 1) {
      const one = this.single[s.charCodeAt(from)] as number;
      if (one >= 0) {
        this.push(out, one);
        return;
      }
    }
    const key = to - from <= CACHE_MAX_SEGMENT ? s.slice(from, to) : undefined;
    let ids = key === undefined ? undefined : this.cache.get(key);
    if (ids === undefined) {
      const triples = this.triples;
      triples.length = 0;
      this.bpe(s, from, to, triples);
      ids = [];
      this.finish(s, triples, ids);
      if (key !== undefined) {
        if (key.length === 1 && ids.length === 1) this.single[key.charCodeAt(0)] = ids[0] as number;
        else {
          if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
          this.cache.set(key, ids);
        }
      }
    }
    for (let k = 0; k < ids.length; k++) this.push(out, ids[k] as number);
  }

  /** Appends an id; without byte fallback a run of unknown pieces is one <unk> (across segments too). */
  private push(out: number[], id: number): void {
    if (!this.byteFallback && this.types[id] === PieceType.UNKNOWN && out.length > 0) {
      if (this.types[out[out.length - 1] as number] === PieceType.UNKNOWN) return;
    }
    out.push(id);
  }

  /** The symbol a single code point starts as: its piece, or size + the code point when it is none. */
  private charSymbol(cp: number): number {
    if (cp < 0x10000) {
      const known = this.charSym[cp] as number;
      if (known !== UNSEEN) return known;
    }
    const ch = String.fromCodePoint(cp);
    const sym = this.mergeable.get(ch) ?? this.size + cp;
    if (cp < 0x10000) this.charSym[cp] = sym;
    return sym;
  }

  /**
   * The model's Encode on normalized[from, to): appends [id, start, end] triples (id may be <unk>). Symbols
   * are integers (a piece id, or a stand-in for a character only pieces hold), so a candidate pair is one
   * table lookup; the agenda is a binary heap over typed arrays: highest score first, then leftmost.
   */
  private bpe(text: string, from: number, to: number, out: number[]): void {
    let n = 0;
    const w = this.work.ensure(to - from + 1);
    const { start, end, sym, prev, next } = w;
    for (let i = from; i < to; ) {
      let len = 0;
      const candidates = this.userDefined.size > 0 ? this.userDefined.get(text[i] as string) : undefined;
      if (candidates) {
        for (const u of candidates) {
          if (u.length <= to - i && text.startsWith(u, i)) {
            len = u.length;
            break;
          }
        }
      }
      let id = -1;
      if (len === 0) {
        // One code point: a surrogate pair whole (normalized text never holds a lone surrogate).
        const cp = text.codePointAt(i) as number;
        len = cp > 0xffff ? 2 : 1;
        id = this.charSymbol(cp);
      }
      start[n] = i;
      end[n] = i + len;
      sym[n] = id; // -1: frozen (user-defined), never merged
      prev[n] = n - 1;
      next[n] = n + 1;
      n++;
      i += len;
    }
    if (n === 0) return;
    next[n - 1] = -1;
    const heap = this.heap;
    heap.size = 0;
    let revMerge: Map<number, number> | undefined;
    const maybeAdd = (left: number, right: number) => {
      if (left === -1 || right === -1) return;
      const a = sym[left] as number;
      const b = sym[right] as number;
      if (a < 0 || b < 0) return;
      const merged = this.merge(a, b);
      if (merged < 0) return;
      heap.push(left, right, this.scores[merged] as number, (end[right] as number) - (start[left] as number), merged);
      if (this.types[merged] === PieceType.UNUSED) {
        revMerge ??= new Map();
        revMerge.set(merged, (end[left] as number) - (start[left] as number));
      }
    };
    for (let i = 1; i < n; i++) maybeAdd(i - 1, i);
    while (heap.size > 0) {
      const left = heap.topLeft();
      const right = heap.topRight();
      const size = heap.topLen();
      const merged = heap.topId();
      heap.pop();
      const ll = (end[left] as number) - (start[left] as number);
      const rl = (end[right] as number) - (start[right] as number);
      if (ll === 0 || rl === 0 || ll + rl !== size) continue;
      end[left] = end[right] as number;
      end[right] = start[right] as number; // now empty
      sym[left] = merged;
      const after = next[right] as number;
      next[left] = after;
      if (after >= 0) prev[after] = left;
      maybeAdd(prev[left] as number, left);
      maybeAdd(left, after);
    }
    for (let i = 0; i !== -1; i = next[i] as number) {
      const s = start[i] as number;
      const e = end[i] as number;
      const m = sym[i] as number;
      if (m >= 0 && m < this.size) {
        // A piece of the vocabulary: a character that is one, or what merges made.
        const id = this.outId[m] as number;
        if (this.types[id] === PieceType.UNUSED && revMerge) this.resegment(text, s, e, revMerge, out);
        else out.push(id, s, e);
      } else {
        out.push(this.pieceToId(text.slice(s, e)), s, e);
      }
    }
  }

  /** An unused piece is split back into the pair it was last merged from (SentencePiece's resegmentation). */
  private resegment(text: string, s: number, e: number, revMerge: Map<number, number>, out: number[]): void {
    const piece = text.slice(s, e);
    const id = this.pieceToId(piece);
    const m = this.mergeable.get(piece);
    const leftLen = this.types[id] === PieceType.UNUSED && m !== undefined ? revMerge.get(m) : undefined;
    if (leftLen === undefined) {
      out.push(id, s, e);
      return;
    }
    this.resegment(text, s, s + leftLen, revMerge, out);
    this.resegment(text, s + leftLen, e, revMerge, out);
  }

  /** Byte fallback for unknown pieces, or one <unk> per run of them (PopulateSentencePieceText). */
  private finish(text: string, triples: readonly number[], ids: number[]): void {
    for (let i = 0; i < triples.length; i += 3) {
      const id = triples[i] as number;
      if (this.types[id] === PieceType.UNKNOWN && this.byteFallback) {
        for (const byte of utf8Encoder.encode(text.slice(triples[i + 1], triples[i + 2])))
          ids.push(this.byteIds[byte] as number);
      } else {
        this.push(ids, id);
      }
    }
  }

  /** SentencePiece's Decode: control pieces vanish, byte runs become UTF-8 (U+FFFD per bad byte). */
  decode(ids: readonly number[]): string {
    let text = "";
    let bytes: number[] = [];
    let isBosWs = true;
    let bosWsSeen = false;
    const flush = () => {
      if (bytes.length > 0) {
        text += decodeBytesPerChar(Uint8Array.from(bytes));
        bytes = [];
      }
    };
    for (const id of ids) {
      const piece = this.pieceOf[id];
      if (piece === undefined) throw new LorakitError("TOKENIZER_BAD_ID", `token id ${id} is out of range`);
      const byte = this.byteOf[id] as number;
      if (byte >= 0) {
        bytes.push(byte);
        continue;
      }
      flush();
      if (bosWsSeen || text.length > 0) isBosWs = false;
      const type = this.types[id];
      if (type === PieceType.CONTROL) {
        bosWsSeen = false;
      } else if (type === PieceType.UNKNOWN) {
        text += this.unkSurface;
        bosWsSeen = false;
      } else {
        let p = piece;
        bosWsSeen = false;
        if (isBosWs && this.stripBosSpace && p.startsWith(SPACE_SYMBOL)) {
          p = p.slice(1);
          bosWsSeen = !this.removeExtraWhitespaces;
        }
        text += p.replaceAll(SPACE_SYMBOL, " ");
      }
    }
    flush();
    return text;
  }
}
