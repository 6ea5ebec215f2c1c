// The plan the engine trains by: every value it needs, decided once, here — the step counts, the precision,
// the device, sharding, the fast path, the rows of train.pack_tokens and the profiler's window. The doctor
// counts steps and resolves precision and the fast path with these same functions, so what it checks is what
// trains; the engine reads the plan and derives none of it again.
import path from "node:path";
import type { LoadedConfig } from "../config/load.js";
import { PLAN_VERSION, type Plan, type RunConfig } from "../config/schema.js";
import { packRows } from "../data/index.js";
import { LorakitError } from "../errors.js";
import type { ModelInfo } from "../models/checkpoint.js";
import { type Family, hasFastPath } from "../models/families.js";

export type Precision = Plan["train"]["precision"];
export type Device = Plan["train"]["device"];
type TrainConfig = RunConfig["train"];

// ---------------------------------------------------------------- steps

/** What the step count depends on: samples, tokens, and each sample's length when rows are packed. */
export interface TrainCounts {
  trainSamples: number;
  trainTokens: number;
  /** Tokens of each training sample in file order; without them, rows are at least tokens / pack_tokens. */
  trainLengths?: readonly number[] | undefined;
}

export interface StepCounts {
  /** Optimizer steps of one epoch. */
  perEpoch: number;
  /** Optimizer steps of the run: epochs × perEpoch rounded up, capped at max_steps. */
  total: number;
}

/** The settings the step count depends on. */
export type StepSettings = Pick<TrainConfig, "pack_tokens" | "batch_size" | "devices" | "grad_accum" | "epochs"> & {
  max_steps?: number | undefined;
};

/** A micro-batch is batch_size samples per device, or with train.pack_tokens one row per device (the rows of
 * src/data/pack.ts); an optimizer step is grad_accum micro-batches. */
export function stepCounts(data: TrainCounts, c: StepSettings): StepCounts {
  const pack = c.pack_tokens;
  const micro =
    pack === undefined
      ? Math.ceil(data.trainSamples / (c.batch_size * c.devices))
      : Math.ceil(
          (data.trainLengths ? packRows(data.trainLengths, pack).length : Math.ceil(data.trainTokens / pack)) /
            c.devices,
        );
  const perEpoch = Math.max(1, Math.ceil(micro / c.grad_accum));
  const total = Math.max(1, Math.ceil(perEpoch * c.epochs));
  return { perEpoch, total: c.max_steps !== undefined ? Math.min(total, c.max_steps) : total };
}

/** The run's optimizer steps (the plan's total_steps). */
export function plannedSteps(data: TrainCounts, c: StepSettings): number {
  return stepCounts(data, c).total;
}

// ---------------------------------------------------------------- this machine

/** What the environment probe found on the device a run trains on (the doctor's Hardware is one). */
export interface DeviceFacts {
  device: Device;
  /** Whether the GPU computes in bf16 natively; null on the CPU or when unknown. */
  bf16: boolean | null;
}

/** `train.device`: cpu and cuda as asked (the engine refuses cuda without a GPU); auto, what the probe found. */
export function resolveDevice(want: TrainConfig["device"], found: DeviceFacts | null): Device {
  return want === "auto" ? (found?.device ?? "cpu") : want;
}

/** `train.precision`: auto is fp32 on the CPU, bf16 on a GPU that has it, fp16 (with fp32 adapters and loss
 * scaling) on one that has not. */
export function resolvePrecision(precision: TrainConfig["precision"], found: DeviceFacts): Precision {
  if (precision !== "auto") return precision;
  if (found.device !== "cuda") return "fp32";
  return found.bf16 === false ? "fp16" : "bf16";
}

/** `train.fast_path` with `LORAKIT_FAST` (0 or 1) standing in for it where the config says auto. */
export function fastPathSetting(c: TrainConfig, env: NodeJS.ProcessEnv): TrainConfig["fast_path"] {
  if (c.fast_path !== "auto") return c.fast_path;
  return env.LORAKIT_FAST === "0" ? false : env.LORAKIT_FAST === "1" ? true : "auto";
}

/** Whether the engine trains through its fast path: only a family that has one; auto takes it on CUDA. */
export function resolveFastPath(setting: TrainConfig["fast_path"], family: Family, device: Device): boolean {
  if (!hasFastPath(family)) return false;
  return setting === "auto" ? device === "cuda" : setting;
}

// ---------------------------------------------------------------- the profiler

export const PROFILE_STEPS_DEFAULT = "11:3";

/** `LORAKIT_PROFILE=<dir>` (and `LORAKIT_PROFILE_STEPS=<first>:<count>`): torch.profiler over those steps. */
export function profileFromEnv(env: NodeJS.ProcessEnv): Plan["profile"] {
  const dir = env.LORAKIT_PROFILE;
  if (!dir) return null;
  const steps = env.LORAKIT_PROFILE_STEPS || PROFILE_STEPS_DEFAULT;
  const m = /^(\d+):(\d+)$/.exec(steps.trim());
  const [first, count] = m ? [Number(m[1]), Number(m[2])] : [0, 0];
  if (first < 1 || count < 1) {
    throw new LorakitError(
      "BAD_ENVIRONMENT",
      `LORAKIT_PROFILE_STEPS=${JSON.stringify(steps)} is not <first step>:<count> with both ≥ 1`,
      { hint: "Set it like LORAKIT_PROFILE_STEPS=11:3 (steps 11, 12 and 13), or unset it." },
    );
  }
  return { dir: path.resolve(dir), first_step: first, steps: count };
}

