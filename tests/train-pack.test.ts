// train.pack_tokens: the row plan against the golden vector shared with the engine
// (engine/tests/test_pack_rows.py), sample lengths read from prepared data, total_steps from rows, the doctor's
// too-long-sample finding and memory estimate, and `lorakit train` with rows end to end.
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { loadConfig, parseConfigText } from "../src/config/load.js";
import { longSamples, packRows, preparedLengths, rowStarts, writeRows } from "../src/data/pack.js";
import { flat, readSafetensors, type Tensor, writeSafetensors } from "../src/data/safetensors.js";
import { type DatasetFacts, estimateDataset, packFindings } from "../src/doctor/config.js";
import { ROOT } from "../src/engine/python.js";
import { LorakitError } from "../src/errors.js";
import { plannedSteps } from "../src/plan/index.js";
import { fixture, runCli, tmpDir, writeCodeWords } from "./helpers.js";

interface Case {
  name: string;
  lengths: number[];
  pack_tokens: number;
  rows?: number[][];
  error?: { sample: number; length: number; count: number; longest: number };
}
const golden = JSON.parse(readFileSync(path.join(ROOT, "tests", "fixtures", "pack-rows-golden.json"), "utf8")) as {
  cases: Case[];
};

const train = (yaml: string) =>
  parseConfigText(`model: m\ndata:\n  train: t.json\ntrain:\n${yaml}`, "/x/run.yaml").config.train;

function writeRun(dir: string, packTokens: number, extra: Record<string, unknown> = {}): string {
  writeCodeWords(dir);
  const cfg = {
    model: fixture("models", "tiny-llama"),
    data: { train: "train.json", eval_split: 0.2, system: "You are terse.", max_length: 96 },
    lora: { r: 4, alpha: 8, dropout: 0.1 },
    train: { epochs: 2, grad_accum: 2, lr: 5e-3, log_every: 1, pack_tokens: packTokens, ...extra },
    samples: { count: 2, max_new_tokens: 4 },
  };
  writeFileSync(path.join(dir, "run.yaml"), JSON.stringify(cfg, null, 1));
  return path.join(dir, "run.yaml");
}

describe("row plan", () => {
  it.each(golden.cases.map((c) => [c.name, c] as const))("reproduces the golden vector: %s", (_, c) => {
    if (c.error) {
      expect(longSamples(c.lengths, c.pack_tokens)).toEqual(c.error);
      return;
    }
    expect(packRows(c.lengths, c.pack_tokens)).toEqual(c.rows);
    expect(longSamples(c.lengths, c.pack_tokens)).toBeNull();
  });

  it("gives a sample longer than a row a row of its own (counted; the doctor and engine refuse it)", () => {
    expect(packRows([10, 30, 12, 5], 20)).toEqual([[0], [1], [2, 3]]);
    expect(packRows([], 8)).toEqual([]);
  });

  it("writes the rows as sample-index boundaries beside the prepared tokens, once", () => {
    expect([...rowStarts([[0, 1], [2], [3, 4, 5]])]).toEqual([0n, 2n, 3n, 6n]);
    expect([...rowStarts([])]).toEqual([0n]);
    const dir = tmpDir();
    const file = writeRows(dir, [10, 30, 12, 5], 20);
    expect(file).toBe(path.join(dir, "rows-20.safetensors"));
    const t = readSafetensors(file).tensors.starts as Tensor;
    expect(t).toMatchObject({ dtype: "I64", shape: [4] });
    expect([...t.data]).toEqual([0n, 1n, 2n, 4n]);
    // No temporary file left behind; the rows are listed in the split's SHA256SUMS.
    expect(readdirSync(dir).sort()).toEqual(["SHA256SUMS", "rows-20.safetensors"]);
  });

  it("reads the sample lengths of prepared data from its offsets", () => {
    const dir = tmpDir();
    const ids = new Int32Array(12);
    writeSafetensors(path.join(dir, "tokens.safetensors"), {
      input_ids: flat(ids),
      labels: flat(ids),
      offsets: flat(new BigInt64Array([0n, 3n, 7n, 12n])),
    });
    expect(preparedLengths(dir)).toEqual([3, 4, 5]);
    writeSafetensors(path.join(dir, "tokens.safetensors"), { input_ids: flat(ids) });
    expect(() => preparedLengths(dir)).toThrow(LorakitError);
  });
});

