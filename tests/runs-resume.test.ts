// `lorakit train --resume` decided before anything of the run is written: a resume whose settings differ from
// those the run started with is refused at once — each key, then and now, located in the config, with what to
// do — and changes nothing on disk or in the store; a completed run says so and does nothing; a longer run is
// accepted only where the learning-rate schedule does not depend on the step count (constant), and then trains
// exactly as a run started with the longer count.
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Plan, RunConfig } from "../src/config/schema.js";
import { planChanges, type Recorded } from "../src/runs/resume.js";
import { fixture, runCli, tmpDir, writeCodeWords } from "./helpers.js";

function writeRun(dir: string, train: Record<string, unknown>, lora: Record<string, unknown> = {}): void {
  writeFileSync(
    path.join(dir, "run.yaml"),
    [
      `model: ${fixture("models", "tiny-llama")}`,
      "data:",
      "  train: train.json",
      "  eval_split: 0.2",
      "  max_length: 96",
      "lora:",
      ...Object.entries({ r: 4, alpha: 8, dropout: 0.1, ...lora }).map(([k, v]) => `  ${k}: ${v}`),
      "train:",
      ...Object.entries({ batch_size: 4, grad_accum: 1, lr: 5e-3, log_every: 1, ...train }).map(
        ([k, v]) => `  ${k}: ${v}`,
      ),
      "samples:",
      "  count: 1",
      "  max_new_tokens: 4",
      "",
    ].join("\n"),
  );
}

/** Every file of the folder (path, mtime, content) but the config the tests edit and the store's -wal/-shm,
 * and every row of the store. */
function snapshot(dir: string): string[] {
  const walk = (d: string): string[] =>
    readdirSync(d, { withFileTypes: true }).flatMap((e) => {
      const p = path.join(d, e.name);
      return e.isDirectory() ? walk(p) : [p];
    });
  const files = walk(dir)
    .filter((p) => !/lorakit\.db-(wal|shm)$/.test(p) && p !== path.join(dir, "run.yaml"))
    .map((p) => `${p} ${statSync(p).mtimeMs} ${createHash("sha256").update(readFileSync(p)).digest("hex")}`);
  const db = new Database(path.join(dir, "runs", "lorakit.db"), { readonly: true });
  const tables = db.prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name").all() as {
    name: string;
  }[];
  const rows = tables.flatMap((t) =>
    (db.prepare(`SELECT * FROM ${t.name}`).all() as unknown[]).map((r) => `${t.name} ${JSON.stringify(r)}`),
  );
  db.close();
  return [...files, ...rows];
}

function trainMetrics(dir: string): { step: number; loss: number; lr: number }[] {
  const db = new Database(path.join(dir, "runs", "lorakit.db"), { readonly: true });
  const rows = db.prepare("SELECT step, loss, lr FROM metrics WHERE kind='train' ORDER BY step").all() as {
    step: number;
    loss: number;
    lr: number;
  }[];
  db.close();
  return rows;
}

const cosine = tmpDir("lorakit-resume-cosine-");
const constant = tmpDir("lorakit-resume-constant-");
const longer = tmpDir("lorakit-resume-longer-");
const splits: string[] = []; // the folders of the plan tests' prepared splits

beforeAll(async () => {
  for (const d of [cosine, constant, longer]) writeCodeWords(d);
  writeRun(cosine, { max_steps: 4 });
  writeRun(constant, { max_steps: 3, scheduler: "constant" });
  writeRun(longer, { max_steps: 5, scheduler: "constant" });
  const runs = await Promise.all(
    [cosine, constant, longer].map((cwd) => runCli(["train", "run.yaml", "--no-smoke"], { cwd })),
  );
  for (const r of runs) expect(r.code, r.stderr).toBe(0);
});

afterAll(() => {
  for (const d of [cosine, constant, longer, ...splits]) rmSync(d, { recursive: true, force: true });
});

