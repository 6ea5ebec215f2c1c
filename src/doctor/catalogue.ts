// Every code lorakit can answer with, in one list: the doctor's findings (CODES in finding.ts) and the
// errors that stop a command (ERRORS below: thrown as LorakitError in src/, or sent by the engine as its
// `error` event). The README's code tables are generated from this (`npm run protocol`); tests check that
// every code written in src/ or engine/lorakit_engine/ is here and that the README is current.
import { formatWhere, type LorakitError } from "../errors.js";
import { CODES, type Code, type CodeSpec, type Finding, STAGES, type Stage } from "./finding.js";

export interface ErrorSpec {
  stage: Stage;
  /** Where it is raised: lorakit itself (TypeScript), the engine, or both under the same name. */
  from: "lorakit" | "engine" | "both";
  when: string;
}

const e = (stage: Stage, from: ErrorSpec["from"], when: string): ErrorSpec => ({ stage, from, when });

/** Errors that stop a command. Codes are stable: renaming one is a breaking change (RENAMED lists them). */
export const ERRORS = {
  // ---------------------------------------------------------------- env
  PYTHON_NOT_FOUND: e("env", "lorakit", "the interpreter (`python3`, or `LORAKIT_PYTHON`) cannot be run"),
  PYTHON_ENV_INCOMPLETE: e(
    "env",
    "both",
    "the engine's interpreter lacks packages the engine needs; the message names exactly those, and the fix is one `pip install` of only them (torch never: it names the build to install instead)",
  ),
  PYTHON_ENV_OUTDATED: e(
    "env",
    "both",
    "a package (or Python) in the engine's interpreter is older than the oldest version the engine is tested with; the message gives the version seen and the one needed",
  ),
  PYTHON_ENV_FAILED: e("env", "lorakit", "building lorakit's own environment failed (the install log's tail is shown)"),
  PYTHON_ENV_LOCKED: e("env", "lorakit", "another lorakit process has been building the environment for 30 minutes"),
  PROTOCOL_MISSING: e(
    "env",
    "engine",
    "the engine cannot read `protocol/*.schema.json` (the engine runs outside a checkout)",
  ),
  NO_CUDA: e(
    "env",
    "engine",
    "`train.device: cuda` or `train.devices` > 1, but torch sees no (or too few) CUDA devices",
  ),
  DEVICES_MISMATCH: e(
    "env",
    "engine",
    "the plan's `train.devices` differs from the number of processes the engine runs as",
  ),
  BAD_ENVIRONMENT: e(
    "env",
    "lorakit",
    "a `LORAKIT_*` variable has a value lorakit cannot use (e.g. `LORAKIT_PROFILE_STEPS`)",
  ),
  DEMO_DOWNLOAD_FAILED: e("env", "lorakit", "`lorakit demo` could not download the model's wheel"),
  DEMO_CONVERT_FAILED: e("env", "lorakit", "`lorakit demo` could not convert the GGUF model"),
  // ---------------------------------------------------------------- config
  CLI_BAD_ARGS: e("config", "lorakit", "the command line is wrong (unknown option, missing argument); exit code 2"),
  CONFIG_NOT_FOUND: e("config", "lorakit", "the run config file does not exist"),
  CONFIG_BAD_YAML: e("config", "lorakit", "the run config is not valid YAML (with the line)"),
  CONFIG_UNKNOWN_KEY: e("config", "lorakit", "a key the schema does not know (with the nearest valid one)"),
  CONFIG_MISSING_KEY: e("config", "lorakit", "a required key is absent"),
  CONFIG_WRONG_TYPE: e("config", "lorakit", "a key has the wrong type"),
  CONFIG_BAD_VALUE: e("config", "lorakit", "a key has a value outside its allowed set or range"),
  CONFIG_MISSING_PATH: e("config", "lorakit", "`model` or a data file named in the config does not exist"),
  CONFIG_MODEL_NOT_CHECKPOINT: e("config", "lorakit", "`model` is a folder without `config.json`"),
  RUN_EXISTS: e(
    "config",
    "lorakit",
    "the run already has checkpoints or an adapter; `--resume`, `--fresh` or another name",
  ),
  RESUME_NOTHING: e("config", "lorakit", "`--resume` on a run without checkpoints"),
  SHARD_UNSUPPORTED: e(
    "config",
    "engine",
    "`train.shard: fsdp` with fp16, or on a model without a list of decoder layers",
  ),
  // ---------------------------------------------------------------- data
  DATA_NOT_FOUND: e("data", "lorakit", "a data file cannot be read"),
  DATA_BAD_ENCODING: e("data", "lorakit", "a data file is not UTF-8 (with the line of the first bad byte)"),
  DATA_BAD_JSON: e("data", "lorakit", "a malformed JSON line or array, or a file that is one object (line-numbered)"),
  DATA_EMPTY_FILE: e("data", "lorakit", "a data file holds no records"),
  DATA_EMPTY: e("data", "lorakit", "`lorakit tokenize --chat` was given a file without a conversation"),
  DATA_BAD_RECORD: e("data", "lorakit", "a record is not a JSON object"),
  DATA_UNKNOWN_FORMAT: e("data", "lorakit", "a record's keys match no supported format (with the nearest one)"),
  DATA_MIXED_FORMATS: e(
    "data",
    "lorakit",
    "a file mixes formats (alpaca, messages, conversations, …) from record to record",
  ),
  DATA_MISSING_FIELD: e("data", "lorakit", "a record lacks a field its format requires"),
  DATA_BAD_TYPE: e("data", "lorakit", "a field has the wrong type (a number where text belongs)"),
  DATA_BAD_ROLE: e("data", "lorakit", "a message has a role the format does not know"),
  DATA_BAD_KEY: e(
    "data",
    "lorakit",
    "a key sits where the format does not allow it (`tools` on a turn other than system)",
  ),
  DATA_EMPTY_PROMPT: e("data", "lorakit", "an alpaca record's `instruction` and `input` are both empty"),
  DATA_EMPTY_RESPONSE: e(
    "data",
    "lorakit",
    "an assistant answer is empty (with `data.skip_bad_lines: true` the record is skipped and counted in `DATA_BAD_LINES`)",
  ),
  DATA_NO_ASSISTANT: e("data", "lorakit", "a conversation has no assistant turn to train on"),
  DATA_UNSUPPORTED: e("data", "lorakit", "a record uses a feature lorakit does not support yet (OpenAI `tool_calls`)"),
  DATA_MORE: e("data", "lorakit", "more problems than are listed: the first ones are shown, this line counts the rest"),
  DATA_INVALID: e(
    "data",
    "both",
    "prepared data on disk is damaged or inconsistent (lorakit prepares it again when deleted)",
  ),
  DATA_VOCAB_MISMATCH: e("data", "engine", "prepared data holds a token id beyond the model's embedding rows"),
  TOKENIZER_NOT_FOUND: e("data", "lorakit", "the model folder has no `tokenizer.json` or `tokenizer.model`"),
  TOKENIZER_BAD_JSON: e("data", "lorakit", "`tokenizer.json` is not valid JSON or lacks its model section"),
  TOKENIZER_BAD_MODEL: e("data", "lorakit", "`tokenizer.model` is not a SentencePiece model (e.g. a tiktoken file)"),
  TOKENIZER_BAD_CONFIG: e("data", "lorakit", "`tokenizer_config.json`'s added tokens contradict the vocabulary"),
  TOKENIZER_UNSUPPORTED: e("data", "lorakit", "a tokenizer model or option lorakit does not implement"),
  TOKENIZER_BAD_ID: e("data", "lorakit", "a token id outside the vocabulary was asked for"),
  TEMPLATE_UNKNOWN: e("data", "lorakit", "no chat template: the checkpoint has none and its family is unknown"),
  TEMPLATE_MISSING: e("data", "lorakit", "`data.template: jinja` but the checkpoint has no `chat_template`"),
  TEMPLATE_PARSE: e("data", "lorakit", "the checkpoint's `chat_template` cannot be parsed"),
  TEMPLATE_RENDER: e("data", "lorakit", "the checkpoint's `chat_template` fails on a sample (role order, roles)"),
  TEMPLATE_SPAN: e("data", "lorakit", "the rendered `chat_template` does not show where an assistant message is"),
  TEMPLATE_TOKEN_MISSING: e(
    "data",
    "lorakit",
    "the template needs a special token (e.g. `<|user|>`) the tokenizer's vocabulary lacks: the tokenizer is not the family's",
  ),
  TEMPLATE_ROLE_UNSUPPORTED: e(
    "data",
    "lorakit",
    "the template has no such role (tool results in the deepseek template)",
  ),
  TEMPLATE_TOOLS_UNSUPPORTED: e(
    "data",
    "lorakit",
    "a built-in template that does not render tools was given tools or tool calls",
  ),
  // ---------------------------------------------------------------- model
  MODEL_BAD_CONFIG: e("model", "lorakit", "the checkpoint's `config.json` cannot be read"),
  MODEL_BAD_FILE: e("model", "lorakit", "a checkpoint file (`tokenizer_config.json`) is not valid JSON"),
  MODEL_UNSUPPORTED: e("model", "lorakit", "the checkpoint's `model_type` is not a supported family"),
  // ---------------------------------------------------------------- training
  USAGE: e("training", "engine", "the engine was started with a wrong command line"),
  PLAN_INVALID: e(
    "training",
    "engine",
    "the plan the engine was given is not valid JSON or breaks `protocol/plan.schema.json`",
  ),
  CUDA_OOM: e("training", "engine", "the GPU ran out of memory"),
  CHECKPOINT_MISMATCH: e(
    "training",
    "engine",
    "a checkpoint does not fit the run (other adapter tensors, another device count)",
  ),
  NO_CHECKPOINT: e("training", "engine", "the plan resumes but the run has no complete checkpoint"),
  RESUME_MISMATCH: e("training", "engine", "resuming with settings that differ from the checkpoint's"),
  INTERRUPTED: e(
    "training",
    "both",
    "Ctrl-C before training started (nothing was trained; once training runs, Ctrl-C saves a checkpoint); exit code 130",
  ),
  ENGINE_CRASH: e(
    "training",
    "both",
    "the engine failed in a way it has no code for, or exited without saying why (killed, out of host memory); the traceback's tail is shown",
  ),
  INTERNAL_ERROR: e("training", "lorakit", "a bug in lorakit (with `--json`, the stack trace is in the evidence)"),
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

/** Codes that were renamed, old → new (codes are stable API: a rename is listed here and in the README). */
export const RENAMED: Record<string, string> = {
  DATA_EMPTY_OUTPUTS: "DATA_EMPTY_RESPONSE",
  ENGINE_CRASHED: "ENGINE_CRASH",
  STOPPED: "INTERRUPTED",
  LORA_TARGETS_NOT_FOUND: "MODEL_TARGETS_NOT_FOUND",
  LORA_TARGETS_PARTLY_MATCHED: "MODEL_TARGETS_PARTIAL",
};

/** When each finding is raised, for the README (a severity note where it depends on the config). */
const WHEN: Record<Code, { when: string; severity?: string }> = {
  ENV_PROBE_FAILED: { when: "the engine's probe could not run (the interpreter cannot start it, a crash)" },
  ENV_TORCH_MISSING: { when: "`import torch` fails in the engine's interpreter" },
  ENV_NO_CUDA: {
    severity: "info (error with `train.device: cuda`)",
    when: "neither NVML nor torch.cuda finds a GPU: no driver library, a CPU build of torch, a container without the NVIDIA runtime",
  },
  ENV_NVML_FAILED: {
    when: "torch.cuda works but NVML cannot be loaded or initialised (driver library missing from the container, driver/kernel mismatch after an upgrade: `Can't initialize NVML`)",
  },
  ENV_CUDA_INIT_FAILED: {
    severity: "warning (error with `device: cuda`)",
    when: "the driver library is there but CUDA is unusable: `nvmlInit_v2` fails (e.g. 18, `LIB_RM_VERSION_MISMATCH`), or the driver's CUDA version is older than torch's build",
  },
  ENV_TORCH_CPU_BUILD: {
    severity: "warning (error with `device: cuda`)",
    when: "the driver lists GPUs but torch is a CPU build (`torch.version.cuda` is None)",
  },
  ENV_DEVICES_HIDDEN: {
    severity: "warning (error with `device: cuda`)",
    when: "the driver lists GPUs but `CUDA_VISIBLE_DEVICES` resolves to none (empty, `-1`, an index past the last, an unknown UUID, a MIG UUID where MIG is off)",
  },
  ENV_NO_BF16: {
    when: "the GPU has no bf16 (compute capability < 8.0) and precision is `auto`: fp16 with fp32 adapters and loss scaling",
  },
  ENV_LOW_DISK: {
    severity: "warning; error below the need",
    when: "free disk at `output_dir` under twice what the run writes (kept checkpoints + one being written, adapter, prepared tokens)",
  },
  ENV_CPU_ESTIMATE: {
    when: "the run trains on the CPU: estimated time = tokens × FLOPs per token ÷ (measured matmul GFLOP/s × 0.5)",
  },
  ENV_CPU_SLOW: { when: "the same estimate is above one hour" },
  MEMORY_WONT_FIT: {
    when: "the estimated need (peak + 5% + CUDA context) exceeds free memory; the fix names the micro-batch and accumulation that fit",
  },
  MEMORY_TIGHT: { when: "the need is above 90% of free memory" },
  MEMORY_GPU_UNDERUSED: {
    when: "the fast path without `train.pack_tokens` would run micro-batches of under 4,096 tokens (the GPU waits on the host): the `pack_tokens` that fills it, with the samples per optimizer step and the steps it gives",
  },
  CONFIG_LR_HIGH: { when: "lr > 1e-3 with r ≤ 16 and alpha/r ≥ 2, or lr > 5e-3 at any rank" },
  CONFIG_LR_LOW: { when: "lr < 1e-5" },
  CONFIG_LR_SMALL_DATA: { when: "lr < 1e-4 with fewer than 1,000 training samples" },
  CONFIG_PREFER_BF16: { when: "precision `fp16` on a GPU with bf16" },
  CONFIG_BF16_UNSUPPORTED: { when: "precision `bf16` on a GPU without it (pre-Ampere)" },
  CONFIG_HALF_ON_CPU: { when: "precision `fp16`/`bf16` for a run on the CPU" },
  CONFIG_FP32_ON_GPU: {
    when: "precision `fp32` on a GPU: packed rows attend through SDPA (flash attention is fp16/bf16 only); slower, twice bf16's memory",
  },
  CONFIG_TARGETS_WRONG_FAMILY: {
    when: "a LoRA target is another family's name (`q_proj` on ChatGLM3 → `query_key_value`)",
  },
  CONFIG_TARGETS_UNKNOWN: { when: "a LoRA target is no known linear module of any family (with the nearest name)" },
  CONFIG_STEPS_FEW: { when: "fewer than 20 optimizer steps" },
  CONFIG_EVAL_EMPTY: { when: "no held-out samples (`eval_split: 0` without `data.eval`, an empty eval file)" },
  CONFIG_PACK_TOKENS_SHORT: {
    when: "a training sample is longer than a `train.pack_tokens` row (names the sample, its file and line, the longest); the engine refuses it too",
  },
  CONFIG_DATA_UNCOUNTED: { when: "the data files could not be counted; checks that need the count were skipped" },
  DATA_ROLE_MARKERS_AS_TEXT: {
    when: "message text spells a special token (`<|user|>`), which tokenizes as ordinary pieces",
  },
  DATA_NO_STOP: {
    when: "too few of the samples not cut by `max_length` train the family's stop token (generation will not stop)",
  },
  DATA_PROMPT_TRAINED: { when: "trained tokens inside user/system turns (the prompt is not masked)" },
  DATA_NOTHING_TRAINED: { when: "no trained token at all" },
  DATA_SAMPLES_UNTRAINED: { when: "samples with zero trained tokens (the response cut away)" },
  DATA_TRUNCATED: { when: "samples cut at `max_length`, with the share of trained tokens lost" },
  DATA_TEMPLATE_MISMATCH: { when: "the template differs from the checkpoint's own `chat_template`" },
  DATA_VOCAB_OUT_OF_RANGE: { when: "a token id beyond the embedding rows" },
  DATA_TOKENIZER_MISMATCH: { when: "the tokenizer is not the checkpoint's" },
  DATA_BAD_LINES: {
    when: "`data.skip_bad_lines: true` skipped malformed records; the evidence lists each one's file:line and reason (without the option each stops the data stage with its own code: `DATA_BAD_JSON`, `DATA_EMPTY_RESPONSE`, …)",
  },
  DATA_ENCODING: { when: "files that start with a UTF-8 BOM (stripped)" },
  DATA_DUPLICATES: { when: "duplicate samples" },
  DATA_EVAL_OVERLAP: { when: "eval samples that also occur in the training data" },
  MODEL_INSPECT_FAILED: { when: "the inspection process could not run" },
  MODEL_LOAD_FAILED: {
    when: "the checkpoint cannot be read or loaded (unsupported `model_type`, damaged shards); also the engine's error when training cannot load it",
  },
  MODEL_REMOTE_CODE: {
    when: "`config.json` has an `auto_map`: lorakit builds the model without running the checkpoint's code",
  },
  MODEL_TARGETS_NOT_FOUND: {
    when: "no module matches the targets; evidence lists the model's linear modules and the family's set (at training time the engine stops with this code)",
  },
  MODEL_TARGETS_PARTIAL: {
    when: "a target matches nothing, or fewer layers than the model has (matched vs layers × targets); the model check and the engine at training time",
  },
  MODEL_LORA_ATTACH_FAILED: { when: "peft refuses the targets (e.g. a norm layer)" },
  MODEL_NOTHING_TRAINABLE: { when: "no parameter requires a gradient" },
  MODEL_BASE_TRAINABLE: { when: "parameters without `lora_` in their name are trainable" },
  MODEL_ADAPTER_DTYPE: {
    when: "a trainable tensor is not float32 (fp16 adapters: loss 0 or NaN, `Attempting to unscale FP16 gradients`)",
  },
  MODEL_TEMPLATE_LOSS_HIGH: {
    when: "the base model's loss on formatted samples is ≥ 1.5× and ≥ 0.5 nats above its loss on the plain text",
  },
  SMOKE_FAILED: {
    when: "the smoke run before the real one (2 optimizer steps on a slice, save, reload check, one sample) failed; `--no-smoke` skips it",
  },
  TRAIN_NONFINITE_LOSS: {
    when: "NaN/Inf loss or gradient norm; training stops and the last good checkpoint is kept",
  },
  TRAIN_LOSS_ZERO: { when: "loss below 1e-3 within the first 10% of the steps" },
  TRAIN_LOSS_SPIKE: { when: "loss > mean + 4·std of the previous 20 steps and > 2× their median" },
  TRAIN_PLATEAU: {
    when: "the loss changed < 1% over a window of min(50, max(10, steps / 2)) steps, is < 10% below the start, and the adapter's ‖ΔW‖ (when known) is < 1e-3",
  },
  TRAIN_OVERFITTING: {
    when: "eval loss rose 3 evals in a row while the train loss fell; evidence names the best step",
  },
  ADAPTER_NEVER_LEARNED: { when: "after training, LoRA B stayed at zero in some layers" },
  ADAPTER_RELOAD_MISMATCH: {
    when: "the saved adapter, loaded with peft on a fresh base, gives other logits than the trained model",
  },
  OUTPUT_NO_STOP: { when: "fewer than half of the held-out samples after training end on a stop token" },
  OUTPUT_UNCHANGED: { when: "80% or more of the samples after training are identical to before" },
};

export interface CatalogueEntry {
  code: string;
  stage: Stage;
  kind: "finding" | "error";
  severity: string;
  when: string;
}

/** Every code, findings first (in registry order), then errors, per stage in STAGES order. */
export function catalogue(): CatalogueEntry[] {
  const findings = Object.entries(CODES as Record<string, CodeSpec>).map(([code, s]) => {
    const w = WHEN[code as Code];
    return { code, stage: s.stage, kind: "finding" as const, severity: w.severity ?? s.severity, when: w.when };
  });
  const errors = Object.entries(ERRORS as Record<string, ErrorSpec>).map(([code, s]) => ({
    code,
    stage: s.stage,
    kind: "error" as const,
    severity: "error, stops the command",
    when: s.from === "engine" ? `(engine) ${s.when}` : s.when,
  }));
  const all = [...findings, ...errors];
  return STAGES.flatMap((stage) => all.filter((x) => x.stage === stage));
}

export function isCatalogued(code: string): boolean {
  return code in CODES || code in ERRORS;
}

/** The stage of any code: the registry's, else training (a code only a newer engine knows). */
export function stageOfCode(code: string): Stage {
  return (
    (CODES as Record<string, CodeSpec>)[code]?.stage ?? (ERRORS as Record<string, ErrorSpec>)[code]?.stage ?? "training"
  );
}

// ---------------------------------------------------------------- errors as findings (--json)

/** A LorakitError, with every problem it carries, as findings: the shape `--json` answers with. */
export function errorFindings(err: LorakitError): Finding[] {
  return err.all().map((x) => {
    const evidence: Record<string, unknown> = { message: x.message };
    if (x.where?.file !== undefined) evidence.file = x.where.file;
    if (x.where?.line !== undefined) evidence.line = x.where.line;
    if (x.where?.key !== undefined) evidence.key = x.where.key;
    if (x.where?.sample !== undefined) evidence.sample = x.where.sample;
    const where = formatWhere(x.where);
    const first = x.message.split("\n")[0] ?? x.message;
    return {
      code: x.code,
      severity: "error",
      title: where ? `${where}: ${first}` : first,
      evidence,
      fix: x.hint || "See the message; run the command again without --json for the whole output.",
      stage: stageOfCode(x.code),
    };
  });
}

// ---------------------------------------------------------------- the README's tables

const STAGE_TITLES: Record<Stage, string> = {
  env: "Environment",
  config: "Config",
  data: "Data",
  model: "Model",
  training: "Training",
  outputs: "Outputs",
};

export const README_BEGIN =
  "<!-- BEGIN GENERATED: codes (src/doctor/catalogue.ts; `npm run protocol` writes this, do not edit) -->";
export const README_END = "<!-- END GENERATED: codes -->";

const cell = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");

/** The code tables, one per stage, and the renamed codes. */
export function catalogueMarkdown(): string {
  const entries = catalogue();
  const out: string[] = [];
  for (const stage of STAGES) {
    out.push(`#### ${STAGE_TITLES[stage]} (\`${stage}\`)`, "", "| code | severity | when |", "| --- | --- | --- |");
    for (const x of entries.filter((y) => y.stage === stage)) {
      out.push(`| \`${x.code}\` | ${cell(x.severity)} | ${cell(x.when)} |`);
    }
    out.push("");
  }
  out.push(
    "Renamed codes (the old name is no longer emitted): " +
      Object.entries(RENAMED)
        .map(([from, to]) => `\`${from}\` → \`${to}\``)
        .join(", ") +
      ".",
  );
  return out.join("\n");
}

/** `readme` with the text between the markers replaced by the current tables. */
export function withCatalogue(readme: string): string {
  const a = readme.indexOf(README_BEGIN);
  const b = readme.indexOf(README_END);
  if (a < 0 || b < a) throw new Error(`README.md lacks the markers ${README_BEGIN} … ${README_END}`);
  return `${readme.slice(0, a + README_BEGIN.length)}\n\n${catalogueMarkdown()}\n\n${readme.slice(b)}`;
}

/** protocol/findings.json: every code with what the engine needs to emit it (a finding's title and fix are
 * templates, `{key}` filled from the evidence). */
export function findingsJson(): unknown {
  return {
    version: 1,
    codes: Object.fromEntries(
      Object.entries(CODES as Record<string, CodeSpec>).map(([code, s]) => [
        code,
        { stage: s.stage, severity: s.severity, title: s.title, fix: s.fix, row: s.row },
      ]),
    ),
    errors: ERRORS,
  };
}
