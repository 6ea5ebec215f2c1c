// A disk that fills up, for real: each test mounts a small tmpfs (as root; these machines and CI run the tests as
// root). Where the mount is refused (an unprivileged container), the tests are skipped with the reason printed. A training run whose second checkpoint cannot fit;
// prepared data, the rows file, the report and the run store on a full disk. Each time: DISK_FULL naming the
// path and what the write needed against what was free, what was written before intact, no temporary file left.
import { spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { writeRows } from "../src/data/pack.js";
import { type PrepareOptions, prepareDataset } from "../src/data/prepare.js";
import { loadTokenizer, type Tokenizer } from "../src/data/tokenizer.js";
import { adapterBytes, checkpointBytes, onDisk } from "../src/doctor/disk-need.js";
import { ROOT } from "../src/engine/python.js";
import type { LorakitError } from "../src/errors.js";
import { writeFileAtomic } from "../src/files/atomic.js";
import { diskFullError, freeBytes, isDiskFull } from "../src/files/disk.js";
import { checkSums } from "../src/files/sums.js";
import { fmtBytes } from "../src/format.js";
import { readCheckpoint, TOKENIZER_FILES } from "../src/models/checkpoint.js";
import { loraParams, loraTensors, modelShape } from "../src/models/shape.js";
import { writeReport } from "../src/report/html.js";
import { RunStore } from "../src/runs/store.js";
import { caught, fixture, runCli, tmpDir, writeCodeWords } from "./helpers.js";

/** A tmpfs of `size` bytes mounted at `dir`; `fill()` takes what is left of it. */
class SmallFs {
  private fillers: string[] = [];

  constructor(
    readonly dir: string,
    size: number,
  ) {
    mkdirSync(dir, { recursive: true });
    const r = spawnSync("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir], { encoding: "utf8" });
    if (r.status !== 0)
      throw new Error(
        `this test mounts a small tmpfs and needs root (or CAP_SYS_ADMIN): \`mount -t tmpfs\` failed: ${r.stderr || r.error?.message}`,
      );
    mounted.push(this);
  }

  /** Every byte left taken by a file of zeros (as another process would take them). */
  fill(): void {
    const file = path.join(this.dir, `filler-${this.fillers.length}`);
    this.fillers.push(file);
    const fd = openSync(file, "w");
    try {
      for (const size of [1 << 20, 4096, 1]) {
        const zeros = Buffer.alloc(size);
        try {
          for (;;) writeSync(fd, zeros);
        } catch (e) {
          if (!isDiskFull(e)) throw e;
        }
      }
    } finally {
      closeSync(fd);
    }
    expect(freeBytes(this.dir)).toBe(0);
  }

  unfill(): void {
    for (const f of this.fillers) rmSync(f, { force: true });
    this.fillers = [];
  }

  grow(size: number): void {
    const r = spawnSync("mount", ["-o", `remount,size=${size}`, this.dir], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`remounting ${this.dir} failed: ${r.stderr}`);
  }

  unmount(): void {
    spawnSync("umount", ["-l", this.dir]);
  }
}

/** Why a tmpfs cannot be mounted here (not root, no CAP_SYS_ADMIN), or null when it can. */
function mountRefused(): string | null {
  const dir = tmpDir("lorakit-mount-probe-");
  const r = spawnSync("mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", dir], { encoding: "utf8" });
  if (r.status === 0) spawnSync("umount", ["-l", dir]);
  rmSync(dir, { recursive: true, force: true });
  return r.status === 0 ? null : (r.stderr || r.error?.message || `mount exited ${r.status}`).trim();
}
const REFUSED = mountRefused();
if (REFUSED) console.warn(`disk-full tests skipped: they mount a small tmpfs, and here \`mount\` fails: ${REFUSED}`);
/** A describe that runs where a tmpfs can be mounted. */
const onTmpfs = REFUSED ? describe.skip : describe;

const mounted: SmallFs[] = [];
afterEach(() => {
  for (const fs of mounted.splice(0)) fs.unmount();
});

/** Temporary files lorakit (or the engine) would leave: `.tmp-*` folders, `.<name>.tmp-*` files. */
function temporaries(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: "utf8" }).filter((p) => /(^|\/)\.[^/]*tmp/.test(p));
}

