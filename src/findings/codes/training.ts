// Finding codes of the training and outputs stages: the engine's monitors during the run, the smoke run, the saved
// adapter reloaded, and the samples after training.
// Codes are stable: a rename is listed in RENAMED (error-codes.ts). `{key}` in a title or fix is filled from the
// evidence; `when` is the README's description, `severityNote` its severity where the config changes it.
import type { CodeSpec } from "../spec.js";

export const TRAINING_CODES = {
  TRAIN_NONFINITE_LOSS: {
    stage: "training",
    severity: "error",
    row: "divergence",
    title: "the loss or gradient norm became non-finite at step {step}",
    fix: "Lower train.lr or warm up longer, prefer bf16 to fp16, and resume from the last good checkpoint.",
    when: "NaN/Inf loss or gradient norm; training stops and the last good checkpoint is kept",
  },
  TRAIN_LOSS_ZERO: {
    stage: "training",
    severity: "error",
    row: "loss at 0",
    title: "the loss is {loss} at step {step}: nothing real is being learned",
    fix: "Check the labels: nothing trained, the answer leaking into the input, or fp16 adapters.",
    when: "loss below 1e-3 within the first 10% of the steps",
  },
  TRAIN_LOSS_SPIKE: {
    stage: "training",
    severity: "warning",
    row: "divergence",
    title: "the loss spiked to {loss} at step {step}",
    fix: "Lower train.lr or lengthen the warmup (train.warmup_ratio); spikes often come before NaN.",
    when: "loss > mean + 4·std of the previous 20 steps and > 2× their median",
  },
  TRAIN_PLATEAU: {
    stage: "training",
    severity: "warning",
    row: "plateau",
    title: "the loss has not moved over steps {window}",
    fix: "Raise train.lr (LoRA often needs 1e-4 or more) and check that the adapter parameters are trainable.",
    when: "the loss changed < 1% over a window of min(50, max(10, steps / 2)) steps, is < 10% below the start, and the adapter's ‖ΔW‖ (when known) is < 1e-3",
  },
  TRAIN_OVERFITTING: {
    stage: "training",
    severity: "warning",
    row: "overfitting",
    title: "eval loss rises while the train loss falls; the best checkpoint is step {best_step}",
    fix: "Keep the best checkpoint; train fewer epochs, add data, or stop early.",
    when: "eval loss rose 3 evals in a row while the train loss fell; evidence names the best step",
  },
  ADAPTER_NEVER_LEARNED: {
    stage: "training",
    severity: "warning",
    row: "adapter never learned",
    title: "LoRA B stayed at zero in some layers: the adapter changes nothing there",
    fix: "Raise train.lr or train for more steps, and check that the adapter parameters are trainable.",
    when: "after training, LoRA B stayed at zero in some layers",
  },
  ADAPTER_RELOAD_MISMATCH: {
    stage: "outputs",
    severity: "error",
    row: "adapter not loaded",
    title: "the saved adapter, reloaded on a fresh base, does not reproduce the trained model",
    fix: "Check that the adapter's target modules exist under the same names in the base model.",
    when: "the saved adapter, loaded with peft on a fresh base, gives other logits than the trained model",
  },
  SMOKE_FAILED: {
    stage: "training",
    severity: "error",
    row: "smoke run",
    title: "the smoke run (2 steps on a slice, save, reload, generate) failed: {code}",
    fix: "Fix the error shown (engine.log in runs/<name>/smoke/) before the real run; --no-smoke skips this check.",
    when: "the smoke run before the real one (2 optimizer steps on a slice, save, reload check, one sample) failed; `--no-smoke` skips it",
  },
  OUTPUT_NO_STOP: {
    stage: "outputs",
    severity: "warning",
    row: "no end-of-turn learned",
    title: "only {stopped} of {total} samples after training stop on their own",
    fix: "Check that every response ends with the end-of-turn token in the labels (DATA_NO_STOP) and train longer.",
    when: "fewer than half of the held-out samples after training end on a stop token",
  },
  OUTPUT_UNCHANGED: {
    stage: "outputs",
    severity: "warning",
    row: "adapter never learned",
    title: "{identical} of {pairs} samples after training are identical to before",
    fix: "Check that the adapter was loaded (PeftModel.from_pretrained), and raise train.lr or the number of steps.",
    when: "80% or more of the samples after training are identical to before",
  },
} as const satisfies Record<string, CodeSpec>;
