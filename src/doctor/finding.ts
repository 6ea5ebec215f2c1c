// A finding: one thing the doctor saw, with a stable code, a severity (an error stops the road, a warning
// does not), the evidence and the fix in one sentence. The registry below holds every code with its stage,
// default severity, title template and fix; rendering for a terminal, for `--json` and for the report.
import type { Io } from "../cli/io.js";
import { colors } from "../cli/io.js";
import type { EventOf } from "../config/schema.js";
import { LorakitError } from "../errors.js";

export const STAGES = ["env", "config", "data", "model", "training", "outputs"] as const;
export type Stage = (typeof STAGES)[number];
export type Severity = "error" | "warning" | "info";

export interface Finding {
  code: string;
  severity: Severity;
  title: string;
  evidence: Record<string, unknown>;
  fix: string;
  stage: Stage;
}

export interface CodeSpec {
  stage: Stage;
  severity: Severity;
  /** `{key}` is replaced by the evidence value under `key`. */
  title: string;
  fix: string;
  /** The catalogue row (DOCTOR.md) the code answers. */
  row: string;
}

const spec = (stage: Stage, severity: Severity, row: string, title: string, fix: string): CodeSpec => ({
  stage,
  severity,
  row,
  title,
  fix,
});

/** Every code the doctor or the engine reports. Codes are stable: renaming one is a breaking change. */
export const CODES = {
  // ---------------------------------------------------------------- environment
  ENV_PROBE_FAILED: spec(
    "env",
    "error",
    "no GPU",
    "the environment probe did not run: {error}",
    "Run `lorakit env` to set up the engine's Python environment, then run the doctor again.",
  ),
  ENV_TORCH_MISSING: spec(
    "env",
    "error",
    "no GPU",
    "torch cannot be imported: {error}",
    "Reinstall the engine's requirements (`lorakit env`), or point LORAKIT_PYTHON at an interpreter with torch.",
  ),
  ENV_NO_CUDA: spec(
    "env",
    "info",
    "no GPU",
    "no CUDA device: {explanation}",
    "Train on a machine with an NVIDIA GPU (driver, CUDA build of torch, NVIDIA container runtime) for real models.",
  ),
  ENV_NVML_FAILED: spec(
    "env",
    "warning",
    "NVML",
    "NVML fails but torch.cuda works: {explanation}",
    "Reboot after a driver upgrade (or reinstall the driver so library and kernel module match); nvidia-smi must work.",
  ),
  ENV_CUDA_INIT_FAILED: spec(
    "env",
    "warning",
    "NVML",
    "the driver sees GPUs but torch.cuda cannot use them: {explanation}",
    "Install a torch build for CUDA {driver_cuda} or older, or update the NVIDIA driver; check with `nvidia-smi`.",
  ),
  ENV_TORCH_CPU_BUILD: spec(
    "env",
    "warning",
    "no GPU",
    "this torch is a CPU build ({torch}) but the driver sees {gpus} GPU(s)",
    "Install a CUDA build of torch (pip install torch --index-url https://download.pytorch.org/whl/cu124).",
  ),
  ENV_DEVICES_HIDDEN: spec(
    "env",
    "warning",
    "NVML",
    "CUDA_VISIBLE_DEVICES={visible} hides every GPU the driver lists: {explanation}",
    "Set CUDA_VISIBLE_DEVICES to indices or UUIDs from `nvidia-smi -L` (MIG instances: their MIG- UUIDs), or unset it.",
  ),
  ENV_NO_BF16: spec(
    "env",
    "info",
    "no bf16",
    "{device} has no bf16 (compute capability {capability}): training runs in fp16 with fp32 adapters and loss scaling",
    "Prefer an Ampere or newer GPU (compute capability 8.0+); keep precision auto or fp16 on this one.",
  ),
  ENV_LOW_DISK: spec(
    "env",
    "warning",
    "disk",
    "{free} free at {path}; checkpoints and the adapter need about {need}",
    "Free disk space, lower train.keep_checkpoints, or set output_dir on a larger disk.",
  ),
  ENV_CPU_ESTIMATE: spec(
    "env",
    "info",
    "no GPU",
    "training on the CPU takes about {duration}",
    "Nothing to do for a small model; for a real one, train on a GPU.",
  ),
  ENV_CPU_SLOW: spec(
    "env",
    "warning",
    "no GPU",
    "training on the CPU would take about {duration}",
    "Train on a machine with a CUDA GPU, or cut the work (train.max_steps, a smaller model, shorter data.max_length).",
  ),
  // ---------------------------------------------------------------- config
  CONFIG_LR_HIGH: spec(
    "config",
    "warning",
    "divergence",
    "learning rate {lr} is high for LoRA r {r} with alpha/r {scale}",
    "Lower train.lr to 1e-4–2e-4 (the Self-LLM recipe uses 1e-4), or lower lora.alpha.",
  ),
  CONFIG_LR_LOW: spec(
    "config",
    "warning",
    "plateau",
    "learning rate {lr} is too low for LoRA to move in {steps} steps",
    "Raise train.lr to 5e-5–2e-4 (5e-5 for ChatGLM3 on large sets, 1e-4 or more for small ones).",
  ),
  CONFIG_LR_SMALL_DATA: spec(
    "config",
    "info",
    "adapter never learned",
    "learning rate {lr} with only {samples} samples: small datasets often need 1e-4 or more",
    "Consider train.lr: 1e-4 (or 2e-4) if the samples after training look unchanged.",
  ),
  CONFIG_PREFER_BF16: spec(
    "config",
    "warning",
    "half-precision adapters",
    "precision fp16 on {device}, which has bf16",
    "Set train.precision: bf16 (or auto): same speed, no fp16 overflow, no loss scaling.",
  ),
  CONFIG_BF16_UNSUPPORTED: spec(
    "config",
    "error",
    "no bf16",
    "precision bf16 on {device}, which has no bf16 (compute capability {capability})",
    "Set train.precision: auto (fp16 with fp32 adapters and loss scaling) or fp32.",
  ),
  CONFIG_FP32_ON_GPU: spec(
    "config",
    "info",
    "memory",
    "precision fp32 on {device}: packed rows attend through SDPA with a block mask, not flash attention (fp16/bf16 only); slower, twice bf16's memory",
    "Set train.precision: auto (bf16 where the GPU has it) unless fp32 is what you need; fp32 trains, only slower.",
  ),
  CONFIG_HALF_ON_CPU: spec(
    "config",
    "warning",
    "no GPU",
    "precision {precision} on the CPU: slow and less accurate than fp32 there",
    "Set train.precision: auto (fp32 on the CPU).",
  ),
  CONFIG_TARGETS_WRONG_FAMILY: spec(
    "config",
    "error",
    "targets not found",
    "LoRA targets {targets} are other families' names; {family} calls them {suggestion}",
    "Set lora.targets: [{suggestion}] (or leave lora.targets out for the family's set).",
  ),
  CONFIG_TARGETS_UNKNOWN: spec(
    "config",
    "warning",
    "targets not found",
    "LoRA targets {targets} are not linear modules {family} is known to have",
    "Use names from {known}; the model check lists the model's own linear modules.",
  ),
  CONFIG_STEPS_FEW: spec(
    "config",
    "warning",
    "adapter never learned",
    "only {steps} optimizer steps: too few for LoRA to learn",
    "Raise train.epochs, lower train.grad_accum or train.batch_size, or add samples (aim for 20+ steps, better 100+).",
  ),
  CONFIG_EVAL_EMPTY: spec(
    "config",
    "warning",
    "overfitting",
    "no held-out samples: {reason}",
    "Set data.eval_split (e.g. 0.05) or data.eval, so overfitting shows and the best checkpoint can be kept.",
  ),
  CONFIG_PACK_TOKENS_SHORT: spec(
    "config",
    "error",
    "truncation",
    "training sample {sample} ({origin}) has {length} tokens, more than a train.pack_tokens row of {pack_tokens} ({count} sample(s) are; the longest has {longest})",
    "Raise train.pack_tokens to ≥ {longest}, or lower data.max_length to ≤ {pack_tokens} (longer samples are then cut).",
  ),
  CONFIG_DATA_UNCOUNTED: spec(
    "config",
    "info",
    "dirty data",
    "the training data could not be counted ({error}); checks that need the sample count were skipped",
    "The data stage reports what is wrong with the files.",
  ),
  // ---------------------------------------------------------------- memory
  MEMORY_WONT_FIT: spec(
    "env",
    "error",
    "memory",
    "the estimated peak of {need} does not fit in {free} free on {device}",
    "{suggestion}",
  ),
  MEMORY_TIGHT: spec(
    "env",
    "warning",
    "memory",
    "the estimated peak of {need} uses most of the {free} free on {device}",
    "{suggestion}",
  ),
  MEMORY_GPU_UNDERUSED: spec(
    "env",
    "info",
    "memory",
    "micro-batches of {batch_size} samples hold ~{row_tokens} tokens: the GPU waits on the host; train.pack_tokens: {pack_tokens} fills it ({samples_then} samples an optimizer step instead of {samples_now}, {steps_then} steps instead of {steps_now})",
    "Set train.pack_tokens: {pack_tokens} and train.grad_accum: {grad_accum} (rows of whole samples without padding; peak ≈ {peak}). On an H200, ChatGLM3-6B trains at ~23,000 tokens/s in 8k-token rows, 10,000–16,000 in the recipe's batches of 4.",
  ),
  // ---------------------------------------------------------------- data (checks connect once src/data lands)
  DATA_ROLE_MARKERS_AS_TEXT: spec(
    "data",
    "warning",
    "role markers as text",
    "{samples} samples spell special tokens as text (e.g. <|user|>), which tokenize as ordinary pieces",
    "Remove role markers from the text; the template inserts the real special tokens.",
  ),
  DATA_NO_STOP: spec(
    "data",
    "error",
    "no end-of-turn learned",
    "only {share} of the samples not cut by max_length train the stop token: generation will not stop",
    "Let the template append the end-of-turn token to every response and keep it in the labels (pad ≠ eos).",
  ),
  DATA_PROMPT_TRAINED: spec(
    "data",
    "warning",
    "prompt trained",
    "{share} of trained tokens sit inside user/system turns",
    "Mask the prompt out of the labels (-100); train the assistant turns only.",
  ),
  DATA_NOTHING_TRAINED: spec(
    "data",
    "error",
    "nothing trained",
    "no sample has a trained token",
    "Check the format and the template: responses must survive truncation and carry labels.",
  ),
  DATA_SAMPLES_UNTRAINED: spec(
    "data",
    "warning",
    "nothing trained",
    "{samples} samples have no trained token",
    "Raise data.max_length or shorten the prompts so the responses are not cut away.",
  ),
  DATA_TRUNCATED: spec(
    "data",
    "warning",
    "truncation",
    "{share} of samples are cut at max_length, losing {lost} of the trained tokens",
    "Raise data.max_length (the whole sample, prompt and response, counts).",
  ),
  DATA_TEMPLATE_MISMATCH: spec(
    "data",
    "warning",
    "template mismatch",
    "the template {template} differs from the checkpoint's own chat_template",
    "Set data.template: auto to train with the checkpoint's template, and serve with the same one.",
  ),
  DATA_VOCAB_OUT_OF_RANGE: spec(
    "data",
    "error",
    "vocabulary",
    "token id {max_id} is beyond the model's {rows} embedding rows",
    "Use the tokenizer that ships with the checkpoint.",
  ),
  DATA_TOKENIZER_MISMATCH: spec(
    "data",
    "error",
    "vocabulary",
    "the tokenizer does not belong to this checkpoint",
    "Use the tokenizer files from the model folder.",
  ),
  DATA_BAD_LINES: spec(
    "data",
    "warning",
    "dirty data",
    "{count} malformed records were skipped (data.skip_bad_lines)",
    "Fix the records listed so that they are trained on too; until then they are left out.",
  ),
  DATA_ENCODING: spec(
    "data",
    "info",
    "dirty data",
    "encoding problems: {what}",
    "Save the data as UTF-8 without a BOM and repair the garbled text.",
  ),
  DATA_DUPLICATES: spec(
    "data",
    "warning",
    "dirty data",
    "{count} duplicate samples",
    "Remove the duplicates; they weigh those samples more.",
  ),
  DATA_EVAL_OVERLAP: spec(
    "data",
    "warning",
    "dirty data",
    "{count} eval samples also occur in the training data",
    "Remove them from one side: eval loss on seen samples hides overfitting.",
  ),
  // ---------------------------------------------------------------- model
  MODEL_INSPECT_FAILED: spec(
    "model",
    "error",
    "targets not found",
    "the model inspection did not run: {error}",
    "Run `lorakit env` and check that the model folder loads (see the engine's message).",
  ),
  MODEL_LOAD_FAILED: spec(
    "model",
    "error",
    "vocabulary",
    "the model cannot be loaded: {error}",
    "Point model at a complete local checkpoint folder of a supported family.",
  ),
  MODEL_REMOTE_CODE: spec(
    "model",
    "info",
    "remote code",
    "config.json points at remote code ({auto_map}); lorakit builds {model_type} without running it",
    "Nothing to do: the checkpoint's own Python code is never run.",
  ),
  MODEL_TARGETS_NOT_FOUND: spec(
    "model",
    "error",
    "targets not found",
    "no module of this model is named {targets}",
    "Set lora.targets to the family's set [{recommended}] or to names from the model's linear modules.",
  ),
  MODEL_TARGETS_PARTIAL: spec(
    "model",
    "warning",
    "targets partly matched",
    "LoRA targets match {matched_total} modules, fewer than layers × targets = {expected_total}",
    "Use plain leaf names that occur in every layer, and drop names that match nothing.",
  ),
  MODEL_LORA_ATTACH_FAILED: spec(
    "model",
    "error",
    "targets not found",
    "peft could not attach LoRA: {error}",
    "Target Linear layers only: pick names from the model's linear modules.",
  ),
  MODEL_NOTHING_TRAINABLE: spec(
    "model",
    "error",
    "nothing trainable / base trainable",
    "no parameter is trainable",
    "Attach LoRA with peft and do not freeze the lora_ parameters afterwards.",
  ),
  MODEL_BASE_TRAINABLE: spec(
    "model",
    "warning",
    "nothing trainable / base trainable",
    "{count} base-model parameter tensors are trainable besides LoRA",
    "Freeze every parameter without lora_ in its name before training.",
  ),
  MODEL_ADAPTER_DTYPE: spec(
    "model",
    "error",
    "half-precision adapters",
    "trainable tensors are not float32: {dtypes}",
    "Keep adapter weights in float32 and prefer a bf16 base where the GPU has it.",
  ),
  MODEL_TEMPLATE_LOSS_HIGH: spec(
    "model",
    "warning",
    "template mismatch",
    "the base model's loss on formatted samples is {ratio}× its loss on the plain text",
    "Use the checkpoint's own chat template (data.template: auto) and the same template at inference.",
  ),
  // ---------------------------------------------------------------- training (engine: monitor.py, train.py)
  TRAIN_NONFINITE_LOSS: spec(
    "training",
    "error",
    "divergence",
    "the loss or gradient norm became non-finite at step {step}",
    "Lower train.lr or warm up longer, prefer bf16 to fp16, and resume from the last good checkpoint.",
  ),
  TRAIN_LOSS_ZERO: spec(
    "training",
    "error",
    "loss at 0",
    "the loss is {loss} at step {step}: nothing real is being learned",
    "Check the labels: nothing trained, the answer leaking into the input, or fp16 adapters.",
  ),
  TRAIN_LOSS_SPIKE: spec(
    "training",
    "warning",
    "divergence",
    "the loss spiked to {loss} at step {step}",
    "Lower train.lr or lengthen the warmup (train.warmup_ratio); spikes often come before NaN.",
  ),
  TRAIN_PLATEAU: spec(
    "training",
    "warning",
    "plateau",
    "the loss has not moved over steps {window}",
    "Raise train.lr (LoRA often needs 1e-4 or more) and check that the adapter parameters are trainable.",
  ),
  TRAIN_OVERFITTING: spec(
    "training",
    "warning",
    "overfitting",
    "eval loss rises while the train loss falls; the best checkpoint is step {best_step}",
    "Keep the best checkpoint; train fewer epochs, add data, or stop early.",
  ),
  ADAPTER_NEVER_LEARNED: spec(
    "training",
    "warning",
    "adapter never learned",
    "LoRA B stayed at zero in some layers: the adapter changes nothing there",
    "Raise train.lr or train for more steps, and check that the adapter parameters are trainable.",
  ),
  ADAPTER_RELOAD_MISMATCH: spec(
    "outputs",
    "error",
    "adapter not loaded",
    "the saved adapter, reloaded on a fresh base, does not reproduce the trained model",
    "Check that the adapter's target modules exist under the same names in the base model.",
  ),
  // ---------------------------------------------------------------- smoke run
  SMOKE_FAILED: spec(
    "training",
    "error",
    "smoke run",
    "the smoke run (2 steps on a slice, save, reload, generate) failed: {code}",
    "Fix the error shown (engine.log in runs/<name>/smoke/) before the real run; --no-smoke skips this check.",
  ),
  // ---------------------------------------------------------------- outputs
  OUTPUT_NO_STOP: spec(
    "outputs",
    "warning",
    "no end-of-turn learned",
    "only {stopped} of {total} samples after training stop on their own",
    "Check that every response ends with the end-of-turn token in the labels (DATA_NO_STOP) and train longer.",
  ),
  OUTPUT_UNCHANGED: spec(
    "outputs",
    "warning",
    "adapter never learned",
    "{identical} of {pairs} samples after training are identical to before",
    "Check that the adapter was loaded (PeftModel.from_pretrained), and raise train.lr or the number of steps.",
  ),
} as const satisfies Record<string, CodeSpec>;

