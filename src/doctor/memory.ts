// Peak training memory before the run: base weights, LoRA parameters with their gradients and AdamW
// states, the activations of the largest micro-batch the run will see, and the loss — compared with the free
// memory the probe found. When it does not fit: the largest micro-batch that does, with the accumulation
// raised to keep the effective batch. (The disk a run needs is in disk-need.ts; the GPU left waiting on short rows
// in gpu-use.ts.)
//
// The largest micro-batch comes from the prepared data's real lengths (worstMicroBatch): the row plan is known
// before training. The footprint per token depends on the engine's path; footprint() is the one place that
// states the arithmetic: the fast path (lorakit's native ChatGLM3 on CUDA: packed rows without padding, fused
// loss, Triton kernels, fused LoRA) and the padded path (transformers' models, the CPU, train.fast_path: false).
//
// Calibration, ChatGLM3-6B shape, bf16, q|k|v r8 α32 dropout 0.1, one H200, torch.cuda.max_memory_allocated,
// held by tests/doctor-memory.test.ts:
// - fast path (bench/RESULTS.md, bench/results_h200.json, issue 12): rows of ≤ 8,192 / 12,288 / 16,384 tokens
//   without checkpointing 36.34 / 48.17 / 59.97 GiB; one 8,192-token sample with low_memory 13.72 GiB; the
//   Self-LLM recipe's batches of 4 at max_length 1024 (data p95 577) 19.6 GiB.
// - padded path (every micro-batch full max_length): 4×512 with checkpointing 13.7 GiB … all linear layers r16
//   76.0 GiB, within −3% … +5% over six settings.
import { packRows } from "../data/index.js";
import { type Finding, makeFinding } from "../findings/index.js";
import { fmtBytes } from "../format.js";
import { loraParams, type ModelShape, targetModule } from "../models/shape.js";
import type { Precision } from "../plan/index.js";
import { rng } from "../rng.js";

const MiB = 1024 ** 2;
/** Memory the CUDA context holds outside torch's allocator. */
const CUDA_CONTEXT = 512 * MiB;
/** Allocator fragmentation on top of the peak of live tensors. */
const FRAGMENTATION = 0.05;
/** Bytes per logit at the loss's peak: the logits, the fp32 log-softmax kept for backward, its gradient. */
const LOGIT_BYTES = 12;
/** fp32 LoRA weight + gradient + AdamW's two moments. */
const LORA_BYTES_PER_PARAM = 16;

export function dtypeBytes(p: Precision): number {
  return p === "fp32" ? 4 : 2;
}

export interface MemoryInputs {
  shape: ModelShape;
  precision: Precision;
  /** Samples per micro-batch (1 with train.pack_tokens: a row is the micro-batch). */
  microBatch: number;
  /** data.max_length, or train.pack_tokens for rows: the most tokens a sample (a row) can have. */
  seqLen: number;
  checkpointing: boolean;
  /** gradient_checkpointing: low_memory (fast path: the MLP and the loss in chunks, the token table on the host). */
  lowMemory?: boolean;
  r: number;
  targets: readonly string[];
  dropout: number;
  device: "cuda" | "cpu";
  /** Rows of logits computed at once by a chunked loss (the full logits never exist). */
  logitsChunk?: number;
  /** train.pack_tokens: a micro-batch is one row of whole samples, ≤ `seqLen` tokens (microBatch 1). */
  packed?: boolean;
  /** The engine's path (default "padded"): "fast" for lorakit's native model on CUDA. */
  path?: EnginePath;
  /** Token lengths of the training samples (prepared data): the largest micro-batch is found from them. */
  lengths?: readonly number[];
  /** Micro-batches the run takes (all epochs, max_steps, every device); default one epoch. */
  microBatches?: number;
  /** Share of the tokens that carry a loss (the fused loss projects only those); default 1. */
  trainedShare?: number;
}

export type EnginePath = "fast" | "padded";

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
  /** Tokens of the largest micro-batch (padding included on the padded path). */
  tokens: number;
  /** Activation bytes saved per token per layer. */
  perTokenPerLayer: number;
  path: EnginePath;
  /** How the largest micro-batch was found. */
  basis: string;
}

// ---------------------------------------------------------------- the largest micro-batch

/** Simulated runs whose largest micro-batch is taken (the engine shuffles with its own generator). */
const REPLICATES = 8;

export interface WorstBatch {
  /** Tokens the micro-batch computes: its samples' sum on the fast path (packed, no padding), samples × its
   * longest on the padded path. */
  tokens: number;
  basis: string;
}

/**
 * The largest micro-batch the run will see. Rows (train.pack_tokens) are cut once in file order
 * (src/data/pack.ts, as the engine cuts them): exact. Batches of `microBatch` samples come from a shuffle the
 * engine seeds itself: the largest of the run's micro-batches over REPLICATES simulated runs, on the real
 * lengths. Without lengths: every micro-batch full (microBatch × seqLen), the worst case.
 */