function blocks(dir: string): number {
  return readdirSync(dir).reduce((n, f) => n + statSync(path.join(dir, f)).blocks * 512, 0);
}

/**
 * What a run stopped by a full disk at checkpoint step-4 must leave (both training tests): DISK_FULL with the
 * need and the free space, step-2 kept and verifying, no temporary file, the run failed in the store with the
 * reason. Returns the checkpoints folder.
 */
function stoppedAtStep4(stderr: string, runDir: string, work: string): string {
  const base = path.join(runDir, "checkpoints");
  expect(stderr).toContain("error DISK_FULL");
  expect(stderr).toMatch(/it needs about \d+ (KiB|MiB) \(the size of step-2\), \d+ (KiB|MiB) free on that filesystem/);
  expect(stderr).toContain("step-2 is the last checkpoint, intact");
  expect(readdirSync(base)).toEqual(["step-2"]);
  expect(checkSums(path.join(base, "step-2"))).toEqual([]);
  expect(temporaries(runDir)).toEqual([]);
  const db = new Database(path.join(work, "runs", "lorakit.db"), { readonly: true });
  const run = db.prepare("SELECT status, error FROM runs WHERE name='run'").get() as { status: string; error: string };
  db.close();
  expect(run.status).toBe("failed");
  expect(run.error).toMatch(/^DISK_FULL: no space left for checkpoint step-4 in /);
  return base;
}

const TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

onTmpfs("a training run on a small filesystem", () => {
  it("whose second checkpoint cannot fit: DISK_FULL with the need, step-2 kept, the run failed in the store, then resumed", async () => {
    const dir = tmpDir();
    writeCodeWords(dir);
    const model = fixture("models", "tiny-llama");
    const cfg = {
      model,
      data: { train: "train.json", max_length: 96 },
      // r 64 on every projection: the checkpoint (LoRA weights and AdamW's moments) outweighs the run's other files.
      lora: { r: 64, alpha: 128, dropout: 0, targets: TARGETS },
      train: { epochs: 2, batch_size: 4, grad_accum: 2, lr: 5e-3, log_every: 1, save_every: 2 },
      samples: { count: 2, max_new_tokens: 4 },
    };
    writeFileSync(path.join(dir, "run.yaml"), JSON.stringify(cfg));
    const info = readCheckpoint(model);
    const shape = modelShape(info.config, info.family);
    if (!shape) throw new Error("no shape for the tiny llama");
    const [p, t] = [loraParams(shape, TARGETS, 64), loraTensors(shape, TARGETS)];
    const one = checkpointBytes(p, t); // the doctor's estimate of one checkpoint
    // The run folder (not the store beside it) on a filesystem with room for one checkpoint and a half.
    const fs = new SmallFs(path.join(dir, "runs", "run"), onDisk(1.5 * one));

    const r = await runCli(["train", "run.yaml", "--no-smoke"], { cwd: dir });
    expect(r.code).toBe(1);
    const base = stoppedAtStep4(r.stderr, fs.dir, dir);
    expect(r.stderr).toContain(`no space left for checkpoint step-4 in ${base}`);
    expect(r.stderr).toContain("--resume");
    // The doctor's estimate is what the engine wrote, to 5%.
    const real = blocks(path.join(base, "step-2"));
    expect(Math.abs(one - real) / real, `estimated ${fmtBytes(one)}, written ${fmtBytes(real)}`).toBeLessThan(0.05);

    // With room again, the run resumes from step-2 and completes; nothing was lost.
    fs.grow(16 << 20);
    const resumed = await runCli(["train", "run.yaml", "--resume"], { cwd: dir });
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stdout).toMatch(/resumed from step-2/);
    const adapter = path.join(fs.dir, "adapter");
    expect(checkSums(adapter, undefined, ["README.md"])).toEqual([]);
    const copied = TOKENIZER_FILES.filter((f) => existsSync(path.join(model, f))).reduce(
      (n, f) => n + onDisk(statSync(path.join(model, f)).size),
      0,
    );
    const realAdapter = blocks(adapter);
    const estimate = adapterBytes(p, t, copied);
    expect(Math.abs(estimate - realAdapter) / realAdapter, `${estimate} vs ${realAdapter}`).toBeLessThan(0.1);
  });
});

