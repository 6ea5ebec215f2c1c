// A local checkpoint folder as lorakit sees it before loading any weights: config.json's model_type, the
// family that serves it, vocabulary rows and the layer count (counted here, once; the plan carries it).
import { readFileSync } from "node:fs";
import path from "node:path";
import { LorakitError } from "../errors.js";
import { type Family, familyFor, supportedModelTypes } from "./families.js";

/** The tokenizer files a base may have; those it has travel with the adapter, so a tokenizer loads from it. */
export const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer.model",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "vocab.json",
  "merges.txt",
  "added_tokens.json",
] as const;

export interface ModelInfo {
  dir: string;
  modelType: string;
  family: Family;
  vocabSize: number;
  layers: number;
  config: Record<string, unknown>;
}

/** Decoder layers: the first of the family's layer keys config.json has (0 when none). */
export function layerCount(config: Record<string, unknown>, family: Family): number {
  for (const k of family.layerKeys) {
    const v = config[k];
    if (typeof v === "number" && Number.isInteger(v) && v > 0) return v;
  }
  return 0;
}

export function readCheckpoint(dir: string): ModelInfo {
  const cfgPath = path.join(dir, "config.json");
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(readFileSync(cfgPath, "utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new LorakitError("MODEL_BAD_CONFIG", `cannot read ${cfgPath}: ${(e as Error).message}`, {
      where: { file: cfgPath },
      hint: "point `model` at a checkpoint folder with a valid config.json",
    });
  }
  const modelType = String(config.model_type ?? "");
  const family = familyFor(modelType);
  if (!family) {
    throw new LorakitError("MODEL_UNSUPPORTED", `model_type '${modelType}' is not supported`, {
      where: { file: cfgPath, key: "model_type" },
      hint: `supported: ${supportedModelTypes().join(", ")}`,
    });
  }
  const vocabSize = Number(config.padded_vocab_size ?? config.vocab_size ?? 0);
  return { dir, modelType, family, vocabSize, layers: layerCount(config, family), config };
}