export type Code = keyof typeof CODES;

export function specOf(code: string): CodeSpec | undefined {
  return (CODES as Record<string, CodeSpec>)[code];
}

/** The stage a code belongs to; engine codes not in the registry count as training. */
export function stageOf(code: string): Stage {
  return specOf(code)?.stage ?? "training";
}

/** A short text for an evidence value (numbers to 3 significant digits, lists joined). */
export function showValue(v: unknown, max = 120): string {
  let s: string;
  if (typeof v === "number") s = Number.isInteger(v) ? String(v) : Number(v.toPrecision(3)).toString();
  else if (typeof v === "string") s = v;
  else if (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x !== "object" || x === null))
    s = v.map((x) => showValue(x)).join(", ");
  else s = JSON.stringify(v) ?? String(v);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** Replaces `{key}` with the evidence value under `key` (left as is when absent). */
export function fill(template: string, evidence: Record<string, unknown>): string {
  return template.replace(/\{([A-Za-z0-9_]+)\}/g, (whole, key: string) =>
    key in evidence ? showValue(evidence[key]) : whole,
  );
}

/** A finding from the registry: title and fix filled from the evidence unless given. */
export function makeFinding(
  code: Code,
  evidence: Record<string, unknown>,
  over: { severity?: Severity; title?: string; fix?: string } = {},
): Finding {
  const s = CODES[code] as CodeSpec;
  return {
    code,
    severity: over.severity ?? s.severity,
    title: over.title ?? fill(s.title, evidence),
    evidence,
    fix: over.fix ?? fill(s.fix, evidence),
    stage: s.stage,
  };
}

