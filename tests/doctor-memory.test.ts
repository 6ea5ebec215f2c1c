// The memory estimate against known figures: lorakit's engine measured on an H200 and PERFORMANCE.md's
// HF + peft baseline (ChatGLM3-6B shape), the tiny fixtures' parameter counts, and the micro-batch that fits.
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import {
  diskNeed,
  estimateMemory,
  fitMicroBatch,
  loraParams,
  type MemoryInputs,
  memoryFindings,
  modelShape,
} from "../src/doctor/memory.js";
import { familyFor } from "../src/models/families.js";
import { fixture } from "./helpers.js";

const GiB = 1024 ** 3;
const CHATGLM3_6B = {
  model_type: "chatglm",
  num_layers: 28,
  hidden_size: 4096,
  ffn_hidden_size: 13696,
  num_attention_heads: 32,
  kv_channels: 128,
  multi_query_attention: true,
  multi_query_group_num: 2,
  padded_vocab_size: 65024,
  add_qkv_bias: true,
};
const shape = modelShape(CHATGLM3_6B, familyFor("chatglm")!)!;
const QKV = ["query_key_value"];
const ALL = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"];

function inputs(microBatch: number, seqLen: number, checkpointing: boolean, targets = QKV, r = 8): MemoryInputs {
  return { shape, precision: "bf16", microBatch, seqLen, checkpointing, r, targets, dropout: 0.1, device: "cuda" };
}
const peakGiB = (m: MemoryInputs) => estimateMemory(m).peak / GiB;

describe("ChatGLM3-6B shape", () => {
  it("has the checkpoint's parameter counts", () => {
    expect(shape.params).toBe(6_243_584_000);
    expect(shape.matmulParams).toBe(5_976_883_200); // PERFORMANCE.md: 5.98e9 in matmuls with the output layer
    expect(loraParams(shape, QKV, 8)).toBe(28 * 8 * (4096 + 4608));
  });

  // lorakit's engine (native ChatGLM3, bf16, LoRA dropout 0.1, every batch full length), peak allocated
  // memory measured on one H200 with torch 2.11 (two optimizer steps each, random weights).
  const engine = [
    { name: "q/k/v r8, checkpointing, 4×512", m: inputs(4, 512, true), measured: 13.7 },
    { name: "q/k/v r8, 4×512", m: inputs(4, 512, false), measured: 21.9 },
    { name: "q/k/v r8, 16×512", m: inputs(16, 512, false), measured: 52.21 },
    { name: "q/k/v r16, checkpointing, 16×512", m: inputs(16, 512, true, QKV, 16), measured: 19.59 },
    { name: "all linear r16, 16×512", m: inputs(16, 512, false, ALL, 16), measured: 75.96 },
    { name: "q/k/v r8, checkpointing, 1×8192", m: inputs(1, 8192, true), measured: 19.57 },
  ];
  it.each(engine)("matches the engine's measured peak within ±6%: $name ($measured GiB)", ({ m, measured }) => {
    expect(peakGiB(m) / measured).toBeGreaterThan(0.94);
    expect(peakGiB(m) / measured).toBeLessThan(1.06);
  });

  it("errs on the safe side of PERFORMANCE.md's HF + peft peaks, within +15%", () => {
    // Self-LLM recipe 4×2 with checkpointing: 13.2 GiB; tuned 16×1 without: 44.9 GiB.
    expect(peakGiB(inputs(4, 512, true)) / 13.2).toBeGreaterThanOrEqual(1);
    expect(peakGiB(inputs(4, 512, true)) / 13.2).toBeLessThan(1.08);
    expect(peakGiB(inputs(16, 512, false)) / 44.9).toBeGreaterThanOrEqual(1);
    expect(peakGiB(inputs(16, 512, false)) / 44.9).toBeLessThan(1.15);
  });

  it("breaks the peak down into weights, LoRA with AdamW, activations and logits", () => {
    const e = estimateMemory(inputs(4, 512, true));
    expect(e.weights).toBe(6_243_584_000 * 2);
    expect(e.lora).toEqual({ params: 1_949_696, bytes: 1_949_696 * 16 });
    expect(e.logits).toBe(2048 * 65024 * 12);
    expect(e.peak).toBe(e.weights + e.lora.bytes + e.activations + e.logits);
    expect(e.need).toBe(e.peak * 1.05 + 512 * 1024 ** 2);
    const chunked = estimateMemory({ ...inputs(4, 512, true), logitsChunk: 512 });
    expect(chunked.logits).toBe(e.logits / 4);
  });
});

