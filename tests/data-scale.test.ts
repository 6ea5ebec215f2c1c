// Data preparation at scale: files are streamed in bounded batches (the same records whatever the read and
// batch sizes), batches run on worker threads and come back in file order (the same bytes as one thread and
// as the in-memory path), problems are named as one pass would name them, the held-out share's fix-up runs a
// second pass, a killed preparation's leftovers are removed, `lorakit data` reads no further than the samples it
// shows, and progress is shown.
// Speed is measured in bench/prepare-scale.ts, never here.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { PassThrough } from "node:stream";
import { beforeAll, describe, expect, it } from "vitest";
import { DataProgress } from "../src/cli/data-progress.js";
import type { Io } from "../src/cli/io.js";
import {
  buildSample,
  loadConversations,
  type PrepareOptions,
  type PrepareProgress,
  pickConversations,
  prepareDataset,
  splitValue,
} from "../src/data/prepare.js";
import { PrepareProgressText } from "../src/data/progress-text.js";
import { readSamples } from "../src/data/read.js";
import { flat, writeSafetensors } from "../src/data/safetensors.js";
import { chatglm3Template } from "../src/data/template.js";
import { loadTokenizer, type Tokenizer } from "../src/data/tokenizer.js";
import { ROOT } from "../src/engine/python.js";
import { LorakitError } from "../src/errors.js";
import { bundleForNode } from "./bundle.js";
import { caught, fixture, tmpDir } from "./helpers.js";

const MODEL = fixture("tokenizers", "spm-chatglm3");
let glm: Tokenizer;
/** The worker script, compiled from the sources (the product uses dist/data/prepare-worker.js). */
let workerScript: string;

beforeAll(async () => {
  glm = await loadTokenizer(MODEL);
  const dir = fixture("workers");
  mkdirSync(dir, { recursive: true });
  workerScript = await bundleForNode(
    path.join(ROOT, "src", "data", "prepare-worker.ts"),
    path.join(dir, "prepare-worker.mjs"),
  );
});

const options = (over: Partial<PrepareOptions>): PrepareOptions => ({
  files: [],
  template: "chatglm3",
  tokenizer: glm,
  modelDir: MODEL,
  modelType: "chatglm",
  maxLength: 96,
  system: "现在你要扮演皇帝身边的女人--甄嬛",
  split: 0,
  workers: 0,
  ...over,
});

/** Seeded alpaca records, Chinese and English, some long enough to be cut (a few prompts even fill max_length)
 * and some with history. */
function records(n: number, seed = 1): Record<string, unknown>[] {
  let s = seed;
  const rand = () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s / 2 ** 31;
  };
  const zh = ["臣妾参见皇上", "嬛嬛，你过来", "小主，夜深了", "本宫累了", "皇后娘娘贤德", "温太医医术高明", "😊"];
  const en = ["Sure, here is", "the answer", "is forty-two.", "Please note", "that these numbers", "vary."];
  const text = (k: number, words: string[]) =>
    Array.from({ length: k }, () => words[Math.floor(rand() * words.length)]).join(words === zh ? "，" : " ");
  return Array.from({ length: n }, (_, i) => {
    const words = rand() < 0.3 ? en : zh;
    const r: Record<string, unknown> = {
      instruction: `${text(rand() < 0.05 ? 60 : 1 + Math.floor(rand() * 4), words)} #${i}`,
      input: rand() < 0.2 ? text(2, words) : "",
      output: text(1 + Math.floor(rand() * (rand() < 0.1 ? 40 : 8)), words),
    };
    if (rand() < 0.2) r.history = [[text(2, words), text(3, words)]];
    return r;
  });
}

const jsonl = (rows: unknown[]) => `${rows.map((r) => JSON.stringify(r)).join("\n")}\n`;

async function rejected(p: Promise<unknown>): Promise<LorakitError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof LorakitError) return e;
    throw e;
  }
  throw new Error("expected a LorakitError");
}

const problems = (e: LorakitError) => e.all().map((x) => ({ code: x.code, message: x.message, where: x.where }));

/** Everything a preparation wrote, the manifests without their creation time. */
function written(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const sub of ["", "eval"]) {
    const tokens = path.join(dir, sub, "tokens.safetensors");
    try {
      out[`${sub}tokens`] = readFileSync(tokens).toString("base64");
      out[`${sub}manifest`] = readFileSync(path.join(dir, sub, "manifest.json"), "utf8").replace(
        /"created": "[^"]*"/,
        "",
      );
    } catch {
      // no eval split
    }
  }
  return out;
}