/** A `finding` event from the engine as a Finding (its own title and fix kept; the stage from the registry). */
export function fromEvent(e: Omit<EventOf<"finding">, "type"> & { type?: "finding" }, stage?: Stage): Finding {
  return {
    code: e.code,
    severity: e.severity,
    title: e.title,
    evidence: e.evidence,
    fix: e.fix,
    stage: stage ?? stageOf(e.code),
  };
}

/** The wire shape (the `finding` event). */
export function toEvent(f: Finding): EventOf<"finding"> {
  return { type: "finding", code: f.code, severity: f.severity, title: f.title, evidence: f.evidence, fix: f.fix };
}

/** A row of the run store's findings table as a Finding. */
export function fromRow(r: {
  stage: string;
  code: string;
  severity: Severity;
  title: string;
  evidence_json: string;
  fix: string;
}): Finding {
  let evidence: Record<string, unknown> = {};
  try {
    evidence = JSON.parse(r.evidence_json) as Record<string, unknown>;
  } catch {
    evidence = { raw: r.evidence_json };
  }
  const stage = (STAGES as readonly string[]).includes(r.stage) ? (r.stage as Stage) : stageOf(r.code);
  return { code: r.code, severity: r.severity, title: r.title, evidence, fix: r.fix, stage };
}

