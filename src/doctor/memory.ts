// Peak training memory before the run: base weights, LoRA parameters with their gradients and AdamW
// states, activations for the chosen micro-batch, max length and checkpointing, and the logits — compared
// with the free memory the probe found. When it does not fit: the largest micro-batch that does, with the
// accumulation raised to keep the effective batch.
//
// Calibration (every micro-batch full max_length, the worst batch of a run, where the peak happens):
// - lorakit's engine, ChatGLM3-6B shape, bf16, LoRA dropout 0.1, measured on an H200
//   (torch.cuda.max_memory_allocated, tests/doctor-memory.test.ts): within −3% … +5% over six settings
//   (4×512 with checkpointing 13.7 measured vs 13.9 GiB estimated; 16×512 without 52.2 vs 50.6; all linear
//   layers r16 76.0 vs 74.4).
// - PERFORMANCE.md's HF Trainer + peft baseline peaks are lower (its batches are padded to their longest
//   sample, often short of max_length): 13.2 vs 13.9 GiB (+5%) for 4×2 with checkpointing, 44.9 vs 50.6 GiB
//   (+13%) for 16×1 without, up to +35% with all linear layers adapted. There the estimate errs on the safe
//   side.
import type { Family } from "../models/families.js";
import { type Finding, makeFinding } from "./finding.js";

export interface ModuleShape {
  in: number;
  out: number;
  /** One per decoder layer (false: the output layer). */
  perLayer: boolean;
}

export interface ModelShape {
  modelType: string;
  layers: number;
  hidden: number;
  ffn: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  tied: boolean;
  /** All parameters. */
  params: number;
  /** Parameters in matrix products (every layer's linears and the output layer): FLOPs = 2 × this per token. */
  matmulParams: number;
  /** Linear modules by leaf name. */
  modules: Record<string, ModuleShape>;
}

export type Precision = "bf16" | "fp16" | "fp32";

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
/** Memory the CUDA context holds outside torch's allocator. */
const CUDA_CONTEXT = 512 * MiB;
/** Allocator fragmentation on top of the peak of live tensors. */
const FRAGMENTATION = 0.05;
/** Bytes per logit at the loss's peak: the logits, the fp32 log-softmax kept for backward, its gradient. */
const LOGIT_BYTES = 12;
/** fp32 LoRA weight + gradient + AdamW's two moments. */
const LORA_BYTES_PER_PARAM = 16;

export function fmtBytes(n: number): string {
  if (n >= GiB) return `${(n / GiB).toFixed(1)} GiB`;
  if (n >= MiB) return `${(n / MiB).toFixed(0)} MiB`;
  return `${Math.max(0, Math.round(n / 1024))} KiB`;
}

function num(config: Record<string, unknown>, ...keys: string[]): number | undefined {
  for (const k of keys) {
    const v = config[k];
    if (typeof v === "number" && Number.isFinite(v)) return v;
  }
  return undefined;
}

/** The shape of a checkpoint from its config.json (null when a needed key is missing). */
export function modelShape(config: Record<string, unknown>, family: Family): ModelShape | null {
  const native = family.builder === "native";
  const hidden = num(config, "hidden_size");
  const layers = num(config, ...family.layerKeys);
  const heads = num(config, "num_attention_heads");
  const ffn = num(config, native ? "ffn_hidden_size" : "intermediate_size");
  const vocab = num(config, "padded_vocab_size", "vocab_size");
  if (!hidden || !layers || !heads || !ffn || !vocab) return null;
  const headDim = num(config, native ? "kv_channels" : "head_dim") ?? hidden / heads;
  const kvHeads = native
    ? config.multi_query_attention
      ? (num(config, "multi_query_group_num") ?? heads)
      : heads
    : (num(config, "num_key_value_heads") ?? heads);
  const q = heads * headDim;
  const kv = kvHeads * headDim;
  const tied = config.tie_word_embeddings === true;
  const modules: Record<string, ModuleShape> = {};
  const add = (name: string, i: number, o: number, perLayer = true) => {
    modules[name] = { in: i, out: o, perLayer };
  };
  if (native) {
    add("query_key_value", hidden, q + 2 * kv);
    add("dense", q, hidden);
    add("dense_h_to_4h", hidden, 2 * ffn);
    add("dense_4h_to_h", ffn, hidden);
    add("output_layer", hidden, vocab, false);
  } else {
    add("q_proj", hidden, q);
    add("k_proj", hidden, kv);
    add("v_proj", hidden, kv);
    add("o_proj", q, hidden);
    if (family.allLinear.includes("gate_up_proj")) add("gate_up_proj", hidden, 2 * ffn);
    else {
      add("gate_proj", hidden, ffn);
      add("up_proj", hidden, ffn);
    }
    add("down_proj", ffn, hidden);
    add("lm_head", hidden, vocab, false);
  }
  const perLayer = Object.values(modules)
    .filter((m) => m.perLayer)
    .reduce((s, m) => s + m.in * m.out, 0);
  const matmulParams = layers * perLayer + vocab * hidden;
  // Biases: ChatGLM3's query_key_value (add_qkv_bias), Qwen2's q/k/v.
  const qkvBias = native ? config.add_qkv_bias === true || config.add_bias_linear === true : family.name === "qwen2";
  const bias = qkvBias ? q + 2 * kv : 0;
  const params = vocab * hidden + layers * (perLayer + bias + 2 * hidden) + hidden + (tied ? 0 : vocab * hidden);
  return {
    modelType: String(config.model_type ?? family.name),
    layers,
    hidden,
    ffn,
    heads,
    kvHeads,
    headDim,
    vocab,
    tied,
    params,
    matmulParams,
    modules,
  };
}

