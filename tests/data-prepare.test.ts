// Prepared data: our safetensors read back by the Python library, prepared splits read by the engine,
// reuse on unchanged inputs, a new hash on changed ones, the eval split, dropped samples and stats.
import { spawnSync } from "node:child_process";
import { appendFileSync, copyFileSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  loadConversations,
  type PrepareOptions,
  prepareDataset,
  type SplitManifest,
  viewSample,
} from "../src/data/prepare.js";
import { readSafetensors, type SafetensorsFile, writeSafetensors } from "../src/data/safetensors.js";
import { computeStats, lengthStats, type SampleFacts } from "../src/data/stats.js";
import { chatglm3Template } from "../src/data/template.js";
import { loadTokenizer, type Tokenizer } from "../src/data/tokenizer.js";
import { ROOT } from "../src/engine/python.js";
import { LorakitError } from "../src/errors.js";
import { fixture, tmpDir } from "./helpers.js";

const PY = process.env.LORAKIT_PYTHON ?? "/root/.cache/lorakit-probe-venv/bin/python";
const data = (f: string) => path.join(ROOT, "tests", "fixtures", "data", f);
const SYSTEM = "现在你要扮演皇帝身边的女人--甄嬛";

function python(code: string): unknown {
  const r = spawnSync(PY, ["-c", code], {
    encoding: "utf8",
    env: { ...process.env, PYTHONPATH: path.join(ROOT, "engine") },
  });
  if (r.status !== 0) throw new Error(`python failed:\n${r.stderr}`);
  return JSON.parse(r.stdout);
}

function tensor(f: SafetensorsFile, name: string) {
  const t = f.tensors[name];
  if (!t) throw new Error(`no tensor ${name}`);
  return t.data;
}

let glm: Tokenizer;
beforeAll(async () => {
  glm = await loadTokenizer(fixture("tokenizers", "spm-chatglm3"));
});

const options = (over: Partial<PrepareOptions> = {}): PrepareOptions => ({
  files: [data("huanhuan.json")],
  template: "chatglm3",
  tokenizer: glm,
  modelDir: fixture("tokenizers", "spm-chatglm3"),
  modelType: "chatglm",
  maxLength: 512,
  system: SYSTEM,
  split: 0,
  ...over,
});

describe("safetensors", () => {
  it("writes what the safetensors library reads, and reads it back", () => {
    const file = path.join(tmpDir(), "t.safetensors");
    const ids = Int32Array.from([1, -2, 2147483647, -100]);
    const big = BigInt64Array.from([0n, 4n, 1099511627779n]);
    const f = Float32Array.from([0.5, -1.25, 3e-8, 1e30, 7, 8]);
    writeSafetensors(
      file,
      {
        input_ids: { dtype: "I32", shape: [4], data: ids },
        offsets: { dtype: "I64", shape: [3], data: big },
        w: { dtype: "F32", shape: [2, 3], data: f },
      },
      { format: "test", note: "ünïcode" },
    );
    const bytes = readFileSync(file);
    const n = Number(bytes.readBigUInt64LE(0));
    expect((8 + n) % 8).toBe(0);
    const back = readSafetensors(file);
    expect(back.metadata).toEqual({ format: "test", note: "ünïcode" });
    expect([...(tensor(back, "input_ids") as Int32Array)]).toEqual([...ids]);
    expect([...(tensor(back, "offsets") as BigInt64Array)]).toEqual([...big]);
    expect(back.tensors.w?.shape).toEqual([2, 3]);
    const py = python(`
import json
from safetensors import safe_open
with safe_open(${JSON.stringify(file)}, framework="numpy") as f:
    out = {k: {"dtype": str(f.get_tensor(k).dtype), "shape": list(f.get_tensor(k).shape), "values": f.get_tensor(k).flatten().tolist()} for k in f.keys()}
    out["__metadata__"] = f.metadata()
print(json.dumps(out))`) as Record<string, { dtype: string; shape: number[]; values: number[] }>;
    expect(py.input_ids).toEqual({ dtype: "int32", shape: [4], values: [1, -2, 2147483647, -100] });
    expect(py.offsets).toEqual({ dtype: "int64", shape: [3], values: [0, 4, 1099511627779] });
    expect(py.w?.dtype).toBe("float32");
    expect(py.w?.shape).toEqual([2, 3]);
    expect(py.w?.values).toEqual([...f]);
    expect(py.__metadata__).toEqual({ format: "test", note: "ünïcode" });
  });
});