export function hasErrors(findings: readonly Finding[]): boolean {
  return findings.some((f) => f.severity === "error");
}

const RANK: Record<Severity, number> = { error: 0, warning: 1, info: 2 };

/** Stage order, then errors before warnings before info, then code. */
export function sortFindings(findings: readonly Finding[]): Finding[] {
  return [...findings].sort(
    (a, b) =>
      STAGES.indexOf(a.stage) - STAGES.indexOf(b.stage) ||
      RANK[a.severity] - RANK[b.severity] ||
      a.code.localeCompare(b.code),
  );
}

export interface Counts {
  errors: number;
  warnings: number;
  info: number;
}

export function countFindings(findings: readonly Finding[]): Counts {
  return {
    errors: findings.filter((f) => f.severity === "error").length,
    warnings: findings.filter((f) => f.severity === "warning").length,
    info: findings.filter((f) => f.severity === "info").length,
  };
}

/** The error findings as one LorakitError (the road stops with it). */
export function findingsError(findings: readonly Finding[]): LorakitError | null {
  const errors = findings.filter((f) => f.severity === "error");
  if (errors.length === 0) return null;
  return LorakitError.fromList(errors.map((f) => new LorakitError(f.code, f.title, { hint: f.fix })));
}

// ---------------------------------------------------------------- terminal