describe("config and plan", () => {
  it("train.pack_tokens: unset by default, a positive integer", () => {
    expect(train("  epochs: 1\n").pack_tokens).toBeUndefined();
    expect(train("  pack_tokens: 8192\n").pack_tokens).toBe(8192);
    for (const bad of ["0", "-5", "1.5", "lots"]) {
      let err: unknown;
      try {
        train(`  pack_tokens: ${bad}\n`);
      } catch (e) {
        err = e;
      }
      expect(err, bad).toBeInstanceOf(LorakitError);
      expect((err as LorakitError).where?.key).toBe("train.pack_tokens");
    }
  });

  it("total_steps counts rows, one per device per micro-batch, independent of batch_size", () => {
    const lengths = golden.cases.find((c) => c.name.startsWith("40 samples"))?.lengths as number[];
    const facts = { trainSamples: 40, trainTokens: lengths.reduce((a, b) => a + b, 0), trainLengths: lengths };
    // 13 rows of ≤ 512: accumulation 2 → 7 steps an epoch; 2 epochs → 14
    expect(plannedSteps(facts, train("  pack_tokens: 512\n  epochs: 2\n"))).toBe(14);
    expect(plannedSteps(facts, train("  pack_tokens: 512\n  epochs: 2\n  batch_size: 64\n"))).toBe(14);
    // two devices: 7 micro-batches of 2 rows, accumulation 2 → 4 an epoch
    expect(plannedSteps(facts, train("  pack_tokens: 512\n  epochs: 1\n  devices: 2\n"))).toBe(4);
    expect(plannedSteps(facts, train("  pack_tokens: 512\n  max_steps: 3\n"))).toBe(3);
    // without lengths: at least tokens / pack_tokens rows
    const { trainLengths: _, ...counts } = facts;
    expect(plannedSteps(counts, train("  pack_tokens: 512\n  epochs: 1\n  grad_accum: 1\n"))).toBe(
      Math.ceil(facts.trainTokens / 512),
    );
    expect(plannedSteps(facts, train("  epochs: 1\n  grad_accum: 1\n  batch_size: 4\n"))).toBe(10); // unset: samples
  });
});

describe("doctor", () => {
  const facts = (lengths: number[], source: DatasetFacts["source"] = "prepared"): DatasetFacts => ({
    trainSamples: lengths.length,
    evalSamples: 1,
    trainTokens: lengths.reduce((a, b) => a + b, 0),
    trainLengths: lengths,
    trainOrigins: { files: ["/d/train.jsonl"], samples: lengths.map((_, i) => [0, i + 1] as [number, number]) },
    source,
    basis: "test",
  });
  const config = (pack: number) =>
    parseConfigText(
      `model: m\ndata:\n  train: t.json\n  max_length: 512\ntrain:\n  pack_tokens: ${pack}\n`,
      "/x/r.yaml",
    ).config;

  it("refuses a sample longer than a row: which sample, where, how long, and the fix", () => {
    const [f] = packFindings(config(256), facts([100, 300, 40, 420]));
    expect(f).toMatchObject({ code: "CONFIG_PACK_TOKENS_SHORT", severity: "error", stage: "config" });
    expect(f?.title).toContain("training sample 1 (/d/train.jsonl:2) has 300 tokens");
    expect(f?.title).toContain("2 sample(s)");
    expect(f?.fix).toBe(
      "Raise train.pack_tokens to ≥ 420, or lower data.max_length to ≤ 256 (longer samples are then cut).",
    );
    expect(packFindings(config(420), facts([100, 300, 40, 420]))).toEqual([]);
    expect(packFindings(config(256), facts([100, 300], "estimated"))).toEqual([]); // rough lengths: no error
  });

  it("estimates the lengths from the data files when nothing is prepared", async () => {
    const dir = tmpDir();
    const loaded = await loadConfig(writeRun(dir, 64));
    const d = estimateDataset(loaded);
    expect(d.trainLengths).toHaveLength(d.trainSamples);
    expect(plannedSteps(d, loaded.config.train)).toBe(2 * Math.ceil(packRows(d.trainLengths ?? [], 64).length / 2));
  });
});

describe("lorakit train with rows", () => {
  it("plans total_steps from the rows and trains them", async () => {
    const dir = tmpDir();
    writeRun(dir, 160); // samples of about 70 tokens: two a row
    const r = await runCli(["train", "run.yaml"], { cwd: dir });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const plan = JSON.parse(readFileSync(path.join(dir, "runs", "run", "plan.json"), "utf8"));
    expect(plan.train.pack_tokens).toBe(160);
    const rows = packRows(preparedLengths(path.resolve(dir, "runs", "run", plan.data.train.dir)), 160);
    expect(rows.length).toBeGreaterThan(1);
    expect(rows.length).toBeLessThan(plan.data.train.samples);
    expect(plan.train.total_steps).toBe(2 * Math.ceil(rows.length / 2));
    expect(plan.train.steps_per_epoch).toBe(Math.ceil(rows.length / 2));
    // The rows are cut once, here, and handed to the engine beside the prepared tokens.
    expect(path.basename(plan.data.train.rows)).toBe("rows-160.safetensors");
    expect(path.dirname(plan.data.train.rows)).toBe(plan.data.train.dir);
    const starts = readSafetensors(plan.data.train.rows).tensors.starts as Tensor;
    expect(starts.dtype).toBe("I64");
    expect([...starts.data].map(Number)).toEqual([...rowStarts(rows)].map(Number));
    expect(r.stdout).toContain(`step ${plan.train.total_steps}/${plan.train.total_steps}`);
    expect(r.stdout).toContain("padding-free only on the fast path");
  });

  it("refuses, before training, a sample longer than a row", async () => {
    const dir = tmpDir();
    writeRun(dir, 12);
    const r = await runCli(["train", "run.yaml"], { cwd: dir });
    expect(r.code).not.toBe(0);
    const out = r.stdout + r.stderr;
    expect(out).toContain("CONFIG_PACK_TOKENS_SHORT");
    expect(out).toMatch(/training sample 0 \(.*train\.json:\d+\) has \d+ tokens/);
    expect(out).toMatch(/Raise train\.pack_tokens to ≥ \d+, or lower data\.max_length to ≤ 12/);
  });
});