describe("prepareDataset", () => {
  it("writes tokens the engine reads, with a manifest, and reuses them when nothing changed", async () => {
    const cache = tmpDir();
    const first = await prepareDataset(options(), cache);
    expect(first.reused).toBe(false);
    expect(first.dir).toBe(path.join(cache, first.hash));
    expect(existsSync(path.join(first.dir, "tokens.safetensors"))).toBe(true);
    const m = first.manifest;
    expect(m).toMatchObject({
      complete: true,
      split: "train",
      template: { name: "chatglm3" },
      formats: { [data("huanhuan.json")]: "alpaca" },
    });
    expect(m.counts).toMatchObject({ records: 6, samples: 6, dropped: 0, truncated: 0 });
    expect(m.inputs.tokenizer.hash).toBe(glm.hash);
    expect(m.origins.samples.map(([, line]) => line)).toEqual([2, 7, 12, 17, 22, 23]);
    expect(m.stats.endsWithStop.share).toBe(1);
    expect(m.stats.trainedInPrompt.tokens).toBe(0);

    // The same tokens as rendering each conversation directly.
    const { conversations } = loadConversations([data("huanhuan.json")], { system: SYSTEM });
    const t = await readSafetensors(path.join(first.dir, "tokens.safetensors"));
    const ids = [...(tensor(t, "input_ids") as Int32Array)];
    const labels = [...(tensor(t, "labels") as Int32Array)];
    const offsets = [...(tensor(t, "offsets") as BigInt64Array)].map(Number);
    const view = viewSample(conversations[3] as (typeof conversations)[number], chatglm3Template(glm), glm, {
      maxLength: 512,
    });
    expect(ids.slice(offsets[3], offsets[4])).toEqual(view.ids);
    expect(labels.slice(offsets[3], offsets[4])).toEqual(view.labels);
    expect(view.pieces).toHaveLength(view.ids.length);
    expect(view.text).toContain("请用一句话回答");
    expect(m.counts.tokens).toBe(ids.length);

    // The engine's reader accepts it.
    const py = python(`
import json
from lorakit_engine.data import Prepared
p = Prepared(${JSON.stringify(first.dir)})
ids, labels = p.sample(3)
p.check(${m.counts.samples}, ${m.counts.tokens}, ${glm.vocabSize})
print(json.dumps({"n": len(p), "ids": ids.tolist(), "labels": labels.tolist(), "manifest": p.manifest["hash"]}))`) as {
      n: number;
      ids: number[];
      labels: number[];
      manifest: string;
    };
    expect(py).toEqual({ n: 6, ids: view.ids, labels: view.labels, manifest: first.hash });

    const again = await prepareDataset(options(), cache);
    expect(again).toMatchObject({ reused: true, hash: first.hash, dir: first.dir });
    expect(again.train.samples).toBe(6);
    const other = await prepareDataset(options({ maxLength: 300 }), cache);
    expect(other.hash).not.toBe(first.hash);
  });

  it("gives changed input a new hash, and keeps the eval split of old rows when rows are appended", async () => {
    const dir = tmpDir();
    const file = path.join(dir, "rows.jsonl");
    const rows = Array.from({ length: 40 }, (_, i) =>
      JSON.stringify({ instruction: `question ${i}`, input: "", output: `answer ${i}` }),
    );
    writeFileSync(file, `${rows.join("\n")}\n`);
    const cache = tmpDir();
    const a = await prepareDataset(options({ files: [file], split: 0.25, prompts: 3 }), cache);
    expect(a.eval).not.toBeNull();
    const evalA = JSON.parse(readFileSync(path.join(a.dir, "eval", "manifest.json"), "utf8")) as SplitManifest;
    expect(evalA.counts.samples + a.train.samples).toBe(40);
    expect(a.manifest.eval?.origins.map((o) => o.line)).toEqual(evalA.origins.samples.map(([, l]) => l));
    expect(evalA.stats.overlap.samples).toBe(0);
    expect(evalA.prompts).toHaveLength(3);
    expect(evalA.prompts[0]?.prompt_ids.at(-1)).toBe(glm.tokenToId("<|assistant|>"));
    expect(evalA.prompts[0]?.answer_ids.at(-1)).toBe(glm.eosId);

    appendFileSync(
      file,
      `${Array.from({ length: 10 }, (_, i) => JSON.stringify({ instruction: `new ${i}`, input: "", output: "x" })).join("\n")}\n`,
    );
    const b = await prepareDataset(options({ files: [file], split: 0.25, prompts: 3 }), cache);
    expect(b.hash).not.toBe(a.hash);
    const heldA = new Set(a.manifest.eval?.origins.map((o) => o.line));
    const heldB = new Set(b.manifest.eval?.origins.map((o) => o.line).filter((l) => l <= 40));
    expect(heldB).toEqual(heldA);
  });

  it("cuts over-long samples, counts what was lost, and drops samples with nothing left to train", async () => {
    const cache = tmpDir();
    const r = await prepareDataset(options({ maxLength: 40 }), cache);
    const m = r.manifest;
    expect(m.counts.truncated).toBeGreaterThan(0);
    expect(m.counts.trained_tokens_lost).toBeGreaterThan(0);
    expect(m.counts.dropped).toBeGreaterThan(0);
    expect(m.counts.samples + m.counts.dropped).toBe(6);
    expect(m.dropped[0]?.reason).toMatch(/cut by max_length/);
    expect(m.stats.nothingTrained.samples).toBe(m.counts.dropped);
    expect(m.stats.truncated.samples).toBeGreaterThanOrEqual(m.counts.truncated);
    const t = readSafetensors(path.join(r.dir, "tokens.safetensors"));
    const offsets = [...(tensor(t, "offsets") as BigInt64Array)].map(Number);
    expect(offsets.length).toBe(m.counts.samples + 1);
    expect(Math.max(...offsets.slice(1).map((o, i) => o - (offsets[i] as number)))).toBeLessThanOrEqual(40);
    await expect(prepareDataset(options({ maxLength: 12 }), cache)).rejects.toMatchObject({
      code: "DATA_NOTHING_TRAINED",
    });
  });

  it("records skipped lines with file:line, and counts duplicates and train/eval overlap", async () => {
    const dir = tmpDir();
    const train = path.join(dir, "train.jsonl");
    copyFileSync(data("bad-lines.jsonl"), train);
    appendFileSync(train, '{"instruction": "ok 1", "input": "", "output": "fine"}\n');
    const ev = path.join(dir, "eval.jsonl");
    writeFileSync(
      ev,
      '{"instruction": "ok 3", "input": "", "output": "fine"}\n{"instruction": "only eval", "input": "", "output": "yes"}\n',
    );
    const cache = tmpDir();
    await expect(prepareDataset(options({ files: [train], evalFiles: [ev] }), cache)).rejects.toBeInstanceOf(
      LorakitError,
    );
    const r = await prepareDataset(options({ files: [train], evalFiles: [ev], skipBadLines: true }), cache);
    expect(r.manifest.skipped.map((s) => `${path.basename(s.file)}:${s.line}`)).toEqual([
      "train.jsonl:2",
      "train.jsonl:5",
    ]);
    expect(r.manifest.counts.samples).toBe(4);
    expect(r.train.stats.duplicates.samples).toBe(1);
    expect(r.train.stats.duplicates.examples[0]?.map((o) => o.line)).toEqual([1, 7]);
    expect(r.eval?.stats.overlap.samples).toBe(1);
    expect(r.eval?.stats.overlap.origins[0]?.line).toBe(1);
    expect(r.train.stats.overlap.samples).toBe(1);
  });

  it("counts tool results learned on purpose (`loss: true`) apart from a prompt trained by mistake", async () => {
    const file = path.join(tmpDir(), "tools.jsonl");
    const turns = (obsLoss: boolean | undefined) => ({
      conversations: [
        { role: "user", content: "北京天气？" },
        { role: "assistant", metadata: "get_weather", content: "tool_call(city='北京')" },
        { role: "observation", content: "晴，21度", ...(obsLoss === undefined ? {} : { loss: obsLoss }) },
        { role: "assistant", content: "北京今天晴。" },
      ],
    });
    writeFileSync(file, `${JSON.stringify(turns(true))}\n${JSON.stringify(turns(undefined))}\n`);
    const r = await prepareDataset(options({ files: [file], system: undefined }), tmpDir());
    const s = r.train.stats;
    expect(s.trainedInPrompt.asked).toBeGreaterThan(0);
    expect(s.trainedInPrompt.tokens).toBe(0);
    expect(s.endsWithStop).toMatchObject({ of: 2, share: 1 });
  });

  it("flags role markers typed as text (the Self-LLM recipe's flaw)", async () => {
    const dir = tmpDir();
    const file = path.join(dir, "markers.jsonl");
    writeFileSync(
      file,
      '{"instruction": "<|system|>\\n你好<|user|>\\n问题", "input": "", "output": "答"}\n{"instruction": "plain", "input": "", "output": "ok"}\n',
    );
    const r = await prepareDataset(options({ files: [file] }), tmpDir());
    expect(r.train.stats.specialSpellings).toMatchObject({ samples: 1, parsedAsSpecial: 0 });
    expect(r.train.stats.specialSpellings.origins[0]?.line).toBe(1);
  });
});

