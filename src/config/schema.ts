// The one source of truth for what crosses a boundary: the run config a person writes,
// the plan the product hands the engine, the events the engine writes back and the control
// line it reads. Exported as JSON Schema under protocol/ (`lorakit protocol --write`); the
// engine validates plans against that export and a test fails when the export is stale.
import { z } from "zod";

const positiveInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();
const fraction = z.number().min(0).max(1);

export const PRECISIONS = ["auto", "bf16", "fp16", "fp32"] as const;
export const SCHEDULERS = ["cosine", "linear", "constant"] as const;
export const SHARD_MODES = ["none", "fsdp"] as const;
export const DATA_FORMATS = ["auto", "alpaca", "messages", "sharegpt", "conversations"] as const;
export const TEMPLATES = ["auto", "chatglm3", "chatml", "llama3", "deepseek", "jinja"] as const;

// ---------------------------------------------------------------- run config (run.yaml)

export const DataConfig = z
  .strictObject({
    /** Training data: a JSON or JSONL file, or several. Relative paths resolve against the config file. */
    train: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
    /** Held-out data. When absent, `eval_split` of the training samples is held out. */
    eval: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
    /** Share of training samples held out for evaluation when no `eval` file is given. */
    eval_split: z.number().min(0).max(0.5).default(0.05),
    format: z.enum(DATA_FORMATS).default("auto"),
    /** Chat template: `auto` = the checkpoint's own (`chat_template` in tokenizer_config.json), else the family's. */
    template: z.enum(TEMPLATES).default("auto"),
    /** System prompt for samples that carry none (alpaca's huanhuan.json shape has none). */
    system: z.string().optional(),
    /** Cap on the whole sample (prompt + response), in tokens. */
    max_length: positiveInt.default(512),
    /** Skip malformed lines instead of stopping; every skip is counted and reported. */
    skip_bad_lines: z.boolean().default(false),
    /** Train only the last assistant turn of multi-turn samples. */
    mask_history: z.boolean().default(false),
  })
  .describe("Where the samples come from and how they are cut.");

export const LoraConfig = z.strictObject({
  r: positiveInt.default(8),
  alpha: z.number().positive().default(32),
  dropout: z.number().min(0).max(0.9).default(0.1),
  /** Module names to adapt; the model family's set when absent. */
  targets: z.array(z.string().min(1)).min(1).optional(),
});

const TrainFields = z.strictObject({
  epochs: z.number().positive().default(3),
  /** Stop after this many optimizer steps (overrides epochs when smaller). */
  max_steps: positiveInt.optional(),
  batch_size: positiveInt.default(4),
  grad_accum: positiveInt.default(2),
  /** Pack whole samples (in file order) into rows of at most this many tokens, one row a micro-batch in place of
   * batch_size samples (which still sizes eval batches); the rows are shuffled each epoch. Rows of 8k–16k tokens
   * keep the GPU busy; padding-free on the fast path (ChatGLM3 on CUDA), padded to the row's longest sample
   * elsewhere. Unset: batch_size samples a micro-batch. */
  pack_tokens: positiveInt.optional(),
  /** Learning rate; the model family's default when absent. */
  lr: z.number().positive().max(1).optional(),
  scheduler: z.enum(SCHEDULERS).default("cosine"),
  warmup_ratio: fraction.default(0.03),
  weight_decay: z.number().min(0).default(0),
  max_grad_norm: z.number().positive().default(1.0),
  seed: nonNegInt.default(42),
  precision: z.enum(PRECISIONS).default("auto"),
  /** true: every layer recomputed in backward. "low_memory" (ChatGLM3's fast path on CUDA): also the MLP in
   * 1,024-token chunks, the loss in 512-row chunks and the frozen token table in host memory — one 8,192-token
   * ChatGLM3-6B sample within 14 GiB; elsewhere the same as true. */
  gradient_checkpointing: z.union([z.boolean(), z.literal("low_memory")]).default(false),
  log_every: positiveInt.default(10),
  /** Evaluate every N optimizer steps; 0 = at the end of each epoch only. */
  eval_every: nonNegInt.default(0),
  /** Save a checkpoint every N optimizer steps; 0 = at the end of each epoch only. */
  save_every: nonNegInt.default(0),
  keep_checkpoints: positiveInt.default(2),
  /** Early stopping: stop when the eval loss has not improved for this many evaluations (0 = never);
   * the adapter written is then the best eval checkpoint. */
  patience: nonNegInt.default(0),
  device: z.enum(["auto", "cpu", "cuda"]).default("auto"),
  /** Processes (GPUs) to train on: more than 1 launches data-parallel training through torchrun. */
  devices: positiveInt.default(1),
  /** With devices > 1: "fsdp" splits the base over the devices (FSDP2) instead of copying it to each, for a
   * base that does not fit one device; "none" copies it. */
  shard: z.enum(SHARD_MODES).default("none"),
  /** The engine's fast path (packed rows without padding, fused loss and LoRA; families built natively, i.e.
   * ChatGLM3): "auto" takes it on CUDA; true takes it on any device (on the CPU attention falls back to SDPA
   * with a block mask); false never. Families built through transformers have none: true changes nothing. */
  fast_path: z.union([z.literal("auto"), z.boolean()]).default("auto"),
});