export function worstMicroBatch(m: MemoryInputs): WorstBatch {
  const fast = m.path === "fast";
  const lengths = m.lengths && m.lengths.length > 0 ? m.lengths.map((n) => Math.min(n, m.seqLen)) : null;
  if (!lengths) {
    return { tokens: m.microBatch * m.seqLen, basis: `every micro-batch full: ${m.microBatch} × ${m.seqLen} tokens` };
  }
  if (m.packed) {
    let worst = 0;
    for (const row of packRows(lengths, m.seqLen)) {
      let sum = 0;
      let longest = 0;
      for (const i of row) {
        sum += lengths[i] as number;
        longest = Math.max(longest, lengths[i] as number);
      }
      worst = Math.max(worst, fast ? sum : row.length * longest);
    }
    return { tokens: worst, basis: `the largest of the run's rows of ≤ ${m.seqLen} tokens (train.pack_tokens)` };
  }
  const b = Math.max(1, Math.min(m.microBatch, lengths.length));
  const perEpoch = Math.ceil(lengths.length / b);
  const batches = Math.max(1, m.microBatches ?? perEpoch);
  const next = rng(0x10ca);
  const order = lengths.map((_, i) => i);
  let worst = 0;
  for (let rep = 0; rep < REPLICATES; rep++) {
    for (let done = 0; done < batches; ) {
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [order[i], order[j]] = [order[j] as number, order[i] as number];
      }
      for (let k = 0; k < perEpoch && done < batches; k++, done++) {
        let sum = 0;
        let longest = 0;
        const end = Math.min(order.length, (k + 1) * b);
        for (let x = k * b; x < end; x++) {
          const n = lengths[order[x] as number] as number;
          sum += n;
          longest = Math.max(longest, n);
        }
        worst = Math.max(worst, fast ? sum : (end - k * b) * longest);
      }
    }
  }
  const how = fast ? "packed without padding" : "padded to their longest sample";
  return {
    tokens: worst,
    basis: `the largest of ${batches} micro-batches of ${b} samples, ${how} (prepared lengths, ${REPLICATES} simulated shuffles)`,
  };
}

// ---------------------------------------------------------------- the footprint

export interface Footprint {
  /** Weights on the device (the token table left out when it lives on the host). */
  weights: number;
  /** LoRA parameters with their gradients and AdamW moments. */
  lora: { params: number; bytes: number };
  /** Saved activations and transients at the peak. */
  activations: number;
  /** The loss's logits (whole, or one chunk). */
  logits: number;
  perTokenPerLayer: number;
}

/**
 * Bytes at the peak of a training step for a micro-batch of `tokens` tokens. The one place that states the
 * arithmetic: d bytes per value of the precision, h hidden, f ffn, q = heads × head_dim, kv = groups ×
 * head_dim, L layers, V vocabulary, T tokens. In brackets, ChatGLM3-6B in bf16 (h 4096, f 13696, q 4096,
 * kv 256, L 28, V 65024).
 *
 * Fast path (the engine's native model on CUDA), saved for backward per token and layer:
 *   the two RMSNorms' inputs (the Triton kernel saves x alone)                  2·h·d        [16,384]
 *   each adapted module: dropout(x) (x itself at p 0), its bool mask, u = x·Aᵀ  in·d + in + r·d  [12,304]
 *   attention: the rotated q and k, the q|k|v output (v is a view that keeps it whole), the output and the
 *   log-sum-exp                                                         (3q + 3kv)·d + 4·heads   [26,240]
 *   SwiGLU's input (its Triton kernel saves nothing else; frozen matmuls save nothing)   2·f·d  [54,784]
 *   together [109,712]; measured: 110.5 KB per token and layer (the slope of the 8k, 12k and 16k rows).
 * Outside the layers, at the forward's end: the final norm's input and output, the trained rows gathered for
 * the loss and their hidden gradient (the fused loss computes it in the forward)     2·h·d + 2·h·d·share.
 * The loss: one chunk of 2,048 rows (512 under low_memory) × V, as float32 logits and their bf16 copy: 6 bytes
 * a logit [0.74 GiB].
 * - no checkpointing: fixed + T·(L·layer + outside) + chunk          [3.10 MB a token: 8,192-token rows 36.1 GiB]
 * - checkpointing: the larger of the forward's end, L·T·h·d (each layer's input) + T·outside + chunk, and a
 *   layer's backward, (L−1)·T·h·d + T·layer + 3·T·h·d (the residual stream's gradients in flight)
 * - low_memory: as checkpointing, with the MLP recomputed 1,024 tokens at a time (2·f·d for 1,024 tokens, not
 *   T) and the token table (V·h·d) in host memory                       [one 8,192-token sample: 13.8 GiB]
 * - fp32 rows on CUDA attend through SDPA with a block mask (flash attention takes fp16/bf16): k and v copied
 *   per head (attention 4q·d: q, the copies of k and v, the output) and the T×T mask, bool and as the
 *   kernel's float bias (5·T² bytes).
 * Fixed: the weights, and the LoRA parameters with their gradients and AdamW's two moments (16 bytes each).
 *
 * Padded path (transformers' models, the CPU, train.fast_path: false), counted tensor by tensor with autograd's
 * saved-tensor hooks: per token and layer both RMSNorm inputs in fp32 (2·4·h), q and the output, k/v-sized
 * tensors five times (k, v, the rotated k, the grouped copies SDPA reads), the gated MLP's 3·f, each adapted
 * module's input cast to the fp32 adapter (4·in, peft casts it) and its 1-byte dropout mask; checkpointing keeps
 * each layer's input plus one layer; at the loss the logits, their fp32 log-softmax and its gradient live
 * together (12 bytes a logit).
 */
