// The prepared-data cache: an input file's identity for the content hash, manifest.json written in pieces, an
// entry verified against its SHA256SUMS before reuse (and read back as a result), and the temporary
// directories of killed preparations removed.
import { createHash, randomBytes } from "node:crypto";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync } from "node:fs";
import path from "node:path";
import { HashedFile } from "../files/atomic.js";
import { checkSums } from "../files/sums.js";
import {
  MANIFEST_VERSION,
  type Manifest,
  type PreparedSplit,
  type PrepareResult,
  type SplitManifest,
} from "./prepare-types.js";
import type { FileInfo } from "./read.js";
import { notFound } from "./scan.js";
import type { ChatTemplate } from "./template.js";

/** A data file's identity for the content hash, read in pieces (the file is never held whole). */
export function fileInfo(file: string, progress?: (bytes: number) => void): Omit<FileInfo, "records"> {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (e) {
    throw notFound(file, e);
  }
  const hash = createHash("sha256");
  const buf = Buffer.allocUnsafe(8 << 20);
  let head: Buffer | undefined;
  let bytes = 0;
  try {
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      if (!head) head = Buffer.from(buf.subarray(0, Math.min(n, 64)));
      else if (head.length < 64) head = Buffer.concat([head, buf.subarray(0, Math.min(n, 64 - head.length))]);
      hash.update(buf.subarray(0, n));
      bytes += n;
      progress?.(n);
    }
  } finally {
    closeSync(fd);
  }
  head ??= Buffer.alloc(0);
  const text = head.toString("utf8").replace(/^\uFEFF/, "");
  return {
    path: path.resolve(file),
    sha256: hash.digest("hex"),
    bytes,
    kind: text.trimStart().startsWith("[") ? "json" : "jsonl",
    bom: head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf,
  };
}

/**
 * `JSON.stringify(m, null, 1)` with `origins` placed after `counts` as JSON.stringify would, its samples
 * written one at a time (a million samples are tens of megabytes of text, never held as one string).
 */
export function writeManifest(
  file: string,
  m: object,
  origins: { files: string[]; each: (fn: (t: SplitManifest["origins"]["samples"][number]) => void) => void },
): string {
  const marker = `__samples_${randomBytes(8).toString("hex")}__`;
  const placed: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(m)) {
    placed[k] = v;
    if (k === "counts") placed.origins = { files: origins.files, samples: marker };
  }
  const text = JSON.stringify(placed, null, 1);
  const at = text.indexOf(`"${marker}"`);
  if (at < 0) throw new Error("internal: no origins in the manifest");
  const indent = /^ */.exec(text.slice(text.lastIndexOf("\n", at) + 1))?.[0] ?? "";
  const out = new HashedFile(file);
  try {
    const put = (s: string) => out.write(Buffer.from(s, "utf8"));
    put(text.slice(0, at));
    let first = true;
    let chunk = "";
    origins.each((t) => {
      chunk += `${first ? "[\n" : ",\n"}${indent} [\n${t.map((x) => `${indent}  ${x}`).join(",\n")}\n${indent} ]`;
      first = false;
      if (chunk.length > 1 << 20) {
        put(chunk);
        chunk = "";
      }
    });
    put(`${chunk}${first ? "[]" : `\n${indent}]`}${text.slice(at + marker.length + 2)}\n`);
    return out.finish().sha256;
  } finally {
    out.close();
  }
}

/** What a split's SHA256SUMS must vouch for (the engine checks the same: engine/lorakit_engine/data.py). */
const SPLIT_FILES = ["tokens.safetensors", "manifest.json"];

/**
 * The manifest of a cache entry whose files all match their SHA256SUMS; or why it is not to be reused (a
 * sentence naming the file); or undefined when there is no entry.
 */
export function reusable(dir: string): Manifest | string | undefined {
  if (!existsSync(dir)) return undefined;
  const problems = checkSums(dir, SPLIT_FILES);
  if (problems.length > 0) return problems[0];
  let m: Manifest;
  try {
    m = JSON.parse(readFileSync(path.join(dir, "manifest.json"), "utf8")) as Manifest;
  } catch (e) {
    return `${path.join(dir, "manifest.json")} is not JSON (${(e as Error).message})`;
  }
  if (m.complete !== true || m.version !== MANIFEST_VERSION)
    return `${path.join(dir, "manifest.json")} is not a complete version ${MANIFEST_VERSION} manifest`;
  if (m.eval) {
    const evalProblems = checkSums(path.join(dir, "eval"), SPLIT_FILES);
    if (evalProblems.length > 0) return evalProblems[0];
  }
  return m;
}

export function result(
  dir: string,
  manifest: Manifest,
  reused: boolean,
  template: ChatTemplate,
  rebuilt: string | null = null,
): PrepareResult {
  let evalSplit: PreparedSplit | null = null;
  if (manifest.eval) {
    const em = JSON.parse(readFileSync(path.join(dir, "eval", "manifest.json"), "utf8")) as SplitManifest;
    evalSplit = {
      dir: path.join(dir, "eval"),
      samples: em.counts.samples,
      tokens: em.counts.tokens,
      trainedTokens: em.counts.trained_tokens,
      stats: em.stats,
    };
  }
  return {
    hash: manifest.hash,
    dir,
    reused,
    rebuilt,
    manifest,
    template,
    train: {
      dir,
      samples: manifest.counts.samples,
      tokens: manifest.counts.tokens,
      trainedTokens: manifest.counts.trained_tokens,
      stats: manifest.stats,
    },
    eval: evalSplit,
  };
}

/**
 * The manifest with `origins` (after `counts`, where manifest.json has it) read from manifest.json when first
 * asked for: a million samples' origins are not kept in memory unless someone looks.
 */
export function lazyOrigins(manifest: Omit<Manifest, "origins">, file: string): Manifest {
  let origins: Manifest["origins"] | undefined;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(manifest)) {
    out[k] = v;
    if (k !== "counts") continue;
    Object.defineProperty(out, "origins", {
      enumerable: true,
      get() {
        origins ??= (JSON.parse(readFileSync(file, "utf8")) as Manifest).origins;
        return origins;
      },
    });
  }
  return out as unknown as Manifest;
}

/** Bytes of the files under `dir` (what a preparation had written when it stopped). */
export function bytesUnder(dir: string): number {
  let n = 0;
  try {
    for (const d of readdirSync(dir, { withFileTypes: true, recursive: true })) {
      if (d.isFile()) n += statSync(path.join(d.parentPath ?? d.path, d.name)).size;
    }
  } catch {
    // gone already
  }
  return n;
}

/**
 * Temporary directories of preparations whose process is gone (killed: they never reached their rename).
 * Their token spools can be gigabytes; a directory whose process still runs is left alone.
 */
export function removeAbandoned(cacheRoot: string): void {
  for (const name of readdirSync(cacheRoot)) {
    const pid = /^\.tmp-[0-9a-f]+-(\d+)-[0-9a-f]+$/.exec(name)?.[1];
    if (pid === undefined || Number(pid) === process.pid) continue;
    try {
      process.kill(Number(pid), 0);
      continue; // alive (or another user's): not ours to remove
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ESRCH") continue;
    }
    rmSync(path.join(cacheRoot, name), { recursive: true, force: true });
  }
}