// ---------------------------------------------------------------- the plan

/** The prepared data a plan trains on (src/train/prepare-run.ts makes it). */
export interface PlanData {
  train: { dir: string; samples: number; tokens: number };
  eval: { dir: string; samples: number; tokens: number } | null;
  trainLengths: readonly number[] | null;
  /** The rows file of train.pack_tokens (src/data/pack.ts writeRows), or null. */
  rows: string | null;
  heldOut: readonly { index: number; promptIds: number[] }[];
  stopIds: number[];
  padId: number;
  adapterExtras: Record<string, string>;
  /** Files copied beside the adapter, name → source path (the base's tokenizer files). */
  adapterFiles: Record<string, string>;
}

export interface PlanOptions {
  runDir: string;
  resume: boolean;
  /** The device the probe found, or null when it did not run. */
  found: DeviceFacts | null;
  /** LORAKIT_FAST and LORAKIT_PROFILE(_STEPS) are read from here. */
  env: NodeJS.ProcessEnv;
}

const preparedRef = (s: PlanData["train"]) => ({ dir: s.dir, samples: s.samples, tokens: s.tokens });

export function buildPlan(loaded: LoadedConfig, model: ModelInfo, data: PlanData, o: PlanOptions): Plan {
  const c = loaded.config;
  const t = c.train;
  const steps = stepCounts(
    { trainSamples: data.train.samples, trainTokens: data.train.tokens, trainLengths: data.trainLengths ?? undefined },
    t,
  );
  const device = resolveDevice(t.device, o.found);
  return {
    version: PLAN_VERSION,
    run_dir: o.runDir,
    model: {
      path: model.dir,
      family: model.family.name,
      model_type: model.modelType,
      vocab_size: model.vocabSize,
      layers: model.layers,
    },
    data: {
      train: { ...preparedRef(data.train), rows: t.pack_tokens !== undefined ? data.rows : null },
      eval: data.eval ? preparedRef(data.eval) : null,
      pad_id: data.padId,
    },
    lora: {
      r: c.lora.r,
      alpha: c.lora.alpha,
      dropout: c.lora.dropout,
      targets: c.lora.targets ?? model.family.targets,
    },
    train: {
      total_steps: steps.total,
      steps_per_epoch: steps.perEpoch,
      epochs: t.epochs,
      batch_size: t.batch_size,
      grad_accum: t.grad_accum,
      ...(t.pack_tokens !== undefined ? { pack_tokens: t.pack_tokens } : {}),
      lr: t.lr ?? model.family.lr,
      scheduler: t.scheduler,
      warmup_steps: Math.round(t.warmup_ratio * steps.total),
      weight_decay: t.weight_decay,
      max_grad_norm: t.max_grad_norm,
      seed: t.seed,
      precision: resolvePrecision(t.precision, { device, bf16: o.found?.bf16 ?? null }),
      gradient_checkpointing: t.gradient_checkpointing,
      log_every: t.log_every,
      eval_every: t.eval_every,
      save_every: t.save_every,
      keep_checkpoints: t.keep_checkpoints,
      patience: t.patience,
      device,
      devices: t.devices,
      shard: t.shard,
      fast_path: resolveFastPath(fastPathSetting(t, o.env), model.family, device),
    },
    samples: {
      items: data.heldOut.map((s) => ({ index: s.index, prompt_ids: s.promptIds })),
      max_new_tokens: c.samples.max_new_tokens,
      stop_ids: data.stopIds,
      before: true,
    },
    resume: o.resume,
    adapter_extras: data.adapterExtras,
    adapter_files: data.adapterFiles,
    profile: profileFromEnv(o.env),
  };
}

/** The smoke run's plan: 2 optimizer steps of micro-batches of at most 2 samples (or single rows) on one
 * process, one sample of 4 tokens, a checkpoint each step; same model, data, precision and path. */
export function smokePlan(plan: Plan, runDir: string, data: TrainCounts): Plan {
  const micro = Math.min(plan.train.batch_size, 2);
  const train = { ...plan.train, epochs: 1, batch_size: micro, grad_accum: 1, devices: 1 };
  const perEpoch = stepCounts(data, train).perEpoch;
  return {
    ...plan,
    run_dir: runDir,
    train: {
      ...train,
      total_steps: 2,
      steps_per_epoch: perEpoch,
      warmup_steps: 0,
      eval_every: 0,
      save_every: 1,
      keep_checkpoints: 1,
      shard: "none",
    },
    data: { ...plan.data, eval: null },
    samples: { ...plan.samples, items: plan.samples.items.slice(0, 1), max_new_tokens: 4, before: false },
    resume: false,
    profile: null,
  };
}