/** The train section: its fields, and the checks across them. */
export const TrainConfig = TrainFields.superRefine((t, ctx) => {
  if (t.shard === "fsdp" && t.devices < 2) {
    ctx.addIssue({
      code: "custom",
      path: ["shard"],
      message: "fsdp shards the base over several devices: set train.devices to 2 or more, or shard to none",
    });
  }
});

export const SamplesConfig = z.strictObject({
  /** Held-out prompts to generate from, before and after training. */
  count: nonNegInt.default(4),
  /** Extra prompts (user messages) to always sample. */
  prompts: z.array(z.string().min(1)).default([]),
  max_new_tokens: positiveInt.default(128),
});

export const RunConfig = z.strictObject({
  /** Run name: `runs/<name>/`. Defaults to the config file's name. */
  name: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, "letters, digits, '.', '_' and '-' only")
    .optional(),
  /** A local checkpoint folder (config.json + weights + tokenizer). Never fetched from a hub. */
  model: z.string().min(1),
  /** Where runs are written, relative to the config file. */
  output_dir: z.string().default("runs"),
  data: DataConfig,
  lora: LoraConfig.default(LoraConfig.parse({})),
  train: TrainConfig.default(TrainConfig.parse({})),
  samples: SamplesConfig.default(SamplesConfig.parse({})),
});
export type RunConfig = z.infer<typeof RunConfig>;
export type RunConfigInput = z.input<typeof RunConfig>;

// ---------------------------------------------------------------- plan (product → engine)

export const PreparedRef = z.strictObject({
  /** `prepared/<hash>/`: tokens.safetensors (input_ids, labels int32; offsets int64) + manifest.json. */
  dir: z.string(),
  samples: nonNegInt,
  tokens: nonNegInt,
});

export const PlanSample = z.strictObject({
  /** Stable index in the held-out set (or -1 for a prompt from the config). */
  index: z.number().int(),
  prompt_ids: z.array(nonNegInt).min(1),
});

export const RESOLVED_PRECISIONS = ["bf16", "fp16", "fp32"] as const;
export const DEVICES = ["cpu", "cuda"] as const;

/** The train section of a plan: the run config's settings the engine uses as they are, and the values the
 * product resolved for this machine and this data (the engine derives none of them again). */
const PlanTrain = TrainFields.pick({
  epochs: true,
  batch_size: true,
  grad_accum: true,
  pack_tokens: true,
  scheduler: true,
  weight_decay: true,
  max_grad_norm: true,
  seed: true,
  gradient_checkpointing: true,
  log_every: true,
  eval_every: true,
  save_every: true,
  keep_checkpoints: true,
  patience: true,
  devices: true,
}).extend({
  /** Optimizer steps of the whole run (max_steps applied). */
  total_steps: positiveInt,
  /** Optimizer steps of one epoch: micro-batches (rows with pack_tokens) per device / grad_accum, rounded up. */
  steps_per_epoch: positiveInt,
  lr: z.number().positive(),
  warmup_steps: nonNegInt,
  precision: z.enum(RESOLVED_PRECISIONS),
  device: z.enum(DEVICES),
  shard: z.enum(SHARD_MODES),
  /** Whether the engine trains through its fast path (packed rows built directly, fused loss and LoRA). */
  fast_path: z.boolean(),
});

export const PlanProfile = z.strictObject({
  /** Where torch.profiler's tables go (one per rank). */
  dir: z.string(),
  /** The first optimizer step profiled (1-based) and how many. */
  first_step: positiveInt,
  steps: positiveInt,
});

/** Plans carry the version of this schema; the engine refuses any other. */
export const PLAN_VERSION = 2;

