// What checking SHA256SUMS costs: the sha256 of a file of prepared tokens (default 1 GiB) and of a file the size
// of a ChatGLM3-6B LoRA checkpoint (r 8 on query_key_value: 1.95 M parameters, ~23 MiB with AdamW's moments),
// by lorakit (src/files/sums.ts, Node's crypto) and by the engine (lorakit_engine/files.py, hashlib), warm
// (in the page cache, as right after writing or on a second run) and, where the machine lets a root process drop
// the page cache, cold. blake2b beside them: why sha256 (the faster of the two in both, with the SHA extensions).
//
//   npx vite-node bench/checksums.ts -- --gib 1
//
// Results: a table on stdout (bench/RESULTS.md keeps one).
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, openSync, readSync, rmSync, writeFileSync, writeSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { ENGINE_DIR } from "../src/engine/python.js";
import { sha256File } from "../src/files/sums.js";

const { values } = parseArgs({
  options: { gib: { type: "string", default: "1" }, python: { type: "string" } },
  allowPositionals: true,
});
const python = values.python ?? process.env.LORAKIT_PYTHON ?? "python3";
const dir = path.join(os.tmpdir(), `lorakit-bench-sums-${process.pid}`);
spawnSync("mkdir", ["-p", dir]);

function makeFile(name: string, bytes: number): string {
  const file = path.join(dir, name);
  const fd = openSync(file, "w");
  const chunk = Buffer.alloc(8 << 20);
  for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((i * 2654435761) >>> 0, i); // token-like ints
  for (let done = 0; done < bytes; done += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - done));
  closeSync(fd);
  return file;
}

function nodeHash(file: string, algo: string): number {
  const t = performance.now();
  if (algo === "sha256") sha256File(file);
  else {
    const h = createHash(algo);
    const fd = openSync(file, "r");
    const buf = Buffer.allocUnsafe(8 << 20);
    for (let n = readSync(fd, buf); n > 0; n = readSync(fd, buf)) h.update(buf.subarray(0, n));
    closeSync(fd);
    h.digest();
  }
  return (performance.now() - t) / 1000;
}

function pythonHash(file: string, algo: string): number {
  const code = `
import hashlib, sys, time
sys.path.insert(0, ${JSON.stringify(ENGINE_DIR)})
from lorakit_engine.files import sha256_file
t = time.perf_counter()
if ${JSON.stringify(algo)} == "sha256":
    sha256_file(${JSON.stringify(file)})
else:
    h = hashlib.blake2b()
    with open(${JSON.stringify(file)}, "rb") as f:
        while c := f.read(8 << 20):
            h.update(c)
print(time.perf_counter() - t)`;
  const r = spawnSync(python, ["-c", code], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(r.stderr);
  return Number(r.stdout.trim());
}

function dropCaches(): boolean {
  try {
    spawnSync("sync");
    writeFileSync("/proc/sys/vm/drop_caches", "3\n");
    return true;
  } catch {
    return false;
  }
}

const gib = Number(values.gib);
const files = {
  [`prepared tokens, ${gib} GiB`]: makeFile("tokens.safetensors", Math.round(gib * 2 ** 30)),
  "a 6B LoRA checkpoint, 23 MiB": makeFile("checkpoint.bin", 23 << 20),
};
const rows: string[] = ["| file | hashing | warm | cold |", "| --- | --- | --- | --- |"];
for (const [what, file] of Object.entries(files)) {
  const bytes = Number(spawnSync("stat", ["-c", "%s", file], { encoding: "utf8" }).stdout);
  for (const [who, algo, run] of [
    ["lorakit (Node crypto)", "sha256", nodeHash],
    ["lorakit (Node crypto)", "blake2b512", nodeHash],
    ["engine (hashlib)", "sha256", pythonHash],
    ["engine (hashlib)", "blake2b", pythonHash],
  ] as const) {
    run(file, algo); // into the page cache
    const warm = run(file, algo);
    const cold = dropCaches() ? run(file, algo) : null;
    const fmt = (s: number | null) =>
      s === null
        ? "n/a (cannot drop the page cache)"
        : `${(s * 1000).toFixed(0)} ms (${(bytes / s / 1e9).toFixed(2)} GB/s)`;
    rows.push(`| ${what} | ${who} ${algo} | ${fmt(warm)} | ${fmt(cold)} |`);
  }
}
rmSync(dir, { recursive: true, force: true });
console.log(`${os.cpus()[0]?.model ?? "cpu"}, ${os.cpus().length} cores\n${rows.join("\n")}`);
