// Nothing damaged is reused: a prepared cache entry, a rows file and the adapter carry SHA256SUMS (one format
// with the engine and `sha256sum`), and a torn or damaged cache entry is prepared again, saying why.
import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, rmSync, truncateSync, unlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { writeRows } from "../src/data/pack.js";
import { type PrepareOptions, prepareDataset } from "../src/data/prepare.js";
import { loadTokenizer, type Tokenizer } from "../src/data/tokenizer.js";
import { ROOT } from "../src/engine/python.js";
import { LorakitError } from "../src/errors.js";
import { newestVerifiedCheckpoint } from "../src/files/checkpoints.js";
import { checkSums, SUMS, sha256File, writeSums } from "../src/files/sums.js";
import { verifyAdapter } from "../src/report/model-card.js";
import { fixture, runCli, tmpDir, writeCodeWords } from "./helpers.js";

const PY = process.env.LORAKIT_PYTHON as string;
const data = (f: string) => path.join(ROOT, "tests", "fixtures", "data", f);

/** One bit of one byte of `file` flipped, `at` of the way in. */
function flip(file: string, at = 0.5): void {
  const b = readFileSync(file);
  const i = Math.min(b.length - 1, Math.floor(b.length * at));
  b[i] = (b[i] as number) ^ 0x01;
  writeFileSync(file, b);
}

function python(code: string): string {
  const r = spawnSync(PY, ["-c", code], {
    encoding: "utf8",
    env: { ...process.env, PYTHONPATH: path.join(ROOT, "engine") },
  });
  if (r.status !== 0) throw new Error(`python failed:\n${r.stderr}`);
  return r.stdout;
}

let glm: Tokenizer;
beforeAll(async () => {
  glm = await loadTokenizer(fixture("tokenizers", "spm-chatglm3"));
});

const options = (): PrepareOptions => ({
  files: [data("huanhuan.json")],
  template: "chatglm3",
  tokenizer: glm,
  modelDir: fixture("tokenizers", "spm-chatglm3"),
  modelType: "chatglm",
  maxLength: 256,
  split: 0.1,
});

describe("a prepared cache entry", () => {
  it("carries SHA256SUMS per split that sha256sum and the engine accept", async () => {
    const r = await prepareDataset(options(), tmpDir());
    for (const dir of [r.dir, path.join(r.dir, "eval")]) {
      expect(
        readdirSync(dir)
          .filter((f) => f !== "eval")
          .sort(),
      ).toEqual([SUMS, "manifest.json", "tokens.safetensors"]);
      expect(checkSums(dir)).toEqual([]);
      const sha = spawnSync("sha256sum", ["--check", "--strict", SUMS], { cwd: dir, encoding: "utf8" });
      expect(sha.status, sha.stdout + sha.stderr).toBe(0);
      // Hashed while written, as read back.
      expect(readFileSync(path.join(dir, SUMS), "utf8")).toContain(
        `${sha256File(path.join(dir, "tokens.safetensors"))}  tokens.safetensors\n`,
      );
      expect(python(`from lorakit_engine.data import verify; verify(${JSON.stringify(dir)}); print("ok")`)).toBe(
        "ok\n",
      );
    }
  });

  const damages: [string, (dir: string) => void, string][] = [
    ["truncated tokens", (d) => truncateSync(path.join(d, "tokens.safetensors"), 100), "tokens.safetensors"],
    ["a flipped byte in the tokens", (d) => flip(path.join(d, "tokens.safetensors"), 0.6), "tokens.safetensors"],
    ["a flipped byte in the manifest", (d) => flip(path.join(d, "manifest.json"), 0.3), "manifest.json"],
    ["a flipped byte in the eval tokens", (d) => flip(path.join(d, "eval", "tokens.safetensors")), "eval"],
    ["the checksums gone", (d) => unlinkSync(path.join(d, SUMS)), SUMS],
    ["torn: the manifest never written", (d) => unlinkSync(path.join(d, "manifest.json")), "manifest.json"],
  ];
  it.each(damages)("is prepared again, saying why, after %s", async (_, damage, named) => {
    const cache = tmpDir();
    const first = await prepareDataset(options(), cache);
    const tokens = readFileSync(path.join(first.dir, "tokens.safetensors"));
    expect((await prepareDataset(options(), cache)).reused).toBe(true);
    damage(first.dir);
    const again = await prepareDataset(options(), cache);
    expect(again.reused).toBe(false);
    expect(again.dir).toBe(first.dir);
    expect(again.rebuilt).toContain(named);
    expect(again.rebuilt).toContain(first.dir);
    expect(readFileSync(path.join(again.dir, "tokens.safetensors")).equals(tokens)).toBe(true);
    expect(checkSums(again.dir)).toEqual([]);
    expect(readdirSync(cache)).toEqual([first.hash]); // no temporary directory left
    expect((await prepareDataset(options(), cache)).reused).toBe(true);
  });

  it("says so when lorakit data prepares it again", async () => {
    const dir = tmpDir();
    writeCodeWords(dir);
    const cfg = { model: fixture("models", "tiny-llama"), data: { train: "train.json", max_length: 96 } };
    writeFileSync(path.join(dir, "run.yaml"), JSON.stringify(cfg));
    const first = await runCli(["data", "run.yaml", "--json"], { cwd: dir });
    expect(first.code, first.stderr).toBe(0);
    const prepared = readdirSync(path.join(dir, "prepared"));
    flip(path.join(dir, "prepared", prepared[0] as string, "tokens.safetensors"));
    const again = await runCli(["data", "run.yaml"], { cwd: dir });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout + again.stderr).toMatch(
      /the cached prepared data was not reused \(.*tokens\.safetensors does not match SHA256SUMS.*\): prepared again/,
    );
  });
});