export function footprint(m: MemoryInputs, tokens: number): Footprint {
  const s = m.shape;
  const d = dtypeBytes(m.precision);
  const q = s.heads * s.headDim;
  const kv = s.kvHeads * s.headDim;
  const lp = loraParams(s, m.targets, m.r);
  const lora = { params: lp, bytes: lp * LORA_BYTES_PER_PARAM };
  const weights = s.params * d;
  if (m.path !== "fast") {
    let layer = 2 * 4 * s.hidden + (2 * q + 5 * kv) * d + 3 * s.ffn * d;
    for (const t of new Set(m.targets)) {
      const mod = targetModule(s, t);
      if (mod?.perLayer) layer += mod.in * (4 + (m.dropout > 0 ? 1 : 0));
    }
    const activations = m.checkpointing ? s.layers * s.hidden * d * tokens + layer * tokens : s.layers * layer * tokens;
    const logits = Math.min(tokens, m.logitsChunk ?? tokens) * s.vocab * LOGIT_BYTES;
    return { weights, lora, activations, logits, perTokenPerLayer: layer };
  }
  const sdpa = m.device === "cuda" && m.precision === "fp32";
  let adapters = 0;
  for (const t of new Set(m.targets)) {
    const mod = targetModule(s, t);
    if (mod?.perLayer) adapters += mod.in * d + (m.dropout > 0 ? mod.in : 0) + m.r * d;
  }
  // rotated q and k, q|k|v kept whole by v's view, the output; SDPA saves its own copies of k and v per head
  const attention = (sdpa ? 4 * q : 3 * q + 3 * kv) * d + 4 * s.heads;
  const mlp = 2 * s.ffn * d;
  const layer = 2 * s.hidden * d + adapters + attention + mlp;
  const share = m.trainedShare ?? 1;
  const outside = 2 * s.hidden * d * (1 + share);
  const chunk = m.logitsChunk ?? (m.lowMemory ? 512 : 2048);
  const logits = Math.min(Math.ceil(tokens * share), chunk) * s.vocab * 6;
  const mask = sdpa ? 5 * tokens * tokens : 0;
  const residual = tokens * s.hidden * d;
  let activations: number;
  if (!m.checkpointing && !m.lowMemory) {
    activations = tokens * (s.layers * layer + outside) + mask;
  } else {
    const mlpNow = m.lowMemory ? Math.min(tokens, 1024) * mlp : tokens * mlp;
    const forwardEnd = s.layers * residual + tokens * outside;
    const backward = (s.layers - 1) * residual + tokens * (layer - mlp) + mlpNow + 3 * residual;
    activations = Math.max(forwardEnd, backward) + mask;
  }
  const table = m.lowMemory ? s.vocab * s.hidden * d : 0;
  return { weights: weights - table, lora, activations, logits, perTokenPerLayer: layer };
}

/** The peak of the run's largest micro-batch, and what must be free for it. */
export function estimateMemory(m: MemoryInputs): MemoryEstimate {
  const worst = worstMicroBatch(m);
  const f = footprint(m, worst.tokens);
  const peak = f.weights + f.lora.bytes + f.activations + f.logits;
  const overhead = peak * FRAGMENTATION + (m.device === "cuda" ? CUDA_CONTEXT : 0);
  return {
    weights: f.weights,
    lora: f.lora,
    activations: f.activations,
    logits: f.logits,
    peak,
    overhead,
    need: peak + overhead,
    tokens: worst.tokens,
    perTokenPerLayer: f.perTokenPerLayer,
    path: m.path ?? "padded",
    basis: worst.basis,
  };
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
    largest_micro_batch_tokens: est.tokens,
    path: est.path,
    basis: est.basis,
  };
  const fix = suggestionText(fit, m, ctx.gradAccum);
  return [makeFinding(est.need > ctx.free ? "MEMORY_WONT_FIT" : "MEMORY_TIGHT", evidence, { fix })];
}