describe("reading in pieces", () => {
  const dir = tmpDir();
  const files: Record<string, string | Buffer> = {
    "bom-crlf.jsonl": `\uFEFF${jsonl(records(30)).replaceAll("\n", "\r\n")}\r\n  \r\n\u3000\n{"instruction": "last", "output": "no newline"}`,
    "bad-lines.jsonl": `${jsonl(records(5))}{bad\n\n${jsonl(records(3, 7))}{"instruction": "x",}\n`,
    "pretty.json": JSON.stringify(
      [...records(20), { instruction: 'brackets ] } [ { and "quotes" \\ here', output: "a\\\\b\n]" }],
      null,
      2,
    ),
    "minified.json": `  \n${JSON.stringify(records(25))}\n\u3000\n`,
    "bad-array.json":
      '[\n {"instruction": "one", "output": "1"},\n {"instruction": "two", "output": "2",},\n {"instruction": "三", "output": "3"}\n]',
    "trailing-comma.json": '[{"instruction": "a", "output": "b"},\n]',
    "unclosed.json": '[{"instruction": "a", "output": "b"},\n {"instruction": "never closed',
    "after.json": '[{"instruction": "a", "output": "b"}]\n  x',
    "bad-utf8.jsonl": Buffer.concat([Buffer.from(jsonl(records(4))), Buffer.from([0xc4, 0xe3, 0x0a])]),
  };
  for (const [name, body] of Object.entries(files)) writeFileSync(path.join(dir, name), body);

  const read = (name: string, scan = {}, skipBadLines = false) => {
    try {
      return { ok: readSamples([path.join(dir, name)], { skipBadLines, scan }) };
    } catch (e) {
      if (e instanceof LorakitError) return { error: problems(e) };
      throw e;
    }
  };

  it("gives the same records, skips and problems whatever the read and batch sizes", () => {
    for (const name of Object.keys(files)) {
      for (const skip of [false, true]) {
        const whole = read(name, {}, skip);
        for (const scan of [
          { readBytes: 1, batchRecords: 1 },
          { readBytes: 2, batchRecords: 3 },
          { readBytes: 3, batchRecords: 2, batchBytes: 10 },
          { readBytes: 5, batchRecords: 512 },
          { readBytes: 64, batchRecords: 4 },
        ]) {
          expect(read(name, scan, skip), `${name} ${JSON.stringify(scan)} skip ${skip}`).toEqual(whole);
        }
      }
    }
    // What they are: records with their lines, BOM and CRLF handled; located problems.
    const bom = read("bom-crlf.jsonl").ok;
    expect(bom?.records).toHaveLength(31);
    expect(bom?.bomFiles).toBe(1);
    expect(bom?.records.at(-1)?.origin).toMatchObject({ line: 34, sample: 30 });
    expect(read("pretty.json").ok?.records.at(-1)?.value).toMatchObject({ output: "a\\\\b\n]" });
    expect(read("minified.json").ok?.records.map((r) => r.origin.line)).toEqual(new Array(25).fill(2));
    expect(read("bad-array.json").error).toMatchObject([{ code: "DATA_BAD_JSON", where: { line: 3, sample: 1 } }]);
    expect(read("trailing-comma.json").error).toMatchObject([{ code: "DATA_BAD_JSON", where: { line: 2 } }]);
    expect(read("unclosed.json").error).toMatchObject([{ message: /never closed/, where: { line: 2 } }]);
    expect(read("after.json").error).toMatchObject([{ message: /text after the closing/, where: { line: 2 } }]);
    expect(read("bad-utf8.jsonl").error).toMatchObject([{ code: "DATA_BAD_ENCODING", where: { line: 5 } }]);
    expect(read("bad-lines.jsonl", {}, true).ok?.skipped.map((s) => s.line)).toEqual([6, 11]);
  });
});