export const Plan = z.strictObject({
  version: z.literal(PLAN_VERSION),
  run_dir: z.string(),
  model: z.strictObject({
    path: z.string(),
    family: z.string(),
    model_type: z.string(),
    vocab_size: positiveInt,
    /** Decoder layers, from config.json through the family's layer keys. */
    layers: positiveInt,
  }),
  data: z.strictObject({
    train: PreparedRef.extend({
      /** With train.pack_tokens: `rows-<pack_tokens>.safetensors` beside the tokens, `starts` (int64, rows + 1
       * sample indices in file order: row i holds samples starts[i] … starts[i+1] - 1); null without. */
      rows: z.string().nullable(),
    }),
    eval: PreparedRef.nullable(),
    pad_id: nonNegInt,
  }),
  lora: LoraConfig.pick({ r: true, alpha: true, dropout: true }).extend({
    targets: z.array(z.string()).min(1),
  }),
  train: PlanTrain,
  samples: SamplesConfig.pick({ max_new_tokens: true }).extend({
    items: z.array(PlanSample),
    stop_ids: z.array(nonNegInt).min(1),
    /** Generate from the base model before training, as well as after. */
    before: z.boolean(),
  }),
  /** Continue from the newest complete checkpoint under run_dir/checkpoints. */
  resume: z.boolean(),
  /** Files written next to the adapter, name → text: the template and special tokens used. */
  adapter_extras: z.record(z.string(), z.string()),
  /** Files copied next to the adapter, name → source path: the base's tokenizer files, so that a tokenizer
   * loads from the adapter folder. */
  adapter_files: z.record(z.string(), z.string()),
  /** torch.profiler over a few optimizer steps (`LORAKIT_PROFILE`), or null. */
  profile: PlanProfile.nullable(),
});
export type Plan = z.infer<typeof Plan>;

// ---------------------------------------------------------------- events (engine → product, JSON Lines)

export const Severity = z.enum(["error", "warning", "info"]);

export const FindingEvent = z.strictObject({
  type: z.literal("finding"),
  code: z.string().regex(/^[A-Z][A-Z0-9_]+$/),
  severity: Severity,
  title: z.string(),
  evidence: z.record(z.string(), z.unknown()),
  fix: z.string(),
});

export const Event = z.discriminatedUnion("type", [
  z.strictObject({
    type: z.literal("start"),
    device: z.string(),
    device_name: z.string(),
    dtype: z.string(),
    total_steps: positiveInt,
    start_step: nonNegInt,
    trainable_params: nonNegInt,
    total_params: nonNegInt,
    lora_modules: nonNegInt,
  }),
  z.strictObject({
    type: z.literal("step"),
    step: positiveInt,
    total_steps: positiveInt,
    epoch: z.number().nonnegative(),
    loss: z.number().nullable(), // null when not finite
    lr: z.number(),
    grad_norm: z.number().nullable(),
    tokens: nonNegInt, // trained (label) tokens in this optimizer step
    tokens_per_s: z.number().nonnegative(), // real (non-padding) input tokens per second
    elapsed_s: z.number().nonnegative(),
    memory_bytes: nonNegInt.nullable(), // peak: CUDA memory allocated (GPU), resident set (CPU); null: not measured
  }),
  z.strictObject({
    type: z.literal("eval"),
    step: nonNegInt,
    loss: z.number().nullable(),
    tokens: nonNegInt,
  }),
  z.strictObject({
    type: z.literal("sample"),
    phase: z.enum(["before", "after"]),
    index: z.number().int(),
    output_ids: z.array(nonNegInt),
    stopped: z.boolean(), // ended on a stop token rather than max_new_tokens
  }),
  z.strictObject({
    type: z.literal("checkpoint"),
    step: nonNegInt,
    path: z.string(),
  }),
  FindingEvent,
  z.strictObject({
    type: z.literal("log"),
    level: z.enum(["debug", "info", "warning"]),
    message: z.string(),
  }),
  z.strictObject({
    type: z.literal("done"),
    step: nonNegInt,
    adapter_dir: z.string(),
    stopped_early: z.boolean(),
    train_s: z.number().nonnegative(),
  }),
  z.strictObject({
    type: z.literal("error"),
    code: z.string(),
    message: z.string(),
    hint: z.string(),
    traceback: z.string().optional(),
  }),
]);
export type Event = z.infer<typeof Event>;
export type EventOf<T extends Event["type"]> = Extract<Event, { type: T }>;

// ---------------------------------------------------------------- control (product → engine stdin)

/** The one control line: save a checkpoint after the step in progress and exit cleanly (Ctrl-C). */
export const Control = z.strictObject({ type: z.literal("stop") });
export type Control = z.infer<typeof Control>;

/** Everything exported under protocol/, by file name. */
export const PROTOCOL = {
  "run-config": RunConfig,
  plan: Plan,
  event: Event,
  control: Control,
} as const;
