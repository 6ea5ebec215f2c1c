// Config checks, before anything heavy: the learning rate against rank, alpha, batch and dataset size;
// precision against the hardware; LoRA targets against the family's module names; too few optimizer steps;
// an empty eval split. Also a rough count of the data, for these checks, until prepared-data stats exist.
import { readFileSync } from "node:fs";
import type { LoadedConfig } from "../config/load.js";
import type { RunConfig } from "../config/schema.js";
import { longSamples, type SplitManifest } from "../data/index.js";
import { nearest } from "../errors.js";
import { type Finding, makeFinding } from "../findings/index.js";
import { FAMILIES, type Family } from "../models/families.js";
import { plannedSteps } from "../plan/index.js";
import type { Hardware } from "./env.js";

/** Sample and token counts of the run's data: exact from prepared data, else estimated from the files. */
export interface DatasetFacts {
  trainSamples: number;
  evalSamples: number;
  /** Tokens of the training split (one epoch). */
  trainTokens: number;
  /** Tokens of each training sample, in order (prepared data; estimated from the files only with
   * train.pack_tokens, whose rows need them). The memory estimate finds the largest micro-batch from them. */
  trainLengths?: readonly number[];
  /** Tokens that carry a loss in the training split (prepared data). */
  trainTrainedTokens?: number;
  /** Where each training sample came from (prepared data's manifest). */
  trainOrigins?: SplitManifest["origins"];
  source: "prepared" | "estimated";
  /** How the numbers were obtained. */
  basis: string;
}

export const LR_HIGH = 1e-3;
export const LR_VERY_HIGH = 5e-3;
export const LR_LOW = 1e-5;
export const SMALL_DATASET = 1000;
export const MIN_STEPS = 20;

// ---------------------------------------------------------------- a rough count of the data

function textOf(v: unknown, acc: { cjk: number; other: number }): void {
  if (typeof v === "string") {
    for (const ch of v) {
      const cp = ch.codePointAt(0) ?? 0;
      if ((cp >= 0x3000 && cp <= 0x9fff) || (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0xac00 && cp <= 0xd7af)) acc.cjk++;
      else acc.other++;
    }
  } else if (Array.isArray(v)) for (const x of v) textOf(x, acc);
  else if (v && typeof v === "object") for (const x of Object.values(v)) textOf(x, acc);
}

/** Tokens of one record's text, roughly: CJK characters ≈ 0.75 token each, other text ≈ 3.5 characters a token. */
function roughTokens(record: unknown): number {
  const acc = { cjk: 0, other: 0 };
  textOf(record, acc);
  return Math.ceil(acc.cjk * 0.75 + acc.other / 3.5) + 8; // + template tokens
}

function readRecords(file: string): unknown[] {
  const text = readFileSync(file, "utf8").replace(/^\uFEFF/, "");
  if (text.trimStart().startsWith("[")) {
    const v = JSON.parse(text) as unknown;
    return Array.isArray(v) ? v : [v];
  }
  const out: unknown[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      out.push(line); // malformed lines are the data stage's to report; count them as text
    }
  }
  return out;
}

/**
 * Sample and token counts from the data files themselves (JSON array or JSON lines), before any
 * tokenization: tokens from character counts, each sample capped at max_length. The held-out share follows
 * src/data's split (eval_split of the records, at least one when there are two or more).
 */
export function estimateDataset(loaded: LoadedConfig): DatasetFacts {
  const c = loaded.config;
  const tokensOf = (records: unknown[]) =>
    records.reduce<number>((s, r) => s + Math.min(c.data.max_length, roughTokens(r)), 0);
  const train = loaded.trainFiles.flatMap(readRecords);
  const evalRecords = loaded.evalFiles.flatMap(readRecords);
  let trainSamples = train.length;
  let evalSamples = evalRecords.length;
  let trainTokens = tokensOf(train);
  if (loaded.evalFiles.length === 0 && c.data.eval_split > 0 && train.length >= 2) {
    evalSamples = Math.max(1, Math.round(train.length * c.data.eval_split));
    trainSamples = train.length - evalSamples;
    trainTokens = Math.round((trainTokens * trainSamples) / train.length);
  }
  const lengths =
    c.train.pack_tokens !== undefined
      ? { trainLengths: train.slice(0, trainSamples).map((r) => Math.min(c.data.max_length, roughTokens(r))) }
      : {};
  return {
    trainSamples,
    evalSamples,
    trainTokens,
    ...lengths,
    source: "estimated",
    basis:
      "records counted in the data files; tokens ≈ CJK characters × 0.75 + other characters / 3.5, capped at max_length (prepared data gives exact counts)",
  };
}