describe("preparing in a stream", () => {
  it("writes the same bytes on worker threads as on one, in batches of any size, as the in-memory path", async () => {
    const dir = tmpDir();
    const file = path.join(dir, "train.jsonl");
    writeFileSync(file, jsonl(records(400)));
    const ev = path.join(dir, "eval.json");
    writeFileSync(ev, JSON.stringify(records(30, 5), null, 1));
    const runs = [
      { workers: 0, batchRecords: 512 },
      { workers: 0, batchRecords: 1 },
      { workers: 2, batchRecords: 7, workerScript },
      { workers: 1, batchRecords: 64, workerScript },
    ];
    for (const over of [
      { files: [file], split: 0.1 },
      { files: [file], evalFiles: [ev] },
    ]) {
      const outs = [];
      for (const run of runs) {
        const r = await prepareDataset(options({ ...over, ...run }), tmpDir());
        expect(r.reused).toBe(false);
        outs.push(written(r.dir));
      }
      expect(outs[0]?.evaltokens, "an eval split").toBeDefined();
      for (const o of outs.slice(1)) expect(o).toEqual(outs[0]);
    }

    // The in-memory path: every conversation rendered, the kept ones' ids and labels concatenated.
    const r = await prepareDataset(options({ files: [file], workers: 2, workerScript, batchRecords: 16 }), tmpDir());
    const { conversations } = loadConversations([file], { system: options({}).system as string });
    const template = chatglm3Template(glm);
    const kept = conversations
      .map((c) => buildSample(c, template, { maxLength: 96 }).labeled)
      .filter((l) => l.trained > 0);
    expect(kept.length).toBeLessThan(conversations.length); // some answers were cut away: dropped
    const ids = Int32Array.from(kept.flatMap((l) => l.ids));
    const labels = Int32Array.from(kept.flatMap((l) => l.labels));
    const offsets = new BigInt64Array(kept.length + 1);
    kept.forEach((l, i) => {
      offsets[i + 1] = (offsets[i] as bigint) + BigInt(l.ids.length);
    });
    const reference = path.join(dir, "reference.safetensors");
    writeSafetensors(
      reference,
      { input_ids: flat(ids), labels: flat(labels), offsets: flat(offsets) },
      { format: "lorakit-prepared-v1" },
    );
    expect(readFileSync(path.join(r.dir, "tokens.safetensors")).equals(readFileSync(reference))).toBe(true);
    expect(r.manifest.origins.samples).toHaveLength(kept.length);
    expect(r.manifest.counts.dropped).toBe(conversations.length - kept.length);
  });

  it("holds at most a few batches per worker in flight", async () => {
    const dir = tmpDir();
    const file = path.join(dir, "train.jsonl");
    writeFileSync(file, jsonl(records(3000)));
    for (const run of [
      { workers: 0, batchRecords: 16 },
      { workers: 2, batchRecords: 16, workerScript },
    ]) {
      const seen: PrepareProgress[] = [];
      const r = await prepareDataset(options({ files: [file], ...run, onProgress: (p) => seen.push(p) }), tmpDir());
      const prepare = seen.filter((p) => p.phase === "prepare");
      expect(prepare.length).toBeGreaterThan(0);
      expect(prepare.at(-1)).toMatchObject({ records: 3000, inFlight: 0, bytes: prepare.at(-1)?.totalBytes });
      expect(prepare.at(-1)?.workers).toBe(run.workers);
      // Three batches per worker (one on the main thread) at most: memory does not grow with the file.
      for (const p of prepare) expect(p.inFlight).toBeLessThanOrEqual(3 * Math.max(1, run.workers) * 16);
      expect(seen.some((p) => p.phase === "hash") && seen.some((p) => p.phase === "write")).toBe(true);
      expect(r.manifest.counts.samples + r.manifest.counts.dropped).toBe(3000);
    }
  });

  it("holds out the record with the smallest hash when the share would hold out none (a second pass)", async () => {
    const dir = tmpDir();
    const file = path.join(dir, "train.jsonl");
    const rows = records(40, 3);
    writeFileSync(file, jsonl(rows));
    const hashes = rows.map((row) => splitValue(row));
    const smallest = hashes.indexOf(Math.min(...hashes));
    for (const run of [{ workers: 0 }, { workers: 2, workerScript, batchRecords: 8 }]) {
      const r = await prepareDataset(options({ files: [file], split: 1e-12, ...run }), tmpDir());
      expect(r.manifest.eval?.origins.map((o) => o.sample)).toEqual([smallest]);
      expect(r.train.samples + (r.eval?.samples ?? 0)).toBeLessThanOrEqual(40);
    }
  });

  it("names every problem as one pass over the files would, on workers too", async () => {
    const dir = tmpDir();
    const train = path.join(dir, "train.jsonl");
    const rows = records(60).map((r) => JSON.stringify(r));
    rows[3] = "{bad";
    rows[40] = '{"instruction": "no output"}';
    rows[41] = '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}';
    rows[55] = "[1]";
    writeFileSync(train, `${rows.join("\n")}\n`);
    const all = [];
    for (const run of [{ workers: 0 }, { workers: 2, workerScript, batchRecords: 4 }]) {
      const read = await rejected(prepareDataset(options({ files: [train], ...run }), tmpDir()));
      expect(problems(read)).toMatchObject([{ code: "DATA_BAD_JSON", where: { line: 4 } }]);
      const norm = await rejected(prepareDataset(options({ files: [train], skipBadLines: true, ...run }), tmpDir()));
      all.push(problems(norm));
    }
    expect(all[0]?.map((p) => [p.code, p.where?.line])).toEqual([
      ["DATA_MISSING_FIELD", 41],
      ["DATA_MIXED_FORMATS", 42],
      ["DATA_BAD_RECORD", 56],
    ]);
    expect(all[1]).toEqual(all[0]);
  });
});

