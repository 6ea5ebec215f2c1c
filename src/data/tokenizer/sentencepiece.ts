// A SentencePiece BPE model (`tokenizer.model`), exact against the C++ library: normalize, split into
// characters (user-defined pieces whole), merge the adjacent pair whose merged piece has the highest score
// (ties: leftmost) until none is in the vocabulary, then unknown characters become UTF-8 byte pieces
// (byte fallback) or one merged <unk>. Decoding reassembles byte runs and turns ▁ back into spaces.
import { LorakitError } from "../../errors.js";
import { type ModelProto, ModelType, PieceType, parseModelProto } from "./protobuf.js";
import { SentencePieceNormalizer } from "./spm-normalizer.js";
import { decodeBytesPerChar, utf8Encoder } from "./utf8.js";

const SPACE_SYMBOL = "\u2581";
const CACHE_LIMIT = 50_000; // entries; the cache is dropped when full
const CACHE_MAX_SEGMENT = 64; // UTF-16 units; longer segments (unspaced Chinese) are rarely repeated

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
  private readonly mergeable = new Map<string, number>();
  /** CONTROL, UNKNOWN and BYTE pieces: looked up first, never produced by merges. */
  private readonly reserved = new Map<string, number>();
  private readonly byteIds = new Int32Array(256).fill(-1);
  private readonly byteOf: Int16Array;
  private readonly byteFallback: boolean;
  private readonly unkSurface: string;
  private readonly stripBosSpace: boolean;
  private readonly removeExtraWhitespaces: boolean;
  private readonly normalizer: SentencePieceNormalizer;
  /** User-defined pieces by first UTF-16 unit, longest first. */
  private readonly userDefined = new Map<string, string[]>();
  /** Whether the normalized text may be cut before every "▁" that follows another character. */
  private readonly segmentable: boolean;
  private readonly cache = new Map<string, number[]>();

  static fromBytes(buf: Uint8Array, file: string): SentencePieceModel {
    return new SentencePieceModel(parseModelProto(buf, file), file);
  }

  constructor(proto: ModelProto, file: string) {
    const unsupported = (what: string, hint: string, key: string) =>
      new LorakitError("TOKENIZER_UNSUPPORTED", what, { where: { file, key }, hint });
    if (proto.trainer.modelType !== ModelType.BPE) {
      const name = Object.entries(ModelType).find(([, v]) => v === proto.trainer.modelType)?.[0] ?? "unknown";
      throw unsupported(
        `SentencePiece model type ${name} is not supported (only BPE)`,
        "provide tokenizer.json for this checkpoint",
        "trainer_spec.model_type",
      );
    }
    if (proto.trainer.treatWhitespaceAsSuffix) {
      throw unsupported(
        "treat_whitespace_as_suffix is not supported",
        "provide tokenizer.json for this checkpoint",
        "trainer_spec.treat_whitespace_as_suffix",
      );
    }
    if (proto.denormalizer && proto.denormalizer.precompiledCharsmap.length > 0) {
      throw unsupported(
        "a denormalizer charsmap is not supported",
        "provide tokenizer.json for this checkpoint",
        "denormalizer_spec.precompiled_charsmap",
      );
    }

    const n = proto.pieces.length;
    this.size = n;
    this.pieceOf = new Array<string>(n);
    this.types = new Uint8Array(n);
    this.scores = new Float64Array(n);
    this.byteOf = new Int16Array(n).fill(-1);
    let unkId = -1;
    const userDefined: string[] = [];
    for (let id = 0; id < n; id++) {
      const p = proto.pieces[id] as ModelProto["pieces"][number];
      const key = `pieces[${id}]`;
      if (p.piece.length === 0) throw unsupported(`piece ${id} is empty`, "the model file is broken", key);
      this.pieceOf[id] = p.piece;
      this.types[id] = p.type;
      this.scores[id] = p.score;
      const normal = p.type === PieceType.NORMAL || p.type === PieceType.USER_DEFINED || p.type === PieceType.UNUSED;
      const table = normal ? this.mergeable : this.reserved;
      if (table.has(p.piece))
        throw unsupported(`piece ${JSON.stringify(p.piece)} is defined twice`, "the model file is broken", key);
      table.set(p.piece, id);
      if (p.type === PieceType.USER_DEFINED) userDefined.push(p.piece);
      if (p.type === PieceType.UNKNOWN) unkId = id;
      if (p.type === PieceType.BYTE) {
        const m = /^<0x([0-9A-F]{2})>$/.exec(p.piece);
        if (!m || !proto.trainer.byteFallback) {
          throw unsupported(
            `byte piece ${JSON.stringify(p.piece)} without byte fallback`,
            "the model file is broken",
            key,
          );
        }
        const byte = Number.parseInt(m[1] as string, 16);
        this.byteIds[byte] = id;
        this.byteOf[id] = byte;
      }
    }
    if (unkId < 0) throw unsupported("no <unk> piece", "the model file is broken", "pieces");
    if (proto.trainer.byteFallback && this.byteIds.includes(-1)) {
      throw unsupported(
        "byte fallback is on but some <0xNN> pieces are missing",
        "the model file is broken",
        "trainer_spec.byte_fallback",
      );
    }
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
    // A piece holding "x▁" (x not ▁) would let a merge cross a word start; without one, words are independent.
    this.segmentable = ![...this.mergeable.keys()].some((p) => /[^\u2581]\u2581/.test(p));
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
    if (normalized.length === 0) return [];
    const pieces: number[] = []; // [id, start, end] triples into `normalized`
    if (this.segmentable) {
      let start = 0;
      for (let i = 1; i <= normalized.length; i++) {
        if (i < normalized.length && !(normalized[i] === SPACE_SYMBOL && normalized[i - 1] !== SPACE_SYMBOL)) continue;
        this.encodeSegment(normalized, start, i, pieces);
        start = i;
      }
    } else {
      this.encodeSegment(normalized, 0, normalized.length, pieces);
    }
    return this.finish(normalized, pieces);
  }

  /** Appends [id, start, end] triples for the BPE segmentation of normalized[from, to). */
  private encodeSegment(text: string, from: number, to: number, out: number[]): void {
    const key = text.slice(from, to);
    let rel = this.cache.get(key);
    if (!rel) {
      rel = this.bpe(key);
      if (key.length <= CACHE_MAX_SEGMENT) {
        if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
        this.cache.set(key, rel);
      }
    }
    for (let i = 0; i < rel.length; i += 3)
      out.push(rel[i] as number, from + (rel[i + 1] as number), from + (rel[i + 2] as number));
  }

  /** The model's Encode on one segment: [id, start, end] triples (id may be <unk>). */
  private bpe(text: string): number[] {
    // Symbols: one character each, user-defined pieces whole (and frozen).
    const start: number[] = [];
    const end: number[] = [];
    const frozen: boolean[] = [];
    for (let i = 0; i < text.length; ) {
      let len = 0;
      const candidates = this.userDefined.get(text[i] as string);
      if (candidates) {
        for (const u of candidates) {
          if (text.startsWith(u, i)) {
            len = u.length;
            break;
          }
        }
      }
      const freeze = len > 0;
      if (!freeze) {
        // One code point: a surrogate pair whole (normalized text never holds a lone surrogate).
        len = (text.codePointAt(i) as number) > 0xffff ? 2 : 1;
      }
      start.push(i);
      end.push(i + len);
      frozen.push(freeze);
      i += len;
    }
    const n = start.length;
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    const heap = new PairHeap();
    let revMerge: Map<string, [string, string]> | undefined;
    const maybeAdd = (left: number, right: number) => {
      if (left === -1 || right === -1 || frozen[left] || frozen[right]) return;
      const merged = text.slice(start[left], end[right]);
      const id = this.mergeable.get(merged);
      if (id === undefined) return;
      heap.push(left, right, this.scores[id] as number, merged.length);
      if (this.types[id] === PieceType.UNUSED) {
        revMerge ??= new Map();
        revMerge.set(merged, [text.slice(start[left], end[left]), text.slice(start[right], end[right])]);
      }
    };
    for (let i = 1; i < n; i++) maybeAdd(i - 1, i);
    while (heap.size > 0) {
      const [left, right, size] = heap.pop();
      const ll = (end[left] as number) - (start[left] as number);
      const rl = (end[right] as number) - (start[right] as number);
      if (ll === 0 || rl === 0 || ll + rl !== size) continue;
      end[left] = end[right] as number;
      end[right] = start[right] as number; // now empty
      next[left] = next[right] as number;
      if ((next[right] as number) >= 0) prev[next[right] as number] = left;
      maybeAdd(prev[left] as number, left);
      maybeAdd(left, next[left] as number);
    }
    const out: number[] = [];
    const emit = (s: number, e: number) => {
      const piece = text.slice(s, e);
      const id = this.pieceToId(piece);
      const split = this.types[id] === PieceType.UNUSED ? revMerge?.get(piece) : undefined;
      if (!split) {
        out.push(id, s, e);
        return;
      }
      emit(s, s + split[0].length);
      emit(s + split[0].length, e);
    };
    for (let i = n > 0 ? 0 : -1; i !== -1; i = next[i] as number) emit(start[i] as number, end[i] as number);
    return out;
  }

  /** Byte fallback for unknown pieces, or one <unk> per run of them (PopulateSentencePieceText). */
  private finish(text: string, triples: number[]): number[] {
    const ids: number[] = [];
    let prevUnk = false;
    for (let i = 0; i < triples.length; i += 3) {
      const id = triples[i] as number;
      const unk = this.types[id] === PieceType.UNKNOWN;
      if (unk && this.byteFallback) {
        for (const byte of utf8Encoder.encode(text.slice(triples[i + 1], triples[i + 2])))
          ids.push(this.byteIds[byte] as number);
      } else if (!(unk && prevUnk)) {
        ids.push(id);
      }
      prevUnk = unk;
    }
    return ids;
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

/** A binary max-heap of candidate merges: higher score first, then smaller left index. */
class PairHeap {
  private left: number[] = [];
  private right: number[] = [];
  private score: number[] = [];
  private len: number[] = [];
  size = 0;

  private before(i: number, j: number): boolean {
    const si = this.score[i] as number;
    const sj = this.score[j] as number;
    return si > sj || (si === sj && (this.left[i] as number) < (this.left[j] as number));
  }

  private swap(i: number, j: number): void {
    for (const a of [this.left, this.right, this.score, this.len]) {
      const t = a[i] as number;
      a[i] = a[j] as number;
      a[j] = t;
    }
  }

  push(left: number, right: number, score: number, len: number): void {
    let i = this.size++;
    this.left[i] = left;
    this.right[i] = right;
    this.score[i] = score;
    this.len[i] = len;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  /** Removes the top: [left, right, merged length]. */
  pop(): [number, number, number] {
    const top: [number, number, number] = [this.left[0] as number, this.right[0] as number, this.len[0] as number];
    const last = --this.size;
    if (last > 0) {
      this.left[0] = this.left[last] as number;
      this.right[0] = this.right[last] as number;
      this.score[0] = this.score[last] as number;
      this.len[0] = this.len[last] as number;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < last && this.before(l, best)) best = l;
        if (r < last && this.before(r, best)) best = r;
        if (best === i) break;
        this.swap(i, best);
        i = best;
      }
    }
    return top;
  }
}
