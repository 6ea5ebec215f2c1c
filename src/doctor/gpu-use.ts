// MEMORY_GPU_UNDERUSED: when the fast path would leave the GPU waiting on the host (short rows), the
// train.pack_tokens that fills it, with what it changes (samples per step, steps), from the prepared lengths.
import type { RunConfig } from "../config/schema.js";
import { packRows } from "../data/index.js";
import { type Finding, makeFinding } from "../findings/index.js";
import { fmtBytes } from "../format.js";
import { plannedSteps } from "../plan/index.js";
import type { DatasetFacts } from "./config.js";
import { estimateMemory, type MemoryEstimate, type MemoryInputs } from "./memory.js";

/** Rows the fast path fills the GPU with: 8,192-token rows ran at 22,807 tokens/s on an H200 (ChatGLM3-6B),
 * 16,384-token rows only 1% faster at 60 GiB (bench/RESULTS.md). */
export const ROW_TOKENS_FULL = 8192;
/** Micro-batches below this on average leave the GPU waiting on the host: the recipe's 4 samples (~1.2k
 * tokens) ran at 10,000–16,000 tokens/s on the same card. */
export const ROW_TOKENS_SHORT = 4096;

function nextPow2(n: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(1, n)));
}

/**
 * MEMORY_GPU_UNDERUSED: on the fast path without train.pack_tokens, micro-batches of a few samples keep the GPU
 * waiting on the host. Says which train.pack_tokens would fill it (8,192, or the power of two that holds the
 * longest sample; halved until it fits in 90% of `free`) and what that changes, from the prepared lengths:
 * samples per optimizer step (with the accumulation that keeps it nearest the configured one) and steps.
 */
export function gpuUseFindings(
  m: MemoryInputs,
  train: RunConfig["train"],
  data: DatasetFacts,
  free: number,
): Finding[] {
  if (train.pack_tokens !== undefined || m.path !== "fast" || !data.trainLengths || data.trainLengths.length === 0)
    return [];
  const lengths = data.trainLengths.map((n) => Math.min(n, m.seqLen));
  const mean = lengths.reduce((a, b) => a + b, 0) / lengths.length;
  const rowTokens = Math.min(train.batch_size, lengths.length) * mean;
  if (rowTokens >= ROW_TOKENS_SHORT) return [];
  const longest = Math.max(...lengths);
  let pack = Math.max(ROW_TOKENS_FULL, nextPow2(longest));
  let est: MemoryEstimate | null = null;
  for (; pack >= Math.max(longest, ROW_TOKENS_SHORT); pack /= 2) {
    est = estimateMemory({ ...m, microBatch: 1, seqLen: pack, packed: true, lengths });
    if (est.need <= 0.9 * free) break;
    est = null;
  }
  if (!est) return []; // no longer row fits: memory, not the host, is the limit here
  const rows = packRows(lengths, pack).length;
  const perRow = lengths.length / rows;
  const samplesNow = train.batch_size * train.grad_accum * train.devices;
  const accum = Math.max(1, Math.round((train.batch_size * train.grad_accum) / perRow));
  const stepsNow = plannedSteps(data, train);
  const stepsThen = plannedSteps(data, { ...train, pack_tokens: pack, grad_accum: accum });
  return [
    makeFinding("MEMORY_GPU_UNDERUSED", {
      batch_size: train.batch_size,
      row_tokens: Math.round(rowTokens),
      pack_tokens: pack,
      grad_accum: accum,
      samples_now: samplesNow,
      samples_then: Math.round(perRow * accum * train.devices),
      steps_now: stepsNow,
      steps_then: stepsThen,
      rows_per_epoch: rows,
      peak: fmtBytes(est.peak),
      peak_bytes: Math.round(est.peak),
      free: fmtBytes(free),
      mean_sample_tokens: Math.round(mean),
      longest_sample_tokens: longest,
    }),
  ];
}