describe("what a killed preparation leaves", () => {
  it("is removed by the next preparation once its process is gone; a running one's is kept", async () => {
    const dir = tmpDir();
    const file = path.join(dir, "train.jsonl");
    writeFileSync(file, jsonl(records(20)));
    const cache = tmpDir();
    const gone = spawnSync(process.execPath, ["-e", "0"]).pid as number; // exited: its pid is free
    const dead = path.join(cache, `.tmp-0123456789abcdef-${gone}-00ff00ff`);
    const alive = path.join(cache, `.tmp-0123456789abcdef-${process.ppid}-00ff00ff`);
    for (const d of [dead, alive]) {
      mkdirSync(d);
      writeFileSync(path.join(d, ".train.input_ids.spool"), Buffer.alloc(1024));
    }
    await prepareDataset(options({ files: [file] }), cache);
    expect(existsSync(dead)).toBe(false);
    expect(existsSync(alive)).toBe(true);
    expect(readdirSync(cache).filter((n) => n.startsWith(".tmp-"))).toEqual([path.basename(alive)]);
  });
});

describe("reading only as far as needed", () => {
  it("picks samples from the start of a file whose end is broken", () => {
    const dir = tmpDir();
    const file = path.join(dir, "train.jsonl");
    writeFileSync(file, Buffer.concat([Buffer.from(jsonl(records(2000))), Buffer.from([0xff, 0x0a])]));
    expect(caught(() => readSamples([file])).code).toBe("DATA_BAD_ENCODING");
    const { picked, count } = pickConversations([file], [0, 2], {});
    expect([...picked.keys()]).toEqual([0, 2]);
    expect(count).toBe(3);
    expect(picked.get(2)?.origin).toMatchObject({ line: 3, sample: 2 });
  });
});

describe("progress", () => {
  const p = (over: Partial<PrepareProgress>): PrepareProgress => ({
    phase: "prepare",
    bytes: 0,
    totalBytes: 1 << 30,
    records: 0,
    elapsedS: 1,
    inFlight: 0,
    workers: 2,
    ...over,
  });

  it("says samples, bytes of the total, samples/s and ETA", () => {
    const t = new PrepareProgressText();
    expect(t.format(p({ phase: "hash", bytes: 1 << 29 }))).toBe("data        hashing 512 MiB of 1.0 GiB (50%)");
    t.format(p({ elapsedS: 2, bytes: 0, records: 0 }));
    expect(t.format(p({ elapsedS: 12, bytes: 1 << 29, records: 250_000 }))).toBe(
      "data        preparing 250,000 samples, 512 MiB of 1.0 GiB (50%), 25,000 samples/s, ETA 10s, 2 workers",
    );
  });

  it("redraws one line in a terminal and prints plain lines every few seconds otherwise", () => {
    const capture = (tty: boolean) => {
      const stdout = new PassThrough() as PassThrough & { isTTY?: boolean };
      stdout.isTTY = tty;
      let text = "";
      stdout.on("data", (d) => {
        text += d;
      });
      const io = { stdout, stderr: new PassThrough(), stdin: new PassThrough(), env: {}, cwd: "/" } as unknown as Io;
      return { io, text: () => text };
    };
    const tty = capture(true);
    const live = new DataProgress(tty.io, 5);
    for (let s = 1; s <= 3; s++) live.update(p({ elapsedS: s, records: s * 100, bytes: s << 20 }));
    live.end();
    expect(tty.text().split("\r\x1b[2K")).toHaveLength(5);
    expect(tty.text()).not.toContain("\n");

    const plain = capture(false);
    const lines = new DataProgress(plain.io, 5);
    for (let s = 0; s <= 12; s++) lines.update(p({ elapsedS: s, records: s * 100, bytes: s << 20 }));
    expect(plain.text().trim().split("\n")).toHaveLength(2); // at 5 s and 10 s
    expect(plain.text()).not.toContain("\r");
  });
});
