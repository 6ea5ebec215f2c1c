// Which model a checkpoint folder holds, as one hash: config.json and the weight files' contents. Two runs
// name the same model when the hashes agree, whatever the folders are called. Weight files above
// FULL_BYTES are read at fixed places (head, tail and evenly spaced windows) instead of whole, so a 12 GB
// checkpoint costs milliseconds; two different trainings of one architecture differ almost everywhere, so
// the windows tell them apart.
import { createHash } from "node:crypto";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, statSync } from "node:fs";
import path from "node:path";

export interface ModelIdentity {
  /** sha256 hex over config.json and the weight files (see the module's first lines). */
  hash: string;
  /** Weight files hashed, and their total bytes. */
  files: number;
  bytes: number;
  /** Some weight file was read at fixed places rather than whole. */
  sampled: boolean;
}

const FULL_BYTES = 256 * 1024 * 1024;
const EDGE = 1024 * 1024;
const WINDOW = 64 * 1024;
const WINDOWS = 64;
/** Hugging Face weight files (safetensors, or torch .bin shards); training_args.bin is no weight. */
const WEIGHTS = /\.(safetensors|bin)$/;

function hashFile(hash: ReturnType<typeof createHash>, file: string, size: number, fullBytes: number): boolean {
  if (size <= Math.max(fullBytes, 2 * EDGE + WINDOW)) {
    hash.update(readFileSync(file));
    return false;
  }
  const fd = openSync(file, "r");
  try {
    const read = (at: number, n: number) => {
      const buf = Buffer.alloc(n);
      readSync(fd, buf, 0, n, at);
      hash.update(buf);
    };
    read(0, EDGE);
    const span = size - 2 * EDGE - WINDOW;
    for (let i = 0; i < WINDOWS; i++) read(EDGE + Math.floor((span * i) / (WINDOWS - 1)), WINDOW);
    read(size - EDGE, EDGE);
  } finally {
    closeSync(fd);
  }
  return true;
}

/** The identity of the model in `dir`, or null when the folder or its config.json is gone. `fullBytes`: weight
 * files up to this size are read whole. */
export function modelIdentity(dir: string, opts: { fullBytes?: number } = {}): ModelIdentity | null {
  const config = path.join(dir, "config.json");
  if (!existsSync(config)) return null;
  const hash = createHash("sha256");
  const cfg = readFileSync(config);
  hash.update(`config.json\n${cfg.length}\n`);
  hash.update(cfg);
  let files = 0;
  let bytes = 0;
  let sampled = false;
  for (const name of readdirSync(dir)
    .filter((n) => WEIGHTS.test(n) && !n.startsWith("training_args"))
    .sort()) {
    const file = path.join(dir, name);
    const st = statSync(file);
    if (!st.isFile()) continue;
    hash.update(`${name}\n${st.size}\n`);
    sampled = hashFile(hash, file, st.size, opts.fullBytes ?? FULL_BYTES) || sampled;
    files += 1;
    bytes += st.size;
  }
  return { hash: hash.digest("hex"), files, bytes, sampled };
}