/**
 * A `sitecustomize.py` for the engine's interpreter (on PYTHONPATH): just before the engine writes optimizer.pt
 * of checkpoint step-`step`, every byte left on the filesystem at `dir` is taken, as another process would take
 * it. The write that follows meets a real ENOSPC from the real tmpfs, mid-checkpoint, past the free-space check.
 */
function fillMidCheckpoint(dir: string, step: number): NodeJS.ProcessEnv {
  const hook = tmpDir();
  writeFileSync(
    path.join(hook, "sitecustomize.py"),
    `import importlib.machinery, sys

def _fill(module):
    save = module._torch_save
    def fill_then_save(obj, path):
        if path.name == "optimizer.pt" and path.parent.name == ".tmp-step-${step}":
            with open(${JSON.stringify(path.join(dir, "filler"))}, "ab", buffering=0) as f:
                for size in (1 << 20, 4096, 1):
                    try:
                        while True:
                            f.write(bytes(size))
                    except OSError:
                        pass
        save(obj, path)
    module._torch_save = fill_then_save

class _AfterImport:
    def find_spec(self, name, path=None, target=None):
        if name != "lorakit_engine.checkpoint":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            _fill(module)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _AfterImport())
`,
  );
  return { PYTHONPATH: hook };
}

onTmpfs("a training run whose disk fills up mid-checkpoint", () => {
  it("through lorakit train: DISK_FULL naming the file being written, step-2 intact, no temporary left, the run failed in the store", async () => {
    const dir = tmpDir();
    writeCodeWords(dir);
    const model = fixture("models", "tiny-llama");
    const cfg = {
      model,
      data: { train: "train.json", max_length: 96 },
      lora: { r: 64, alpha: 128, dropout: 0, targets: TARGETS },
      train: { epochs: 2, batch_size: 4, grad_accum: 2, lr: 5e-3, log_every: 1, save_every: 2 },
      samples: { count: 0 },
    };
    writeFileSync(path.join(dir, "run.yaml"), JSON.stringify(cfg));
    const info = readCheckpoint(model);
    const shape = modelShape(info.config, info.family);
    if (!shape) throw new Error("no shape for the tiny llama");
    const one = checkpointBytes(loraParams(shape, TARGETS, 64), loraTensors(shape, TARGETS));
    // Room for three checkpoints: the free-space check before step-4 passes; the fill comes after it.
    const fs = new SmallFs(path.join(dir, "runs", "run"), onDisk(3 * one));

    const r = await runCli(["train", "run.yaml", "--no-smoke"], { cwd: dir, env: fillMidCheckpoint(fs.dir, 4) });
    expect(r.code, r.stdout + r.stderr).toBe(1);
    const base = stoppedAtStep4(r.stderr, fs.dir, dir);
    expect(r.stderr).toContain(`no space left for checkpoint step-4 in ${base} (writing optimizer.pt)`);
    expect(r.stderr).not.toContain("Traceback");
    expect(r.stderr).not.toMatch(/File ".*", line \d+/); // the cause and the fix, not a stack
  });
});

