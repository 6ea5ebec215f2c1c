// Reads a SentencePiece `tokenizer.model`: the protobuf `sentencepiece.ModelProto` (proto2), decoded by
// hand for the fields that change how text is tokenized. Field numbers follow sentencepiece_model.proto.
import { LorakitError } from "../../errors.js";
import { lenientUtf8, strictUtf8 } from "./utf8.js";

export const PieceType = {
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;
export type PieceType = (typeof PieceType)[keyof typeof PieceType];

export const ModelType = { UNIGRAM: 1, BPE: 2, WORD: 3, CHAR: 4 } as const;

export interface SentencePieceEntry {
  piece: string;
  score: number;
  type: PieceType;
}

export interface TrainerSpec {
  modelType: number;
  treatWhitespaceAsSuffix: boolean;
  byteFallback: boolean;
  unkPiece: string;
  bosPiece: string;
  eosPiece: string;
  padPiece: string;
  unkSurface: string;
}

export interface NormalizerSpec {
  name: string;
  precompiledCharsmap: Uint8Array;
  addDummyPrefix: boolean;
  removeExtraWhitespaces: boolean;
  escapeWhitespaces: boolean;
}

export interface ModelProto {
  pieces: SentencePieceEntry[];
  trainer: TrainerSpec;
  normalizer: NormalizerSpec;
  denormalizer: NormalizerSpec | undefined;
}

const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;

/** A decoding failure and the byte offset it was found at. */
class ProtoError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(message);
  }
}

class Reader {
  pos: number;
  /** Offset of the last field key read (what a bad wire type or an overrunning field is reported at). */
  keyAt = 0;
  private readonly view: DataView;