describe("the rows of train.pack_tokens", () => {
  it("are listed in SHA256SUMS, and written again when they do not match", () => {
    const dir = tmpDir();
    const file = writeRows(dir, [10, 30, 12, 5], 20);
    const good = readFileSync(file);
    expect(checkSums(dir, ["rows-20.safetensors"])).toEqual([]);
    flip(file, 0.95);
    expect(checkSums(dir, ["rows-20.safetensors"])[0]).toContain("does not match");
    expect(writeRows(dir, [10, 30, 12, 5], 20)).toBe(file);
    expect(readFileSync(file).equals(good)).toBe(true);
    // A second rows file joins the first in SHA256SUMS; both verify, for the engine too.
    writeRows(dir, [10, 30, 12, 5], 40);
    expect(checkSums(dir, ["rows-20.safetensors", "rows-40.safetensors"])).toEqual([]);
    const py = `from lorakit_engine.files import check_sums; print(check_sums(${JSON.stringify(dir)}, ["rows-20.safetensors", "rows-40.safetensors"]))`;
    expect(python(py)).toBe("[]\n");
  });
});

describe("SHA256SUMS", () => {
  it("is one format for both halves: each checks what the other wrote, and names what differs", () => {
    const dir = tmpDir();
    writeFileSync(path.join(dir, "a.json"), "{}\n");
    writeFileSync(path.join(dir, "b.bin"), Buffer.from([0, 1, 2, 255]));
    writeSums(dir);
    const ts = readFileSync(path.join(dir, SUMS), "utf8");
    python(`from lorakit_engine.files import write_sums; write_sums(${JSON.stringify(dir)})`);
    expect(readFileSync(path.join(dir, SUMS), "utf8")).toBe(ts);
    flip(path.join(dir, "b.bin"), 0);
    expect(checkSums(dir)).toEqual([expect.stringContaining(`${path.join(dir, "b.bin")} does not match SHA256SUMS`)]);
    expect(python(`from lorakit_engine.files import check_sums; print(len(check_sums(${JSON.stringify(dir)})))`)).toBe(
      "1\n",
    );
    // The last byte of SHA256SUMS itself (its newline) flipped: refused, not read as the same lines.
    writeSums(dir);
    flip(path.join(dir, SUMS), 1);
    expect(checkSums(dir)[0]).toContain("does not end with a newline");
  });
});