onTmpfs("prepared data on a full disk", () => {
  let glm: Tokenizer;
  beforeAll(async () => {
    glm = await loadTokenizer(fixture("tokenizers", "spm-chatglm3"));
  });
  const options = (file: string): PrepareOptions => ({
    files: [path.join(ROOT, "tests", "fixtures", "data", file)],
    template: "chatglm3",
    tokenizer: glm,
    modelDir: fixture("tokenizers", "spm-chatglm3"),
    modelType: "chatglm",
    maxLength: 512,
    split: 0,
  });

  it("fills while spooling, or while copying into tokens.safetensors: DISK_FULL, the cache's other entries intact", async () => {
    // Tokens enough that whole pages do not decide what fits: 2,000 records, ~100 KiB a spool.
    const words = ["apple", "river", "stone", "cloud", "ember", "frost"];
    const records = Array.from({ length: 2000 }, (_, i) => ({
      instruction: `Question ${i}: which code word follows ${words[i % 6]}?`,
      input: "",
      output: `After ${words[i % 6]} comes ${words[(i + 1) % 6]}, as rule ${i} says.`,
    }));
    const source = tmpDir();
    writeFileSync(path.join(source, "big.json"), JSON.stringify(records));
    const big = { ...options("huanhuan.json"), files: [path.join(source, "big.json")] };
    const reference = await prepareDataset(big, tmpDir()); // its size, on a disk with room
    const tokensBytes = statSync(path.join(reference.dir, "tokens.safetensors")).size;

    const fs = new SmallFs(path.join(tmpDir(), "cache"), onDisk(4 * tokensBytes));
    const writer = tmpDir();
    writeFileSync(path.join(writer, "other.json"), JSON.stringify([{ instruction: "hi", input: "", output: "hello" }]));
    const other = await prepareDataset({ ...big, files: [path.join(writer, "other.json")] }, fs.dir);

    // Full from the start: the spools (the tokens staged in memory, written out) cannot be written.
    const need = `it needs about ${fmtBytes(16 * reference.train.tokens)} (the tokens twice: spooled, then copied into tokens.safetensors)`;
    fs.fill();
    let err = await prepareDataset(big, fs.dir).then(
      () => undefined,
      (e) => e as LorakitError,
    );
    expect(err?.code).toBe("DISK_FULL");
    expect(err?.message).toContain(
      `no space left for the prepared data in ${fs.dir} (writing .train.input_ids.spool): ${need}`,
    );
    expect(err?.where?.file).toMatch(/\.train\.input_ids\.spool$/);
    expect(err?.hint).toContain(fs.dir);

    // Room for the spools, not for the copy: tokens.safetensors is what fails.
    fs.unfill();
    writeFileSync(
      path.join(fs.dir, "ballast"),
      Buffer.alloc(Math.max(0, (freeBytes(fs.dir) ?? 0) - onDisk(1.5 * tokensBytes))),
    );
    err = await prepareDataset(big, fs.dir).then(
      () => undefined,
      (e) => e as LorakitError,
    );
    expect(err?.code, err?.message).toBe("DISK_FULL");
    expect(err?.message).toContain(`in ${fs.dir} (writing tokens.safetensors): ${need}`);

    // Nothing half-written; the entry made before still verifies and is reused.
    expect(temporaries(fs.dir)).toEqual([]);
    expect(readdirSync(fs.dir).sort()).toEqual(["ballast", other.hash].sort());
    const again = await prepareDataset({ ...big, files: [path.join(writer, "other.json")] }, fs.dir);
    expect(again.reused).toBe(true);
  });

  it("fills while writing a rows file: DISK_FULL, the tokens and SHA256SUMS as they were", () => {
    const fs = new SmallFs(path.join(tmpDir(), "split"), 1 << 20);
    writeRows(fs.dir, [10, 30, 12, 5], 20);
    const sums = readFileSync(path.join(fs.dir, "SHA256SUMS"));
    fs.fill();
    const err = caught(() => writeRows(fs.dir, [10, 30, 12, 5], 40));
    expect(err.code).toBe("DISK_FULL");
    expect(err.message).toContain(
      `no space left for the rows of train.pack_tokens 40 in ${fs.dir} (writing rows-40.safetensors)`,
    );
    expect(readFileSync(path.join(fs.dir, "SHA256SUMS")).equals(sums)).toBe(true);
    expect(checkSums(fs.dir, ["rows-20.safetensors"])).toEqual([]);
    expect(temporaries(fs.dir)).toEqual([]);
  });
});