describe("the eval split", () => {
  const rows = (n: number) =>
    Array.from({ length: n }, (_, i) => ({ instruction: `question ${i}`, input: "", output: `answer ${i}` }));
  const held = (r: Awaited<ReturnType<typeof prepareDataset>>) =>
    (r.manifest.eval?.origins ?? []).map((o) => `${path.basename(o.file)}#${o.sample}`);
  const trained = (r: Awaited<ReturnType<typeof prepareDataset>>) =>
    r.manifest.origins.samples.map(([f, , i]) => `${path.basename(r.manifest.origins.files[f] ?? "")}#${i}`);

  it("holds out its share of a one-line JSON array (json.dump(rows, f)), an indented one, JSONL and several files", async () => {
    const dir = tmpDir();
    const files = {
      minified: path.join(dir, "minified.json"),
      indented: path.join(dir, "indented.json"),
      jsonl: path.join(dir, "rows.jsonl"),
    };
    writeFileSync(files.minified, JSON.stringify(rows(400)));
    writeFileSync(files.indented, JSON.stringify(rows(400), null, 2));
    writeFileSync(
      files.jsonl,
      `${rows(400)
        .map((r) => JSON.stringify(r))
        .join("\n")}\n`,
    );
    const results: Record<string, Awaited<ReturnType<typeof prepareDataset>>> = {};
    for (const [name, file] of Object.entries(files)) {
      const r = await prepareDataset(options({ files: [file], split: 0.1, maxLength: 64 }), tmpDir());
      results[name] = r;
      const n = r.eval?.samples ?? 0;
      expect(n, name).toBeGreaterThanOrEqual(25); // 10% of 400, give or take the hash's luck
      expect(n, name).toBeLessThanOrEqual(55);
      expect(n + r.train.samples, name).toBe(400); // no sample lost
      const t = new Set(trained(r));
      expect(
        held(r).filter((x) => t.has(x)),
        name,
      ).toEqual([]); // no overlap
      expect(new Set([...t, ...held(r)]).size, name).toBe(400);
      expect(r.eval?.stats.overlap.samples, name).toBe(0);
    }
    // The split follows the records, not the file's layout: the same records are held out in all three.
    const ids = (name: string) =>
      held(results[name] as Awaited<ReturnType<typeof prepareDataset>>).map((x) => x.split("#")[1]);
    expect(ids("minified")).toEqual(ids("indented"));
    expect(ids("minified")).toEqual(ids("jsonl"));
    // Every record of the minified file is on line 1; the index tells them apart.
    expect(new Set(results.minified?.manifest.eval?.origins.map((o) => o.line))).toEqual(new Set([1]));
    // Deterministic: the same split again (fresh cache).
    const again = await prepareDataset(options({ files: [files.minified], split: 0.1, maxLength: 64 }), tmpDir());
    expect(held(again)).toEqual(held(results.minified as Awaited<ReturnType<typeof prepareDataset>>));

    // Several files: each file's records keyed by their own index.
    const second = path.join(dir, "second.json");
    writeFileSync(second, JSON.stringify(rows(600).slice(400)));
    const both = await prepareDataset(
      options({ files: [files.minified, second], split: 0.1, maxLength: 64 }),
      tmpDir(),
    );
    expect((both.eval?.samples ?? 0) + both.train.samples).toBe(600);
    expect(both.eval?.samples).toBeGreaterThanOrEqual(40);
    expect(both.eval?.samples).toBeLessThanOrEqual(80);
    const heldBoth = held(both);
    expect(heldBoth.some((x) => x.startsWith("second.json#"))).toBe(true);
    expect(heldBoth.filter((x) => x.startsWith("minified.json#"))).toEqual(
      held(results.minified as Awaited<ReturnType<typeof prepareDataset>>),
    );
    expect(new Set([...trained(both), ...heldBoth]).size).toBe(600);
  });

  it("still finds duplicates and train/eval overlap among the records of one line", async () => {
    const dir = tmpDir();
    const train = path.join(dir, "train.json");
    const ev = path.join(dir, "eval.json");
    const r = rows(10);
    writeFileSync(train, JSON.stringify([...r, r[3], r[3], r[7]]));
    writeFileSync(ev, JSON.stringify([r[7], { instruction: "eval only", input: "", output: "x" }]));
    const p = await prepareDataset(options({ files: [train], evalFiles: [ev] }), tmpDir());
    expect(p.train.stats.duplicates.samples).toBe(3);
    expect(p.train.stats.duplicates.examples.map((g) => g.map((o) => o.sample))).toEqual([
      [3, 10, 11],
      [7, 12],
    ]);
    expect(p.eval?.stats.overlap).toMatchObject({ samples: 1, origins: [{ file: ev, line: 1, sample: 0 }] });
    expect(p.train.stats.overlap.samples).toBe(2); // r[7] twice in train
    // Held-out duplicates of a split file stay together: exact copies hash alike.
    const s = await prepareDataset(options({ files: [train], split: 0.3 }), tmpDir());
    expect(s.eval?.stats.overlap.samples).toBe(0);
  });
});

