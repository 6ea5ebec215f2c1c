// SHA256SUMS: every folder lorakit writes for later reading (prepared data, the adapter; the engine's checkpoints)
// carries the sha256 of its files in `sha256sum`'s own format (`cd <folder> && sha256sum -c SHA256SUMS` checks it
// by hand), written last; reading the folder checks it and names a file that does not match. The engine reads
// and writes the same file (engine/lorakit_engine/files.py).
//
// sha256 because it is the fastest hash both halves have without a dependency: on a CPU with the SHA extensions
// Node's crypto hashes ~1.3-1.45 GB/s, 1.5-2x blake2b512 (bench/checksums.ts, bench/RESULTS.md).
import { createHash } from "node:crypto";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, statSync } from "node:fs";
import path from "node:path";
import { writeFileAtomic } from "./atomic.js";

export const SUMS = "SHA256SUMS";
const LINE = /^([0-9a-f]{64}) [ *]([^\x00-\x1f/]+)$/;

/** The sha256 of a file, read in pieces (a prepared tokens file can be gigabytes). */
export function sha256File(file: string): string {
  const hash = createHash("sha256");
  const fd = openSync(file, "r");
  try {
    const buf = Buffer.allocUnsafe(8 << 20);
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

/** name → sha256 from `dir`'s SHA256SUMS, or what is wrong with it (a sentence naming it). */
export function readSums(dir: string): Map<string, string> | string {
  const file = path.join(dir, SUMS);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT")
      return `${file} is missing (the folder was written without checksums, or is damaged)`;
    return `${file} cannot be read (${(e as Error).message})`;
  }
  const lines = text.split("\n");
  if (lines.pop() !== "") return `${file} does not end with a newline: it was cut short or changed`;
  const sums = new Map<string, string>();
  for (const [i, line] of lines.entries()) {
    const m = LINE.exec(line);
    if (!m || sums.has(m[2] as string))
      return `${file}:${i + 1} is not a \`sha256  name\` line of its own: ${JSON.stringify(line.slice(0, 80))}`;
    sums.set(m[2] as string, m[1] as string);
  }
  return sums;
}

/** The files directly in `dir` a folder's SHA256SUMS covers, sorted. */
function listed(dir: string, skip: readonly string[]): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isFile() && d.name !== SUMS && !skip.includes(d.name))
    .map((d) => d.name)
    .sort();
}

/**
 * What does not match `dir`'s SHA256SUMS, one sentence per file, each naming it; [] when all match. `names`:
 * only these (each must be listed and match); absent: the whole folder but `skip` (every file listed and
 * matching, every listed file there).
 */
export function checkSums(dir: string, names?: readonly string[], skip: readonly string[] = []): string[] {
  const sums = readSums(dir);
  if (typeof sums === "string") return [sums];
  const wanted =
    names ?? [...new Set([...listed(dir, skip), ...[...sums.keys()].filter((n) => !skip.includes(n))])].sort();
  const problems: string[] = [];
  for (const name of wanted) {
    const file = path.join(dir, name);
    const want = sums.get(name);
    if (want === undefined) problems.push(`${file} is not listed in ${SUMS} (it was not written with the folder)`);
    else if (!existsSync(file) || !statSync(file).isFile()) problems.push(`${file} is missing (listed in ${SUMS})`);
    else {
      const got = sha256File(file);
      if (got !== want)
        problems.push(
          `${file} does not match ${SUMS} (${statSync(file).size} bytes, sha256 ${got.slice(0, 12)}…, written as ${want.slice(0, 12)}…): it changed on disk since it was written`,
        );
    }
  }
  return problems;
}

/** SHA256SUMS's text for these name → sha256 entries, sorted by name. */
export function sumsText(entries: ReadonlyMap<string, string>): string {
  return [...entries]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([name, sha]) => `${sha}  ${name}\n`)
    .join("");
}

/**
 * Writes `dir`'s SHA256SUMS (atomically, synced) over every file directly in it but `skip`; `known` gives the
 * sha256 of files hashed while they were written, so they are not read again.
 */
export function writeSums(
  dir: string,
  known: ReadonlyMap<string, string> = new Map(),
  skip: readonly string[] = [],
): void {
  const entries = new Map<string, string>();
  for (const name of listed(dir, skip)) entries.set(name, known.get(name) ?? sha256File(path.join(dir, name)));
  writeFileAtomic(path.join(dir, SUMS), sumsText(entries), { what: SUMS });
}