// ---------------------------------------------------------------- checks

/** Names other families give the same projections, mapped to this family's (for the suggestion). */
const EQUIVALENT: Record<string, Record<string, string[]>> = {
  chatglm: {
    q_proj: ["query_key_value"],
    k_proj: ["query_key_value"],
    v_proj: ["query_key_value"],
    o_proj: ["dense"],
    gate_proj: ["dense_h_to_4h"],
    up_proj: ["dense_h_to_4h"],
    gate_up_proj: ["dense_h_to_4h"],
    down_proj: ["dense_4h_to_h"],
    lm_head: ["output_layer"],
  },
  other: {
    query_key_value: ["q_proj", "k_proj", "v_proj"],
    dense: ["o_proj"],
    dense_h_to_4h: ["gate_proj", "up_proj", "gate_up_proj"],
    dense_4h_to_h: ["down_proj"],
    output_layer: ["lm_head"],
  },
};

function outputName(family: Family): string {
  return family.builder === "native" ? "output_layer" : "lm_head";
}

export function targetFindings(targets: readonly string[], family: Family): Finding[] {
  const known = new Set([...family.allLinear, ...family.targets, outputName(family)]);
  const others = new Set(FAMILIES.filter((f) => f !== family).flatMap((f) => [...f.allLinear, outputName(f)]));
  const table = EQUIVALENT[family.name === "chatglm" ? "chatglm" : "other"] ?? {};
  const foreign: string[] = [];
  const unknown: string[] = [];
  const suggestion = new Set<string>();
  for (const t of targets) {
    const leaf = t.split(".").pop() ?? t;
    if (known.has(leaf)) continue;
    if (others.has(leaf)) {
      foreign.push(t);
      for (const s of table[leaf] ?? []) if (known.has(s)) suggestion.add(s);
    } else unknown.push(t);
  }
  const out: Finding[] = [];
  if (foreign.length > 0) {
    const kept = targets.filter((t) => known.has(t.split(".").pop() ?? t));
    const sugg = [...new Set([...kept, ...suggestion])];
    out.push(
      makeFinding("CONFIG_TARGETS_WRONG_FAMILY", {
        targets: foreign,
        family: family.name,
        suggestion: sugg.length > 0 ? sugg : family.targets,
        family_targets: family.targets,
        family_linear: family.allLinear,
      }),
    );
  }
  if (unknown.length > 0) {
    const guesses = Object.fromEntries(unknown.map((t) => [t, nearest(t.split(".").pop() ?? t, [...known]) ?? null]));
    out.push(
      makeFinding("CONFIG_TARGETS_UNKNOWN", {
        targets: unknown,
        family: family.name,
        known: [...known],
        did_you_mean: guesses,
      }),
    );
  }
  return out;
}

export function lrFindings(c: RunConfig, family: Family, data: DatasetFacts | null): Finding[] {
  const lr = c.train.lr ?? family.lr;
  const { r, alpha } = c.lora;
  const scale = alpha / r;
  const steps = data ? plannedSteps(data, c.train) : null;
  const base = {
    lr,
    lr_source: c.train.lr !== undefined ? "train.lr" : `the ${family.name} family's default`,
    r,
    alpha,
    scale,
    effective_step: Number((lr * scale).toPrecision(3)),
    effective_batch: c.train.batch_size * c.train.grad_accum,
    samples: data?.trainSamples ?? null,
    steps,
  };
  if ((lr > LR_HIGH && r <= 16 && scale >= 2) || lr > LR_VERY_HIGH) {
    return [
      makeFinding("CONFIG_LR_HIGH", {
        ...base,
        reasoning: `LoRA scales its update by alpha/r = ${scale}, so each step moves the adapted layers by about lr × alpha/r = ${(lr * scale).toPrecision(2)}; above lr ${LR_HIGH} at r ≤ 16 with alpha/r ≥ 2 losses spike and turn NaN within tens of steps (THUDM/ChatGLM2-6B#519). LoRA recipes use 5e-5 to 2e-4.`,
      }),
    ];
  }
  if (lr < LR_LOW) {
    return [
      makeFinding("CONFIG_LR_LOW", {
        ...base,
        steps: steps ?? "?",
        reasoning: `LoRA's B starts at zero; at lr ${lr} over ${steps ?? "the planned"} steps the adapter moves by at most about lr × steps = ${steps ? (lr * steps).toPrecision(2) : "?"} per weight, too little to change the output (beyondguo/LLM-Tuning#14). The seed recipe starts at 5e-5 for ChatGLM3; small datasets often need 1e-4 or more.`,
      }),
    ];
  }
  if (data && data.trainSamples < SMALL_DATASET && lr < 1e-4) {
    return [
      makeFinding("CONFIG_LR_SMALL_DATA", {
        ...base,
        reasoning: `${data.trainSamples} samples give ${steps} steps: with few steps, lr below 1e-4 often leaves the adapter near zero.`,
      }),
    ];
  }
  return [];
}

