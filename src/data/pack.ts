// `train.pack_tokens`: whole samples grouped into rows of at most pack_tokens tokens, one row a micro-batch.
// The rows are cut once, here, in file order (greedy: a row closes when the next sample does not fit), so their
// count, and with it the plan's total_steps, depends on neither seed nor epoch. They are written beside the
// prepared tokens (rows-<pack_tokens>.safetensors) for the engine, which shuffles them each epoch and never
// packs again. tests/fixtures/pack-rows-golden.json holds the cut. The rows file is listed in the split's
// SHA256SUMS (src/files/sums.ts) like the tokens: one that does not match (or is not listed) is written again.
import { existsSync, renameSync, rmSync } from "node:fs";
import path from "node:path";
import { LorakitError } from "../errors.js";
import { fsyncDir, tempBeside, writeFileAtomic } from "../files/atomic.js";
import { whileWriting } from "../files/disk.js";
import { checkSums, readSums, SUMS, sumsText } from "../files/sums.js";
import { flat, readSafetensors, writeSafetensors } from "./safetensors.js";

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

function damaged(dir: string, file: string, what: string): LorakitError {
  return new LorakitError("DATA_INVALID", `prepared data ${dir}: ${what}`, {
    where: { file },
    hint: "Prepare the data again (delete the prepared/<hash>/ folder; lorakit writes it anew).",
  });
}

/** Token lengths of a prepared split's samples, from the `offsets` of `<dir>/tokens.safetensors`. */
export function preparedLengths(dir: string): number[] {
  const file = path.join(dir, "tokens.safetensors");
  let offsets: BigInt64Array;
  try {
    const t = readSafetensors(file).tensors.offsets;
    if (t?.dtype !== "I64") throw damaged(dir, file, "tokens.safetensors has no int64 offsets");
    offsets = t.data as BigInt64Array;
  } catch (e) {
    throw e instanceof LorakitError && e.code === "DATA_INVALID" ? e : damaged(dir, file, (e as Error).message);
  }
  const out: number[] = [];
  for (let i = 1; i < offsets.length; i++) out.push(Number((offsets[i] as bigint) - (offsets[i - 1] as bigint)));
  return out;
}

/** The rows file of a prepared split for `packTokens`. */
export function rowsFile(dir: string, packTokens: number): string {
  return path.join(dir, `rows-${packTokens}.safetensors`);
}

/** Where each row starts: sample indices, rows + 1 of them (row i holds samples starts[i] … starts[i+1] - 1). */
export function rowStarts(rows: readonly (readonly number[])[]): BigInt64Array {
  const starts = new BigInt64Array(rows.length + 1);
  let at = 0;
  rows.forEach((row, i) => {
    starts[i] = BigInt(at);
    at += row.length;
  });
  starts[rows.length] = BigInt(at);
  return starts;
}

/**
 * Writes the rows of a prepared split (`starts`, int64) unless they are there already and match the split's
 * SHA256SUMS; returns the file. Same split, same lengths, same rows: written under a temporary name, listed
 * in SHA256SUMS, then renamed (a crash between leaves a listed file that does not match: written again).
 */
export function writeRows(dir: string, lengths: readonly number[], packTokens: number): string {
  const file = rowsFile(dir, packTokens);
  if (existsSync(file) && checkSums(dir, [path.basename(file)]).length === 0) return file;
  const tmp = tempBeside(file);
  const starts = rowStarts(packRows(lengths, packTokens));
  return whileWriting(
    () => ({
      what: `the rows of train.pack_tokens ${packTokens}`,
      dir,
      writing: file,
      need: starts.byteLength + 4096,
      basis: "its row starts",
      kept: "the prepared tokens are intact.",
    }),
    () => {
      const { sha256 } = writeSafetensors(tmp, { starts: flat(starts) });
      const sums = readSums(dir);
      const entries = new Map(typeof sums === "string" ? [] : sums);
      entries.set(path.basename(file), sha256);
      writeFileAtomic(path.join(dir, SUMS), sumsText(entries), { what: SUMS });
      renameSync(tmp, file);
      fsyncDir(dir);
      return file;
    },
    () => rmSync(tmp, { force: true }),
  );
}
