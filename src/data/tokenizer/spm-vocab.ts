// A SentencePiece model proto checked for what the BPE encoder (sentencepiece.ts) supports, and its vocabulary
// read into tables: each piece's text, type and score, the byte pieces, the mergeable and the reserved pieces.
import { LorakitError } from "../../errors.js";
import { type ModelProto, ModelType, PieceType } from "./protobuf.js";

export interface Vocab {
  pieceOf: string[];
  types: Uint8Array;
  scores: Float64Array;
  byteOf: Int16Array;
  /** The id of each byte's <0xNN> piece, or -1. */
  byteIds: Int32Array;
  /** NORMAL, USER_DEFINED and UNUSED pieces: what merges may produce. */
  mergeable: Map<string, number>;
  /** CONTROL, UNKNOWN and BYTE pieces: looked up first, never produced by merges. */
  reserved: Map<string, number>;
  unkId: number;
  /** User-defined pieces, in the model's order. */
  userDefined: string[];
}

/** The model's vocabulary; throws TOKENIZER_UNSUPPORTED (located) for a model the encoder does not implement
 * or a broken one. */
export function readVocab(proto: ModelProto, file: string): Vocab {
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
  const pieceOf = new Array<string>(n);
  const types = new Uint8Array(n);
  const scores = new Float64Array(n);
  const byteOf = new Int16Array(n).fill(-1);
  const byteIds = new Int32Array(256).fill(-1);
  const mergeable = new Map<string, number>();
  const reserved = new Map<string, number>();
  let unkId = -1;
  const userDefined: string[] = [];
  for (let id = 0; id < n; id++) {
    const p = proto.pieces[id] as ModelProto["pieces"][number];
    const key = `pieces[${id}]`;
    if (p.piece.length === 0) throw unsupported(`piece ${id} is empty`, "the model file is broken", key);
    pieceOf[id] = p.piece;
    types[id] = p.type;
    scores[id] = p.score;
    const normal = p.type === PieceType.NORMAL || p.type === PieceType.USER_DEFINED || p.type === PieceType.UNUSED;
    const table = normal ? mergeable : reserved;
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
      byteIds[byte] = id;
      byteOf[id] = byte;
    }
  }
  if (unkId < 0) throw unsupported("no <unk> piece", "the model file is broken", "pieces");
  if (proto.trainer.byteFallback && byteIds.includes(-1)) {
    throw unsupported(
      "byte fallback is on but some <0xNN> pieces are missing",
      "the model file is broken",
      "trainer_spec.byte_fallback",
    );
  }
  return { pieceOf, types, scores, byteOf, byteIds, mergeable, reserved, unkId, userDefined };
}