export interface TextOptions {
  /** Indentation before each finding. */
  indent?: string;
  /** Evidence keys shown per finding. */
  maxEvidence?: number;
  /** Info findings: title only (default), or with evidence and fix. */
  verboseInfo?: boolean;
}

/** One finding for a terminal: `✗ error CODE  title`, then evidence and fix lines. */
export function renderFinding(f: Finding, io: Io, opts: TextOptions = {}): string {
  const c = colors(io);
  const pad = opts.indent ?? "";
  const mark =
    f.severity === "error"
      ? c.red(`✗ error   ${f.code}`)
      : f.severity === "warning"
        ? c.yellow(`! warning ${f.code}`)
        : c.cyan(`· info    ${f.code}`);
  const lines = [`${pad}${mark}  ${f.title}`];
  if (f.severity !== "info" || opts.verboseInfo) {
    const entries = Object.entries(f.evidence).slice(0, opts.maxEvidence ?? 6);
    if (entries.length > 0) {
      lines.push(`${pad}  ${c.dim("evidence")} ${entries.map(([k, v]) => `${k}: ${showValue(v, 80)}`).join("; ")}`);
    }
    lines.push(`${pad}  ${c.dim("fix")}      ${f.fix}`);
  }
  return lines.join("\n");
}

/** Findings grouped by stage, for a terminal. */
export function renderFindings(findings: readonly Finding[], io: Io, opts: TextOptions = {}): string {
  const out: string[] = [];
  for (const stage of STAGES) {
    const here = sortFindings(findings.filter((f) => f.stage === stage));
    if (here.length === 0) continue;
    out.push(`${opts.indent ?? ""}${stage}`);
    for (const f of here) out.push(renderFinding(f, io, { ...opts, indent: `${opts.indent ?? ""}  ` }));
  }
  return out.join("\n");
}

