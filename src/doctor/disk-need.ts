// The disk a run needs before it starts: a file's size in whole blocks, one training checkpoint, the adapter,
// and the peak of what the run writes (tests/disk-full.test.ts holds the sizes to real ones).
const KiB = 1024;
const MiB = 1024 * KiB;
/** A file's size as the disk holds it: whole 4 KiB blocks. */
export const onDisk = (bytes: number) => Math.ceil(bytes / (4 * KiB)) * 4 * KiB;

/**
 * One training checkpoint on disk (engine/lorakit_engine/checkpoint.py), as measured on real ones (tests/
 * disk-full.test.ts holds it to 5%): the LoRA tensors (4 bytes a parameter, ~128 bytes of safetensors header a
 * tensor), AdamW's two moments (8 bytes a parameter, ~800 bytes of zip and pickle a tensor), and the small files
 * (the RNG state ~14 KiB, peft's README ~5 KiB, its config, the scheduler, state.json, SHA256SUMS), each file
 * rounded up to whole blocks.
 */
export function checkpointBytes(loraParams: number, loraTensors: number): number {
  return 12 * loraParams + 930 * loraTensors + 48 * KiB;
}

/** The adapter folder on disk: the LoRA tensors, peft's config, lorakit's extras and model card, SHA256SUMS, and
 * `copied` bytes of the base's tokenizer files copied beside them. */
export function adapterBytes(loraParams: number, loraTensors: number, copied: number): number {
  return 4 * loraParams + 128 * loraTensors + 32 * KiB + copied;
}

export interface DiskInputs {
  loraParams: number;
  /** LoRA tensors: two (A and B) a adapted module. */
  loraTensors: number;
  keepCheckpoints: number;
  /** train.patience: early stopping keeps the best eval's checkpoint beside the newest. */
  patience: number;
  /** On-disk bytes of the tokenizer files copied into the adapter. */
  copied: number;
  /** Tokens still to prepare (0 when the prepared data is on disk already). */
  preparedTokens?: number;
}

/**
 * What the run writes at its peak: the checkpoints kept (and the best eval's one with early stopping) plus the
 * one being written, the adapter, the tokens still to prepare (twice while preparing: spooled, then copied), and
 * 1 MiB for the plan, the engine's log and the report.
 */
export function diskNeed(d: DiskInputs): number {
  const checkpoints = d.keepCheckpoints + 1 + (d.patience > 0 ? 1 : 0);
  return (
    checkpoints * checkpointBytes(d.loraParams, d.loraTensors) +
    adapterBytes(d.loraParams, d.loraTensors, d.copied) +
    16 * (d.preparedTokens ?? 0) +
    MiB
  );
}
