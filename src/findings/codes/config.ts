// Finding codes of the config stage: learning rate, precision, LoRA targets, step count, eval split and rows,
// checked before anything heavy.
// Codes are stable: a rename is listed in RENAMED (error-codes.ts). `{key}` in a title or fix is filled from the
// evidence; `when` is the README's description, `severityNote` its severity where the config changes it.
import type { CodeSpec } from "../spec.js";

export const CONFIG_CODES = {
  CONFIG_LR_HIGH: {
    stage: "config",
    severity: "warning",
    row: "divergence",
    title: "learning rate {lr} is high for LoRA r {r} with alpha/r {scale}",
    fix: "Lower train.lr to 1e-4–2e-4 (the Self-LLM recipe uses 1e-4), or lower lora.alpha.",
    when: "lr > 1e-3 with r ≤ 16 and alpha/r ≥ 2, or lr > 5e-3 at any rank",
  },
  CONFIG_LR_LOW: {
    stage: "config",
    severity: "warning",
    row: "plateau",
    title: "learning rate {lr} is too low for LoRA to move in {steps} steps",
    fix: "Raise train.lr to 5e-5–2e-4 (5e-5 for ChatGLM3 on large sets, 1e-4 or more for small ones).",
    when: "lr < 1e-5",
  },
  CONFIG_LR_SMALL_DATA: {
    stage: "config",
    severity: "info",
    row: "adapter never learned",
    title: "learning rate {lr} with only {samples} samples: small datasets often need 1e-4 or more",
    fix: "Consider train.lr: 1e-4 (or 2e-4) if the samples after training look unchanged.",
    when: "lr < 1e-4 with fewer than 1,000 training samples",
  },
  CONFIG_PREFER_BF16: {
    stage: "config",
    severity: "warning",
    row: "half-precision adapters",
    title: "precision fp16 on {device}, which has bf16",
    fix: "Set train.precision: bf16 (or auto): same speed, no fp16 overflow, no loss scaling.",
    when: "precision `fp16` on a GPU with bf16",
  },
  CONFIG_BF16_UNSUPPORTED: {
    stage: "config",
    severity: "error",
    row: "no bf16",
    title: "precision bf16 on {device}, which has no bf16 (compute capability {capability})",
    fix: "Set train.precision: auto (fp16 with fp32 adapters and loss scaling) or fp32.",
    when: "precision `bf16` on a GPU without it (pre-Ampere)",
  },
  CONFIG_FP32_ON_GPU: {
    stage: "config",
    severity: "info",
    row: "memory",
    title:
      "precision fp32 on {device}: packed rows attend through SDPA with a block mask, not flash attention (fp16/bf16 only); slower, twice bf16's memory",
    fix: "Set train.precision: auto (bf16 where the GPU has it) unless fp32 is what you need; fp32 trains, only slower.",
    when: "precision `fp32` on a GPU: packed rows attend through SDPA (flash attention is fp16/bf16 only); slower, twice bf16's memory",
  },
  CONFIG_HALF_ON_CPU: {
    stage: "config",
    severity: "warning",
    row: "no GPU",
    title: "precision {precision} on the CPU: slow and less accurate than fp32 there",
    fix: "Set train.precision: auto (fp32 on the CPU).",
    when: "precision `fp16`/`bf16` for a run on the CPU",
  },
  CONFIG_TARGETS_WRONG_FAMILY: {
    stage: "config",
    severity: "error",
    row: "targets not found",
    title: "LoRA targets {targets} are other families' names; {family} calls them {suggestion}",
    fix: "Set lora.targets: [{suggestion}] (or leave lora.targets out for the family's set).",
    when: "a LoRA target is another family's name (`q_proj` on ChatGLM3 → `query_key_value`)",
  },
  CONFIG_TARGETS_UNKNOWN: {
    stage: "config",
    severity: "warning",
    row: "targets not found",
    title: "LoRA targets {targets} are not linear modules {family} is known to have",
    fix: "Use names from {known}; the model check lists the model's own linear modules.",
    when: "a LoRA target is no known linear module of any family (with the nearest name)",
  },
  CONFIG_STEPS_FEW: {
    stage: "config",
    severity: "warning",
    row: "adapter never learned",
    title: "only {steps} optimizer steps: too few for LoRA to learn",
    fix: "Raise train.epochs, lower train.grad_accum or train.batch_size, or add samples (aim for 20+ steps, better 100+).",
    when: "fewer than 20 optimizer steps",
  },
  CONFIG_EVAL_EMPTY: {
    stage: "config",
    severity: "warning",
    row: "overfitting",
    title: "no held-out samples: {reason}",
    fix: "Set data.eval_split (e.g. 0.05) or data.eval, so overfitting shows and the best checkpoint can be kept.",
    when: "no held-out samples (`eval_split: 0` without `data.eval`, an empty eval file)",
  },
  CONFIG_PACK_TOKENS_SHORT: {
    stage: "config",
    severity: "error",
    row: "truncation",
    title:
      "training sample {sample} ({origin}) has {length} tokens, more than a train.pack_tokens row of {pack_tokens} ({count} sample(s) are; the longest has {longest})",
    fix: "Raise train.pack_tokens to ≥ {longest}, or lower data.max_length to ≤ {pack_tokens} (longer samples are then cut).",
    when: "a training sample is longer than a `train.pack_tokens` row (names the sample, its file and line, the longest); the engine refuses it too",
  },
  CONFIG_DATA_UNCOUNTED: {
    stage: "config",
    severity: "info",
    row: "dirty data",
    title: "the training data could not be counted ({error}); checks that need the sample count were skipped",
    fix: "The data stage reports what is wrong with the files.",
    when: "the data files could not be counted; checks that need the count were skipped",
  },
} as const satisfies Record<string, CodeSpec>;