describe("the tiny fixtures", () => {
  const shapeOf = (dir: string) => {
    const config = JSON.parse(readFileSync(path.join(fixture("models", dir), "config.json"), "utf8"));
    return modelShape(config, familyFor(config.model_type)!)!;
  };

  it("counts parameters as torch does", () => {
    expect(shapeOf("chatglm3-single").params).toBe(193_088);
    expect(shapeOf("tiny-llama").params).toBe(196_928);
    expect(loraParams(shapeOf("chatglm3-single"), QKV, 8)).toBe(3072);
  });
});

describe("when it does not fit", () => {
  it("picks the largest micro-batch that fits and raises accumulation to keep the effective batch", () => {
    const m = inputs(16, 512, false);
    const fit = fitMicroBatch(m, 40 * GiB, 1);
    expect(fit).not.toBeNull();
    expect(fit?.gradient_checkpointing).toBe(false);
    expect(fit?.batch_size).toBeLessThan(16);
    expect(fit?.batch_size).toBeGreaterThanOrEqual(8);
    expect((fit?.batch_size ?? 0) * (fit?.grad_accum ?? 0)).toBeGreaterThanOrEqual(16);
    const next = estimateMemory({ ...m, microBatch: (fit?.batch_size ?? 0) + 1 });
    expect(next.need).toBeGreaterThan(40 * GiB);
    expect(fit?.need).toBeLessThanOrEqual(40 * GiB);
  });

  it("reports MEMORY_WONT_FIT with the suggestion, turning checkpointing on when nothing fits without", () => {
    const m = inputs(16, 512, false);
    const est = estimateMemory(m);
    const [f] = memoryFindings(est, m, { free: 20 * GiB, deviceName: "NVIDIA A10G", gradAccum: 1 });
    expect(f).toMatchObject({ code: "MEMORY_WONT_FIT", severity: "error", stage: "env" });
    expect(f?.title).toMatch(/^the estimated peak of 5\d\.\d GiB does not fit in 20\.0 GiB free on NVIDIA A10G$/);
    const s = f?.evidence.suggestion as { batch_size: number; grad_accum: number; gradient_checkpointing: boolean };
    expect(s.gradient_checkpointing).toBe(true);
    expect(s.batch_size * s.grad_accum).toBeGreaterThanOrEqual(16);
    expect(f?.fix).toContain("train.gradient_checkpointing: true");
    expect(f?.fix).toContain(`train.batch_size: ${s.batch_size}`);
  });

  it("says so when not one sample fits, warns when it is tight, and stays quiet with room", () => {
    const m = inputs(4, 512, true);
    const est = estimateMemory(m);
    const [none] = memoryFindings(est, m, { free: 12 * GiB, deviceName: "T4", gradAccum: 2 });
    expect(none?.fix).toMatch(/^Not even 1 sample of 512 tokens fits/);
    const [tight] = memoryFindings(est, m, { free: est.need / 0.95, deviceName: "GPU", gradAccum: 2 });
    expect(tight?.code).toBe("MEMORY_TIGHT");
    expect(memoryFindings(est, m, { free: 80 * GiB, deviceName: "H100", gradAccum: 2 })).toEqual([]);
  });

  it("sizes the disk the run writes", () => {
    expect(diskNeed(1_000_000, 2)).toBe(3 * 12_000_000 + 4_000_000 + 64 * 1024 ** 2);
    expect(diskNeed(1_000_000, 2, 1000)).toBe(diskNeed(1_000_000, 2) + 8000);
  });
});