describe("lorakit train --resume", () => {
  it("refuses changed settings at once, naming each (then, now, where), and changes nothing", async () => {
    const before = snapshot(cosine);
    writeRun(cosine, { max_steps: 6 }, { r: 8 });
    const r = await runCli(["train", "run.yaml", "--resume", "--no-smoke"], { cwd: cosine });
    expect(r.code).toBe(1);
    const file = path.join(cosine, "run.yaml");
    expect(r.stderr).toContain(
      `error RESUME_MISMATCH: ${file}:7, key lora.r: lora.r was 4 when run 'run' started, and is 8 now: the checkpoint's adapter has that rank`,
    );
    expect(r.stderr).toContain(
      "fix: to continue run 'run', put lora.r back to 4; to train as the config says now, start over: `lorakit train run.yaml --fresh` (deletes its checkpoints and adapter), or give the run another name",
    );
    expect(r.stderr).toMatch(
      new RegExp(
        `error RESUME_MISMATCH: ${file}:15, key train\\.max_steps: train\\.max_steps was 4 when run 'run' started, and is 6 now: the cosine learning-rate schedule`,
      ),
    );
    expect(r.stderr).not.toContain("Traceback");
    expect(r.stdout).toBe(""); // refused before the doctor, the data or the engine
    writeRun(cosine, { max_steps: 4 });
    expect(snapshot(cosine)).toEqual(before);
  });

  it("refuses more steps on a cosine schedule: the learning rate would jump", async () => {
    const before = snapshot(cosine);
    writeRun(cosine, { max_steps: 6 });
    const r = await runCli(["train", "run.yaml", "--resume", "--no-smoke"], { cwd: cosine });
    writeRun(cosine, { max_steps: 4 });
    expect(r.code).toBe(1);
    expect(r.stderr.match(/error RESUME_MISMATCH/g)).toHaveLength(1);
    expect(r.stderr).toContain(
      "train.max_steps was 4 when run 'run' started, and is 6 now: the cosine learning-rate schedule is a curve over the run's total steps and the checkpoint stands at step 4; over another total it is another curve, so the learning rate would jump where the old one ends",
    );
    expect(snapshot(cosine)).toEqual(before);
  });

  it("--resume of a completed run says it is done, and does nothing", async () => {
    const before = snapshot(cosine);
    const r = await runCli(["train", "run.yaml", "--resume"], { cwd: cosine });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("run         'run' completed at step 4; nothing to resume");
    expect(r.stdout).toContain(`report      ${path.join(cosine, "runs", "run", "report.html")}`);
    expect(r.stdout).not.toContain("doctor");
    expect(snapshot(cosine)).toEqual(before);
  });

  it("more steps on a constant schedule: the run continues exactly as a run started with them", async () => {
    writeRun(constant, { max_steps: 5, scheduler: "constant" });
    const r = await runCli(["train", "run.yaml", "--resume", "--no-smoke"], { cwd: constant });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("resuming at step 3");
    const got = trainMetrics(constant);
    const want = trainMetrics(longer);
    expect(got.map((m) => m.step)).toEqual([1, 2, 3, 4, 5]);
    for (const [i, m] of got.entries()) {
      expect(Math.abs(m.loss - (want[i]?.loss as number))).toBeLessThan(1e-5);
      expect(m.lr).toBeCloseTo(want[i]?.lr as number, 12);
    }
  });
});

describe("a resume's plan against the recorded one", () => {
  /** A prepared split with a manifest whose data file has `sha`. */
  function split(sha: string, name: string): Plan["data"]["train"] {
    const base = tmpDir("lorakit-resume-split-");
    splits.push(base);
    const dir = path.join(base, name);
    mkdirSync(dir, { recursive: true });
    const manifest = {
      inputs: { files: [{ path: `/somewhere/${name}/train.json`, sha256: sha }], options: { max_length: 96 } },
    };
    writeFileSync(path.join(dir, "manifest.json"), JSON.stringify(manifest));
    return { dir, samples: 16, tokens: 1000, rows: null };
  }
  const plan = (train: Plan["data"]["train"]): Plan => {
    const p = JSON.parse(readFileSync(path.join(cosine, "runs", "run", "plan.json"), "utf8")) as Plan;
    return { ...p, data: { ...p.data, train } };
  };
  const config = {} as RunConfig; // no recorded config: the plans alone are compared

  it("the same data files moved elsewhere is the same data; changed contents are not", () => {
    const recorded: Recorded = { config: null, plan: plan(split("aaa", "a")), checkpoint: null };
    expect(planChanges(recorded, config, plan(split("aaa", "b")))).toEqual([]);
    const changed = planChanges(recorded, config, plan(split("bbb", "c")));
    expect(changed.map((c) => c.key)).toEqual(["data.train"]);
    expect(changed[0]?.why).toContain("the training data changed");
  });
});