describe("the adapter", () => {
  it("is checked against its SHA256SUMS before its model card is written", () => {
    const dir = path.join(tmpDir(), "adapter");
    mkdirSync(dir);
    for (const [name, text] of [
      ["adapter_config.json", '{"r": 8}\n'],
      ["adapter_model.safetensors", "weights"],
      ["tokenizer.json", "{}"],
      ["README.md", "peft's card"],
    ])
      writeFileSync(path.join(dir, name as string), text as string);
    python(
      `from lorakit_engine.adapter import ADAPTER_UNSUMMED; from lorakit_engine.files import write_sums; write_sums(${JSON.stringify(dir)}, skip=ADAPTER_UNSUMMED)`,
    );
    writeFileSync(path.join(dir, "README.md"), "lorakit's card"); // not in the sums: written over afterwards
    verifyAdapter(dir);
    flip(path.join(dir, "adapter_model.safetensors"));
    rmSync(path.join(dir, "tokenizer.json"));
    let err: unknown;
    try {
      verifyAdapter(dir);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(LorakitError);
    const all = (err as LorakitError).all();
    expect(all.map((e) => e.code)).toEqual(["ADAPTER_CORRUPT", "ADAPTER_CORRUPT"]);
    expect(all[0]?.message).toContain(`${path.join(dir, "adapter_model.safetensors")} does not match SHA256SUMS`);
    expect(all[1]?.message).toContain(`${path.join(dir, "tokenizer.json")} is missing`);
  });
});

describe("the checkpoint a resume takes", () => {
  it("is the newest that verifies, on both sides; the newer ones are named with why", () => {
    const run = tmpDir();
    for (const step of [2, 4, 6]) {
      const dir = path.join(run, "checkpoints", `step-${step}`);
      mkdirSync(dir, { recursive: true });
      writeFileSync(path.join(dir, "state.json"), JSON.stringify({ step }));
      writeFileSync(path.join(dir, "optimizer.pt"), Buffer.alloc(1000, step));
      writeSums(dir);
    }
    mkdirSync(path.join(run, "checkpoints", ".tmp-step-8")); // never a checkpoint
    flip(path.join(run, "checkpoints", "step-6", "optimizer.pt"));
    rmSync(path.join(run, "checkpoints", "step-4", SUMS));
    const got = newestVerifiedCheckpoint(run);
    expect(got.newest).toEqual({ step: 2, dir: path.join(run, "checkpoints", "step-2") });
    expect(got.skipped.map((s) => s.step)).toEqual([6, 4]);
    expect(got.skipped[0]?.why).toContain(`${path.join(run, "checkpoints", "step-6", "optimizer.pt")} does not match`);
    expect(got.skipped[1]?.why).toContain(`${path.join(run, "checkpoints", "step-4", SUMS)} is missing`);
    const py = `from lorakit_engine.checkpoint import newest_verified; p, s = newest_verified(${JSON.stringify(run)}); print(p.name, [x.name for x, _ in s])`;
    expect(python(py)).toBe("step-2 ['step-6', 'step-4']\n");
    expect(newestVerifiedCheckpoint(tmpDir())).toEqual({ newest: null, skipped: [] });
  });
});

describe("lorakit train --resume", () => {
  it("with no checkpoint that verifies: CHECKPOINT_CORRUPT naming each damaged file, before anything is written", async () => {
    const dir = tmpDir();
    writeCodeWords(dir);
    const cfg = { model: fixture("models", "tiny-llama"), data: { train: "train.json", max_length: 96 } };
    writeFileSync(path.join(dir, "run.yaml"), JSON.stringify(cfg));
    const base = path.join(dir, "runs", "run", "checkpoints");
    for (const step of [2, 4]) {
      const ck = path.join(base, `step-${step}`);
      mkdirSync(ck, { recursive: true });
      writeFileSync(path.join(ck, "state.json"), JSON.stringify({ step }));
      writeFileSync(path.join(ck, "optimizer.pt"), Buffer.alloc(1000, step));
      writeSums(ck);
    }
    flip(path.join(base, "step-4", "optimizer.pt"));
    truncateSync(path.join(base, "step-2", "state.json"), 3);
    const before = readdirSync(dir, { recursive: true, encoding: "utf8" }).sort();
    const r = await runCli(["train", "run.yaml", "--resume", "--no-smoke"], { cwd: dir });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("error CHECKPOINT_CORRUPT");
    expect(r.stderr).toContain("no checkpoint that verifies");
    expect(r.stderr).toContain(`${path.join(base, "step-4", "optimizer.pt")} does not match SHA256SUMS`);
    expect(r.stderr).toContain(`${path.join(base, "step-2", "state.json")} does not match SHA256SUMS`);
    expect(r.stderr).toContain("--fresh");
    // Refused before the engine, the store or the run folder saw anything.
    expect(readdirSync(dir, { recursive: true, encoding: "utf8" }).sort()).toEqual(before);
  });
});