// ---------------------------------------------------------------- --json

export interface FindingsJson {
  findings: Finding[];
  summary: Counts & { ok: boolean; byStage: Record<Stage, Counts> } & Record<string, unknown>;
}

/** `{findings, summary}` as `lorakit doctor --json` prints it; `extra` joins the summary. */
export function toJson(findings: readonly Finding[], extra: Record<string, unknown> = {}): FindingsJson {
  const sorted = sortFindings(findings);
  const byStage = Object.fromEntries(
    STAGES.map((s) => [s, countFindings(sorted.filter((f) => f.stage === s))]),
  ) as Record<Stage, Counts>;
  const counts = countFindings(sorted);
  return { findings: sorted, summary: { ok: counts.errors === 0, ...counts, byStage, ...extra } };
}

// ---------------------------------------------------------------- report

function esc(s: string): string {
  return s.replace(
    /[&<>"']/g,
    (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[ch] as string,
  );
}

/** An HTML fragment for report.html: one table per stage (classes error/warning/info on the rows). */
export function renderFindingsHtml(findings: readonly Finding[]): string {
  if (findings.length === 0) return `<section class="findings"><p class="ok">No findings.</p></section>`;
  const parts: string[] = [`<section class="findings">`];
  for (const stage of STAGES) {
    const here = sortFindings(findings.filter((f) => f.stage === stage));
    if (here.length === 0) continue;
    parts.push(
      `<h3>${esc(stage)}</h3><table><tr><th>severity</th><th>code</th><th>finding</th><th>evidence</th><th>fix</th></tr>`,
    );
    for (const f of here) {
      const evidence = Object.entries(f.evidence)
        .map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(showValue(v, 400))}</dd>`)
        .join("");
      parts.push(
        `<tr class="${f.severity}"><td>${f.severity}</td><td><code>${esc(f.code)}</code></td><td>${esc(f.title)}</td><td><dl>${evidence}</dl></td><td>${esc(f.fix)}</td></tr>`,
      );
    }
    parts.push("</table>");
  }
  parts.push("</section>");
  return parts.join("");
}