  constructor(
    readonly buf: Uint8Array,
    start = 0,
    readonly end = buf.length,
  ) {
    this.pos = start;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  done(): boolean {
    return this.pos >= this.end;
  }

  varint(): number {
    const at = this.pos;
    let result = 0;
    let shift = 0;
    for (;;) {
      if (this.pos >= this.end) throw new ProtoError("truncated varint", at);
      const b = this.buf[this.pos++] as number;
      if (shift < 49) result += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return result;
      shift += 7;
      if (shift > 63) throw new ProtoError("varint longer than 10 bytes", at);
    }
  }

  /** A varint read as a signed 32-bit int32 (negative values are sign-extended to 64 bits on the wire). */
  int32(): number {
    return this.varint() | 0;
  }

  float(): number {
    if (this.pos + 4 > this.end) throw new ProtoError("truncated float", this.pos);
    const v = this.view.getFloat32(this.pos, true);
    this.pos += 4;
    return v;
  }

  bytes(): Uint8Array {
    const at = this.pos;
    const n = this.varint();
    if (this.pos + n > this.end) throw new ProtoError("length-delimited field runs past its message", at);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  sub(): Reader {
    const at = this.pos;
    const n = this.varint();
    if (this.pos + n > this.end) throw new ProtoError("sub-message runs past its parent", at);
    const r = new Reader(this.buf, this.pos, this.pos + n);
    this.pos += n;
    return r;
  }

  skip(wire: number): void {
    if (wire === WIRE_VARINT) this.varint();
    else if (wire === WIRE_I64) this.pos += 8;
    else if (wire === WIRE_LEN) {
      const n = this.varint(); // read before adding: `pos += varint()` would add to the old pos
      this.pos += n;
    } else if (wire === WIRE_I32) this.pos += 4;
    else throw new ProtoError(`unsupported wire type ${wire}`, this.keyAt);
    if (this.pos > this.end) throw new ProtoError("field runs past its message", this.keyAt);
  }

  /** Iterates the fields of this message: field number and wire type. */
  *fields(): Generator<[number, number]> {
    while (!this.done()) {
      this.keyAt = this.pos;
      const key = this.varint();
      yield [Math.floor(key / 8), key & 7];
    }
  }
}

function str(r: Reader): string {
  const bytes = r.bytes();
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new ProtoError("a string is not valid UTF-8", r.pos - bytes.length);
  }
}

function readPiece(r: Reader): SentencePieceEntry {
  const out: SentencePieceEntry = { piece: "", score: 0, type: PieceType.NORMAL };
  for (const [field, wire] of r.fields()) {
    if (field === 1 && wire === WIRE_LEN) out.piece = str(r);
    else if (field === 2 && wire === WIRE_I32) out.score = r.float();
    else if (field === 3 && wire === WIRE_VARINT) out.type = r.varint() as PieceType;
    else r.skip(wire);
  }
  return out;
}

function readTrainer(r: Reader | undefined): TrainerSpec {
  const out: TrainerSpec = {
    modelType: ModelType.UNIGRAM,
    treatWhitespaceAsSuffix: false,
    byteFallback: false,
    unkPiece: "<unk>",
    bosPiece: "<s>",
    eosPiece: "</s>",
    padPiece: "<pad>",
    unkSurface: " \u2047 ",
  };
  if (!r) return out;
  for (const [field, wire] of r.fields()) {
    if (field === 3 && wire === WIRE_VARINT) out.modelType = r.int32();
    else if (field === 24 && wire === WIRE_VARINT) out.treatWhitespaceAsSuffix = r.varint() !== 0;
    else if (field === 35 && wire === WIRE_VARINT) out.byteFallback = r.varint() !== 0;
    else if (field === 44 && wire === WIRE_LEN) out.unkSurface = str(r);
    else if (field === 45 && wire === WIRE_LEN) out.unkPiece = str(r);
    else if (field === 46 && wire === WIRE_LEN) out.bosPiece = str(r);
    else if (field === 47 && wire === WIRE_LEN) out.eosPiece = str(r);
    else if (field === 48 && wire === WIRE_LEN) out.padPiece = str(r);
    else r.skip(wire);
  }
  return out;
}

function readNormalizer(r: Reader | undefined): NormalizerSpec {
  const out: NormalizerSpec = {
    name: "",
    precompiledCharsmap: new Uint8Array(0),
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
    escapeWhitespaces: true,
  };
  if (!r) return out;
  for (const [field, wire] of r.fields()) {
    if (field === 1 && wire === WIRE_LEN) out.name = str(r);
    else if (field === 2 && wire === WIRE_LEN) out.precompiledCharsmap = r.bytes();
    else if (field === 3 && wire === WIRE_VARINT) out.addDummyPrefix = r.varint() !== 0;
    else if (field === 4 && wire === WIRE_VARINT) out.removeExtraWhitespaces = r.varint() !== 0;
    else if (field === 5 && wire === WIRE_VARINT) out.escapeWhitespaces = r.varint() !== 0;
    else r.skip(wire);
  }
  return out;
}

/** Decodes a ModelProto; `file` names it in errors. */
export function parseModelProto(buf: Uint8Array, file: string): ModelProto {
  // The field being read, for the error's key (sentencepiece_model.proto's names).
  let key: string | undefined;
  try {
    const r = new Reader(buf);
    const pieces: SentencePieceEntry[] = [];
    let trainer: Reader | undefined;
    let normalizer: Reader | undefined;
    let denormalizer: Reader | undefined;
    for (const [field, wire] of r.fields()) {
      key = undefined;
      if (field === 1 && wire === WIRE_LEN) {
        key = `pieces[${pieces.length}]`;
        pieces.push(readPiece(r.sub()));
      } else if (field === 2 && wire === WIRE_LEN) trainer = r.sub();
      else if (field === 3 && wire === WIRE_LEN) normalizer = r.sub();
      else if (field === 5 && wire === WIRE_LEN) denormalizer = r.sub();
      else r.skip(wire);
    }
    key = "pieces";
    if (pieces.length === 0) throw new ProtoError("no pieces", 0);
    key = "trainer_spec";
    const trainerSpec = readTrainer(trainer);
    key = "normalizer_spec";
    const normalizerSpec = readNormalizer(normalizer);
    key = "denormalizer_spec";
    return {
      pieces,
      trainer: trainerSpec,
      normalizer: normalizerSpec,
      denormalizer: denormalizer ? readNormalizer(denormalizer) : undefined,
    };
  } catch (err) {
    const head = lenientUtf8.decode(buf.subarray(0, 64));
    const tiktoken = /^[A-Za-z0-9+/=]+ \d+\r?\n/.test(head);
    throw new LorakitError(
      "TOKENIZER_BAD_MODEL",
      `${file} is not a SentencePiece model (${(err as Error).message})` +
        (tiktoken ? "; it looks like a tiktoken rank file (GLM-4 ships one)" : ""),
      {
        where: { file, ...(err instanceof ProtoError ? { offset: err.offset } : {}), ...(key ? { key } : {}) },
        hint: tiktoken
          ? "use a checkpoint that ships tokenizer.json (for GLM-4, the -hf variant)"
          : "check that the file is complete (a Git LFS pointer is not the model) or provide tokenizer.json",
      },
    );
  }
}