/** The modules a target name stands for (its last dotted part is the leaf name). */
function targetModule(shape: ModelShape, target: string): ModuleShape | undefined {
  return shape.modules[target.split(".").pop() ?? target];
}

/** LoRA parameters: r × (in + out) for every adapted module. Unknown names count nothing. */
export function loraParams(shape: ModelShape, targets: readonly string[], r: number): number {
  let n = 0;
  for (const t of new Set(targets)) {
    const m = targetModule(shape, t);
    if (m) n += r * (m.in + m.out) * (m.perLayer ? shape.layers : 1);
  }
  return n;
}

export function dtypeBytes(p: Precision): number {
  return p === "fp32" ? 4 : 2;
}

export interface MemoryInputs {
  shape: ModelShape;
  precision: Precision;
  microBatch: number;
  seqLen: number;
  checkpointing: boolean;
  r: number;
  targets: readonly string[];
  dropout: number;
  device: "cuda" | "cpu";
  /** Tokens per chunk when the loss is computed in chunks (the full logits never exist). */
  logitsChunk?: number;
  /** train.pack_tokens: a micro-batch is one row of `seqLen` tokens (microBatch 1). */
  packed?: boolean;
}

export interface MemoryEstimate {
  /** Bytes. */
  weights: number;
  lora: { params: number; bytes: number };
  activations: number;
  logits: number;
  /** Live tensors at the peak (what torch.cuda.max_memory_allocated reports). */
  peak: number;
  /** CUDA context and fragmentation on top of the peak. */
  overhead: number;
  /** What must be free: peak + overhead. */
  need: number;
  tokens: number;
  /** Activation bytes saved per token per layer. */
  perTokenPerLayer: number;
}

/**
 * Saved for backward, per token and layer, in the activation dtype (d bytes) unless said (counted tensor by
 * tensor with autograd's saved-tensor hooks on the engine's ChatGLM3):
 * - two RMSNorms keep their input in fp32 (4·h bytes each);
 * - attention keeps q and its output, and k/v-sized tensors five times (k, v, the rotated k, the grouped
 *   copies SDPA reads);
 * - the gated MLP keeps its gate/up output (2·ffn) and the activation (ffn);
 * - each adapted module keeps its input cast to the fp32 adapter dtype (4 bytes; peft casts it) and a 1-byte
 *   dropout mask;
 * frozen base matmuls keep nothing (no weight gradient). With checkpointing only each layer's input is kept,
 * plus one layer recomputed at a time. Logits: at the loss's peak the logits, their fp32 log-softmax kept
 * for backward and its gradient live together, 12 bytes per logit.
 */
export function estimateMemory(m: MemoryInputs): MemoryEstimate {
  const s = m.shape;
  const d = dtypeBytes(m.precision);
  const tokens = m.microBatch * m.seqLen;
  const q = s.heads * s.headDim;
  const kv = s.kvHeads * s.headDim;
  let perTokenPerLayer = 2 * 4 * s.hidden + (2 * q + 5 * kv) * d + 3 * s.ffn * d;
  for (const t of new Set(m.targets)) {
    const mod = targetModule(s, t);
    if (mod?.perLayer) perTokenPerLayer += mod.in * (4 + (m.dropout > 0 ? 1 : 0));
  }
  const activations = m.checkpointing
    ? s.layers * s.hidden * d * tokens + perTokenPerLayer * tokens
    : s.layers * perTokenPerLayer * tokens;
  const logits = Math.min(tokens, m.logitsChunk ?? tokens) * s.vocab * LOGIT_BYTES;
  const weights = s.params * d;
  const lp = loraParams(s, m.targets, m.r);
  const lora = { params: lp, bytes: lp * LORA_BYTES_PER_PARAM };
  const peak = weights + lora.bytes + activations + logits;
  const overhead = peak * FRAGMENTATION + (m.device === "cuda" ? CUDA_CONTEXT : 0);
  return { weights, lora, activations, logits, peak, overhead, need: peak + overhead, tokens, perTokenPerLayer };
}