export function precisionFindings(c: RunConfig, hw: Hardware | null, family?: Family): Finding[] {
  const p = c.train.precision;
  if (!hw) return [];
  if (p === "fp32" && hw.device === "cuda" && family?.builder === "native") {
    // The fast path's flash attention takes fp16/bf16: the engine attends through SDPA instead (and says so).
    return [makeFinding("CONFIG_FP32_ON_GPU", { precision: p, device: hw.name, attention: "sdpa" })];
  }
  if (hw.device === "cpu") {
    return p === "fp16" || p === "bf16" ? [makeFinding("CONFIG_HALF_ON_CPU", { precision: p, device: hw.name })] : [];
  }
  const capability = hw.capability ? hw.capability.join(".") : "?";
  if (p === "fp16" && hw.bf16 === true) {
    return [makeFinding("CONFIG_PREFER_BF16", { precision: p, device: hw.name, capability })];
  }
  if (p === "bf16" && hw.bf16 === false) {
    return [makeFinding("CONFIG_BF16_UNSUPPORTED", { precision: p, device: hw.name, capability })];
  }
  return [];
}

export function stepsAndEvalFindings(loaded: LoadedConfig, data: DatasetFacts): Finding[] {
  const c = loaded.config;
  const out: Finding[] = [];
  const steps = plannedSteps(data, c.train);
  if (steps < MIN_STEPS) {
    out.push(
      makeFinding("CONFIG_STEPS_FEW", {
        steps,
        samples: data.trainSamples,
        batch_size: c.train.batch_size,
        grad_accum: c.train.grad_accum,
        epochs: c.train.epochs,
        max_steps: c.train.max_steps ?? null,
        minimum: MIN_STEPS,
        counts: data.source,
      }),
    );
  }
  if (data.evalSamples === 0) {
    const reason =
      loaded.evalFiles.length > 0
        ? "the data.eval files hold no samples"
        : c.data.eval_split === 0
          ? "data.eval_split is 0 and no data.eval is given"
          : `${data.trainSamples} samples are too few to hold any out`;
    out.push(makeFinding("CONFIG_EVAL_EMPTY", { reason, eval_split: c.data.eval_split, eval_files: loaded.evalFiles }));
  }
  return out;
}

/** train.pack_tokens shorter than a training sample (prepared data only: estimated lengths are too rough). */
export function packFindings(c: RunConfig, data: DatasetFacts): Finding[] {
  const pack = c.train.pack_tokens;
  if (pack === undefined || data.source !== "prepared" || !data.trainLengths) return [];
  const long = longSamples(data.trainLengths, pack);
  if (!long) return [];
  const o = data.trainOrigins;
  const at = o?.samples[long.sample];
  return [
    makeFinding("CONFIG_PACK_TOKENS_SHORT", {
      ...long,
      origin: at && o ? `${o.files[at[0]] ?? "?"}:${at[1]}` : "origin unknown",
      pack_tokens: pack,
      max_length: c.data.max_length,
    }),
  ];
}

export interface ConfigCheckInput {
  loaded: LoadedConfig;
  family: Family;
  /** Null when the data could not be counted. */
  data: DatasetFacts | null;
  dataError?: string;
  hardware: Hardware | null;
}

/** Every config check, all problems at once. */
export function configFindings(inp: ConfigCheckInput): Finding[] {
  const c = inp.loaded.config;
  const out: Finding[] = [];
  out.push(...lrFindings(c, inp.family, inp.data));
  out.push(...precisionFindings(c, inp.hardware, inp.family));
  out.push(...targetFindings(c.lora.targets ?? inp.family.targets, inp.family));
  if (inp.data) out.push(...stepsAndEvalFindings(inp.loaded, inp.data), ...packFindings(c, inp.data));
  else out.push(makeFinding("CONFIG_DATA_UNCOUNTED", { error: inp.dataError ?? "unknown" }));
  return out;
}