onTmpfs("the report and the files written beside a run", () => {
  it("a report that cannot be written leaves the one before intact, and names the file", () => {
    const fs = new SmallFs(path.join(tmpDir(), "run"), 1 << 20);
    const file = path.join(fs.dir, "report.html");
    const input = {
      name: "run",
      status: "completed",
      configYaml: "model: x\n",
      metrics: [],
      findings: [],
      samples: [],
      summary: {},
    };
    writeReport(file, input);
    const before = readFileSync(file);
    fs.fill();
    const err = caught(() => writeReport(file, { ...input, status: "failed" }));
    expect(err.code).toBe("DISK_FULL");
    expect(err.message).toMatch(
      new RegExp(
        `^no space left for the report in ${fs.dir} \\(writing report.html\\): it needs about \\d+ KiB \\(its contents\\), 0 KiB free`,
      ),
    );
    expect(err.message).toContain(`${file} is as it was before.`);
    expect(err.where?.file).toBe(file);
    expect(readFileSync(file).equals(before)).toBe(true);
    expect(temporaries(fs.dir)).toEqual([]);
    fs.unfill();
    writeFileAtomic(file, "<html>after</html>");
    expect(readFileSync(file, "utf8")).toBe("<html>after</html>");
  });
});

onTmpfs("the run store on a full disk", () => {
  it("refuses a write with SQLITE_FULL, rolls it back whole, and keeps every earlier row", () => {
    const fs = new SmallFs(path.join(tmpDir(), "runs"), 8 << 20);
    const file = path.join(fs.dir, "lorakit.db");
    const store = new RunStore(file);
    const run = store.openRun("run", "{}", { resume: false });
    const step = (n: number) =>
      ({
        type: "step",
        step: n,
        total_steps: 1000,
        epoch: 0,
        loss: 1 / n,
        lr: 1e-3,
        grad_norm: 1,
        tokens: 10,
        tokens_per_s: 1,
        elapsed_s: n,
        memory_bytes: 0,
      }) as const;
    for (let n = 1; n <= 20; n++) store.record(run.id, step(n));
    fs.fill();
    let failure: unknown;
    // An event big enough to need new pages (the WAL may hold a few spare ones).
    const big = { type: "log", level: "info", message: "x".repeat(1 << 20) } as const;
    for (let i = 0; i < 20 && !failure; i++) {
      try {
        store.record(run.id, big);
      } catch (e) {
        failure = e;
      }
    }
    expect(isDiskFull(failure), String(failure)).toBe(true);
    const located = diskFullError({
      what: "the run store",
      dir: fs.dir,
      writing: file,
      kept: "earlier rows are intact.",
    });
    expect(located.code).toBe("DISK_FULL");
    expect(located.message).toContain(`no space left for the run store in ${fs.dir} (writing lorakit.db)`);
    fs.unfill();
    store.record(run.id, step(21));
    store.finish(run.id, "failed", "DISK_FULL: test");
    store.close();
    const db = new Database(file, { readonly: true });
    expect(db.pragma("integrity_check", { simple: true })).toBe("ok");
    const steps = db.prepare("SELECT step FROM metrics WHERE run_id=? ORDER BY step").all(run.id) as { step: number }[];
    expect(steps.map((s) => s.step)).toEqual(Array.from({ length: 21 }, (_, i) => i + 1));
    expect(db.prepare("SELECT status, error FROM runs").get()).toEqual({ status: "failed", error: "DISK_FULL: test" });
    db.close();
  });
});