export interface Fit {
  batch_size: number;
  grad_accum: number;
  gradient_checkpointing: boolean;
  need: number;
}

/** The largest micro-batch (≤ the configured one) whose need fits in `free`, at one checkpointing setting. */
function largestFit(m: MemoryInputs, free: number, gradAccum: number, checkpointing: boolean): Fit | null {
  const effective = m.microBatch * gradAccum;
  for (let b = m.microBatch; b >= 1; b--) {
    const est = estimateMemory({ ...m, microBatch: b, checkpointing });
    if (est.need <= free) {
      return {
        batch_size: b,
        grad_accum: Math.ceil(effective / b),
        gradient_checkpointing: checkpointing,
        need: est.need,
      };
    }
  }
  return null;
}

/**
 * The largest micro-batch (≤ the configured one) that fits in `free`, with the accumulation that keeps the
 * effective batch (micro-batch × accumulation) at least what it was. Checkpointing is turned on when nothing
 * fits without it, or when it allows a micro-batch more than twice as large (its recompute costs about a
 * third more compute; tiny micro-batches cost more). Null when not even one sample fits.
 */
export function fitMicroBatch(m: MemoryInputs, free: number, gradAccum: number): Fit | null {
  const ck = largestFit(m, free, gradAccum, true);
  if (m.checkpointing) return ck;
  const plain = largestFit(m, free, gradAccum, false);
  if (plain && (!ck || plain.batch_size * 2 >= ck.batch_size)) return plain;
  return ck;
}

function suggestionText(fit: Fit | null, m: MemoryInputs, gradAccum: number): string {
  if (m.packed) {
    const first =
      fit?.gradient_checkpointing && !m.checkpointing ? "Set train.gradient_checkpointing: true, or lower" : "Lower";
    return `${first} train.pack_tokens (rows of ${m.seqLen} tokens), load a smaller model, or use a GPU with more memory.`;
  }
  if (!fit) {
    return `Not even 1 sample of ${m.seqLen} tokens fits: lower data.max_length, load a smaller model, or use a GPU with more memory.`;
  }
  const parts = [`train.batch_size: ${fit.batch_size}`, `train.grad_accum: ${fit.grad_accum}`];
  if (fit.gradient_checkpointing && !m.checkpointing) parts.push("train.gradient_checkpointing: true");
  const same = fit.batch_size === m.microBatch && fit.grad_accum === gradAccum;
  return same
    ? `Set ${parts.slice(2).join(", ") || "nothing"} (needs about ${fmtBytes(fit.need)}).`
    : `Set ${parts.join(", ")} (effective batch ${m.microBatch * gradAccum} kept; about ${fmtBytes(fit.need)}).`;
}

/** MEMORY_WONT_FIT when the need exceeds `free`, MEMORY_TIGHT above 90% of it. */
export function memoryFindings(
  est: MemoryEstimate,
  m: MemoryInputs,
  ctx: { free: number; deviceName: string; gradAccum: number },
): Finding[] {
  if (est.need <= 0.9 * ctx.free) return [];
  const fit = fitMicroBatch(m, ctx.free * 0.9, ctx.gradAccum) ?? fitMicroBatch(m, ctx.free, ctx.gradAccum);
  const evidence = {
    need: fmtBytes(est.need),
    free: fmtBytes(ctx.free),
    device: ctx.deviceName,
    need_bytes: Math.round(est.need),
    free_bytes: ctx.free,
    breakdown: {
      weights: fmtBytes(est.weights),
      lora_and_adamw: fmtBytes(est.lora.bytes),
      activations: fmtBytes(est.activations),
      logits: fmtBytes(est.logits),
      overhead: fmtBytes(est.overhead),
    },
    micro_batch: m.microBatch,
    max_length: m.seqLen,
    gradient_checkpointing: m.checkpointing,
    precision: m.precision,
    suggestion: fit
      ? { batch_size: fit.batch_size, grad_accum: fit.grad_accum, gradient_checkpointing: fit.gradient_checkpointing }
      : null,
    basis: m.packed
      ? "every micro-batch one full row of train.pack_tokens tokens (the worst batch, where the peak happens)"
      : "every micro-batch padded to max_length (the worst batch, where the peak happens)",
  };
  const fix = suggestionText(fit, m, ctx.gradAccum);
  return [makeFinding(est.need > ctx.free ? "MEMORY_WONT_FIT" : "MEMORY_TIGHT", evidence, { fix })];
}

/** Disk for the run: kept checkpoints (adapter + AdamW moments, one more while writing), the adapter, slack. */
export function diskNeed(loraParamCount: number, keepCheckpoints: number, preparedTokens = 0): number {
  const checkpoint = loraParamCount * 4 * 3;
  return (keepCheckpoints + 1) * checkpoint + loraParamCount * 4 + preparedTokens * 8 + 64 * MiB;
}
