// `train.pack_tokens`: whole samples grouped into rows of at most pack_tokens tokens, one row a micro-batch.
// The rows are cut once, in file order (greedy: a row closes when the next sample does not fit), so their
// count, and with it the plan's total_steps, depends on neither seed nor epoch; the engine shuffles the rows
// each epoch. engine/lorakit_engine/data.py `pack_rows` cuts the same rows: both are held to
// tests/fixtures/pack-rows-golden.json.
import { closeSync, openSync, readSync } from "node:fs";
import path from "node:path";
import { LorakitError } from "../errors.js";

/** Sample indices per row. A sample longer than `packTokens` gets a row of its own here (for counting); the
 * doctor reports it (`longSamples`) and the engine refuses it. */
export function packRows(lengths: readonly number[], packTokens: number): number[][] {
  const rows: number[][] = [];
  let used = 0;
  lengths.forEach((n, i) => {
    const last = rows[rows.length - 1];
    if (last && used + n <= packTokens) {
      last.push(i);
      used += n;
    } else {
      rows.push([i]);
      used = n;
    }
  });
  return rows;
}

/** Samples longer than a row: the first one's index and length, how many, and the longest length. */
export function longSamples(
  lengths: readonly number[],
  packTokens: number,
): { sample: number; length: number; count: number; longest: number } | null {
  let found: { sample: number; length: number; count: number; longest: number } | null = null;
  for (const [i, n] of lengths.entries()) {
    if (n <= packTokens) continue;
    found ??= { sample: i, length: n, count: 0, longest: n };
    found.count++;
    found.longest = Math.max(found.longest, n);
  }
  return found;
}

/** Token lengths of a prepared split's samples, from the `offsets` of `<dir>/tokens.safetensors` (only the
 * header and that tensor are read). */
export function preparedLengths(dir: string): number[] {
  const file = path.join(dir, "tokens.safetensors");
  const bad = (what: string) =>
    new LorakitError("DATA_INVALID", `prepared data ${dir}: ${what}`, {
      where: { file },
      hint: "Prepare the data again (delete the prepared/<hash>/ folder; lorakit writes it anew).",
    });
  const fd = openSync(file, "r");
  try {
    const read = (bytes: number, at: number) => {
      const buf = new Uint8Array(bytes);
      if (readSync(fd, buf, 0, bytes, at) !== bytes) throw bad("tokens.safetensors is cut short");
      return buf;
    };
    const n = Number(Buffer.from(read(8, 0)).readBigUInt64LE(0));
    const header = JSON.parse(Buffer.from(read(n, 8)).toString("utf8")) as Record<
      string,
      { dtype: string; data_offsets: [number, number] }
    >;
    const spec = header.offsets;
    if (spec?.dtype !== "I64") throw bad("tokens.safetensors has no int64 offsets");
    const [a, b] = spec.data_offsets;
    const offsets = new BigInt64Array(read(b - a, 8 + n + a).buffer);
    const out: number[] = [];
    for (let i = 1; i < offsets.length; i++) out.push(Number((offsets[i] as bigint) - (offsets[i - 1] as bigint)));
    return out;
  } finally {
    closeSync(fd);
  }
}
