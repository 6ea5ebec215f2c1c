// Every finding code, in one table: the stage files' codes in stage order (the README lists them so).
import type { CodeSpec } from "../spec.js";
import { CONFIG_CODES } from "./config.js";
import { DATA_CODES } from "./data.js";
import { ENV_CODES } from "./env.js";
import { MODEL_CODES } from "./model.js";
import { TRAINING_CODES } from "./training.js";

export const CODES = {
  ...ENV_CODES,
  ...CONFIG_CODES,
  ...DATA_CODES,
  ...MODEL_CODES,
  ...TRAINING_CODES,
} as const satisfies Record<string, CodeSpec>;

export type Code = keyof typeof CODES;