describe("stats", () => {
  const facts = (over: Partial<SampleFacts>): SampleFacts => ({
    origin: { file: "f", line: 1 },
    length: 10,
    tokens: 10,
    trained: 4,
    trainedBefore: 4,
    truncated: false,
    endsWithStop: true,
    trainedByRole: { assistant: 4 },
    key: "k",
    specialSpelling: false,
    contentSpecials: 0,
    ...over,
  });

  it("percentiles, histogram, trained share, truncation, stop endings and prompt training", () => {
    const l = lengthStats([5, 40, 100, 100, 600]);
    expect(l).toMatchObject({ min: 5, max: 600, p50: 100, p90: 600, mean: 169 });
    expect(l.histogram).toEqual([
      { upTo: 32, count: 1 },
      { upTo: 64, count: 1 },
      { upTo: 128, count: 2 },
      { upTo: 256, count: 0 },
      { upTo: 512, count: 0 },
      { upTo: 1024, count: 1 },
    ]);
    const s = computeStats(
      [
        facts({ key: "a" }),
        facts({
          key: "b",
          length: 30,
          tokens: 20,
          trained: 2,
          trainedBefore: 6,
          truncated: true,
          endsWithStop: false,
          trainedByRole: { assistant: 1, user: 1 },
        }),
        facts({
          key: "a",
          origin: { file: "f", line: 3 },
          trained: 0,
          trainedBefore: 0,
          endsWithStop: false,
          trainedByRole: {},
        }),
      ],
      new Set(["b"]),
    );
    expect(s).toMatchObject({
      samples: 3,
      tokens: 40,
      trainedTokens: 6,
      trainedShare: 6 / 40,
      truncated: { samples: 1, trainedTokensLost: 4, trainedShareLost: 0.4 },
      nothingTrained: { samples: 1, origins: [{ file: "f", line: 3 }] },
      // Judged on the samples not cut and with something trained: the first one only.
      endsWithStop: { samples: 1, of: 1, share: 1, missing: [] },
      trainedInPrompt: { tokens: 1, share: 1 / 6, asked: 0 },
      duplicates: { samples: 1 },
      overlap: { samples: 1 },
    });
  });
});
