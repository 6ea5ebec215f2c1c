// Finding codes of the model stage: the checkpoint loaded, LoRA attached (by the doctor's inspection and again by
// the engine at training time), the template's effect on the base model's loss.
// Codes are stable: a rename is listed in RENAMED (error-codes.ts). `{key}` in a title or fix is filled from the
// evidence; `when` is the README's description, `severityNote` its severity where the config changes it.
import type { CodeSpec } from "../spec.js";

export const MODEL_CODES = {
  MODEL_INSPECT_FAILED: {
    stage: "model",
    severity: "error",
    row: "targets not found",
    title: "the model inspection did not run: {error}",
    fix: "Run `lorakit env` and check that the model folder loads (see the engine's message).",
    when: "the inspection process could not run",
  },
  MODEL_LOAD_FAILED: {
    stage: "model",
    severity: "error",
    row: "vocabulary",
    title: "the model cannot be loaded: {error}",
    fix: "Point model at a complete local checkpoint folder of a supported family.",
    when: "the checkpoint cannot be read or loaded (unsupported `model_type`, damaged shards); also the engine's error when training cannot load it",
  },
  MODEL_REMOTE_CODE: {
    stage: "model",
    severity: "info",
    row: "remote code",
    title: "config.json points at remote code ({auto_map}); lorakit builds {model_type} without running it",
    fix: "Nothing to do: the checkpoint's own Python code is never run.",
    when: "`config.json` has an `auto_map`: lorakit builds the model without running the checkpoint's code",
  },
  MODEL_TARGETS_NOT_FOUND: {
    stage: "model",
    severity: "error",
    row: "targets not found",
    title: "no module of this model is named {targets}",
    fix: "Set lora.targets to the family's set [{recommended}] or to names from the model's linear modules.",
    when: "no module matches the targets; evidence lists the model's linear modules and the family's set (at training time the engine stops with this code)",
  },
  MODEL_TARGETS_PARTIAL: {
    stage: "model",
    severity: "warning",
    row: "targets partly matched",
    title: "LoRA targets match {matched_total} modules, fewer than layers × targets = {expected_total}",
    fix: "Use plain leaf names that occur in every layer, and drop names that match nothing.",
    when: "a target matches nothing, or fewer layers than the model has (matched vs layers × targets); the model check and the engine at training time",
  },
  MODEL_LORA_ATTACH_FAILED: {
    stage: "model",
    severity: "error",
    row: "targets not found",
    title: "peft could not attach LoRA: {error}",
    fix: "Target Linear layers only: pick names from the model's linear modules.",
    when: "peft refuses the targets (e.g. a norm layer)",
  },
  MODEL_NOTHING_TRAINABLE: {
    stage: "model",
    severity: "error",
    row: "nothing trainable / base trainable",
    title: "no parameter is trainable",
    fix: "Attach LoRA with peft and do not freeze the lora_ parameters afterwards.",
    when: "no parameter requires a gradient",
  },
  MODEL_BASE_TRAINABLE: {
    stage: "model",
    severity: "warning",
    row: "nothing trainable / base trainable",
    title: "{count} base-model parameter tensors are trainable besides LoRA",
    fix: "Freeze every parameter without lora_ in its name before training.",
    when: "parameters without `lora_` in their name are trainable",
  },
  MODEL_ADAPTER_DTYPE: {
    stage: "model",
    severity: "error",
    row: "half-precision adapters",
    title: "trainable tensors are not float32: {dtypes}",
    fix: "Keep adapter weights in float32 and prefer a bf16 base where the GPU has it.",
    when: "a trainable tensor is not float32 (fp16 adapters: loss 0 or NaN, `Attempting to unscale FP16 gradients`)",
  },
  MODEL_TEMPLATE_LOSS_HIGH: {
    stage: "model",
    severity: "warning",
    row: "template mismatch",
    title: "the base model's loss on formatted samples is {ratio}× its loss on the plain text",
    fix: "Use the checkpoint's own chat template (data.template: auto) and the same template at inference.",
    when: "the base model's loss on formatted samples is ≥ 1.5× and ≥ 0.5 nats above its loss on the plain text",
  },
} as const satisfies Record<string, CodeSpec>;
