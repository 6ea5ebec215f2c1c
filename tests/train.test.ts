// The whole road through the CLI, in-process, on tiny checkpoints in the real layouts: the engine
// is the real Python engine, the store a real SQLite file, the adapter real PEFT files.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../src/config/load.js";
import type { Event } from "../src/config/schema.js";
import { ENGINE_DIR } from "../src/engine/python.js";
import { runRoad } from "../src/train/road.js";
import { fixture, runCli, tmpDir, writeCodeWords } from "./helpers.js";

function writeRun(dir: string, model: string, extra: Record<string, unknown> = {}): string {
  writeCodeWords(dir);
  const cfg = {
    model,
    data: { train: "train.json", eval_split: 0.2, system: "You are terse.", max_length: 96 },
    lora: { r: 4, alpha: 8, dropout: 0.1 },
    train: { epochs: 2, batch_size: 4, grad_accum: 2, lr: 5e-3, log_every: 1, save_every: 2, ...extra },
    samples: { count: 3, max_new_tokens: 8 },
  };
  writeFileSync(path.join(dir, "run.yaml"), JSON.stringify(cfg, null, 1)); // JSON is YAML
  return path.join(dir, "run.yaml");
}

function db(dir: string) {
  return new Database(path.join(dir, "runs", "lorakit.db"), { readonly: true });
}

describe("lorakit train", () => {
  it("trains a tiny llama end to end: PEFT adapter, report, records", async () => {
    const dir = tmpDir();
    writeRun(dir, fixture("models", "tiny-llama"));
    const r = await runCli(["train", "run.yaml"], { cwd: dir });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/step \d+\/\d+/);
    expect(r.stdout).toMatch(/^run {9}completed$/m); // the end-of-run line: completed, no error finding
    const adapter = path.join(dir, "runs", "run", "adapter");
    const files = readdirSync(adapter).sort();
    expect(files).toEqual(
      expect.arrayContaining(["adapter_config.json", "adapter_model.safetensors", "lorakit_template.json"]),
    );
    const cfg = JSON.parse(readFileSync(path.join(adapter, "adapter_config.json"), "utf8"));
    expect(cfg.peft_type).toBe("LORA");
    expect(cfg.r).toBe(4);
    expect([...cfg.target_modules].sort()).toEqual(["k_proj", "o_proj", "q_proj", "v_proj"]);
    const report = readFileSync(path.join(dir, "runs", "run", "report.html"), "utf8");
    expect(report).toContain("<svg");
    expect(report).toContain("Samples before and after");
    const d = db(dir);
    const run = d.prepare("SELECT * FROM runs WHERE name='run'").get() as { id: number; status: string };
    expect(run.status).toBe("completed");
    const steps = d.prepare("SELECT count(*) n FROM metrics WHERE run_id=? AND kind='train'").get(run.id) as {
      n: number;
    };
    expect(steps.n).toBeGreaterThan(0);
    const samples = d.prepare("SELECT phase, count(*) n FROM samples WHERE run_id=? GROUP BY phase").all(run.id);
    expect(samples).toEqual(
      expect.arrayContaining([
        { phase: "before", n: 3 },
        { phase: "after", n: 3 },
      ]),
    );
    d.close();
  });

  it("a crash mid-run: clear error with the traceback, run marked failed, earlier checkpoint intact", async () => {
    const dir = tmpDir();
    const loaded = await loadConfig(writeRun(dir, fixture("models", "tiny-llama")));
    // A real fault from outside the engine (its test fixture, loaded through sitecustomize): the training loop
    // raises at the start of optimizer step 4.
    const env = {
      ...process.env,
      PYTHONPATH: path.join(ENGINE_DIR, "tests", "fixtures", "fault"),
      LORAKIT_TEST_FAIL_AT_STEP: "4",
    };
    const result = await runRoad(loaded, { log: () => {}, env });
    expect(result.status).toBe("failed");
    expect(result.error?.code).toBe("ENGINE_CRASH");
    expect(result.error?.message).toContain("injected fault: failing on purpose at the start of step 4");
    const ckpts = readdirSync(path.join(dir, "runs", "run", "checkpoints"));
    expect(ckpts).toContain("step-2");
    expect(ckpts.some((c) => c.startsWith(".tmp"))).toBe(false);
    expect(existsSync(path.join(dir, "runs", "run", "checkpoints", "step-2", "adapter_model.safetensors"))).toBe(true);
    const d = db(dir);
    const run = d.prepare("SELECT status, error FROM runs WHERE name='run'").get() as { status: string; error: string };
    expect(run.status).toBe("failed");
    expect(run.error).toContain("ENGINE_CRASH");
    d.close();
    // The checkpoint left behind resumes to the end.
    const resumed = await runCli(["train", "run.yaml", "--resume"], { cwd: dir });
    expect(resumed.code).toBe(0);
  });

  it("Ctrl-C saves a checkpoint and stops; --resume finishes with the uninterrupted run's losses", async () => {
    const whole = tmpDir();
    writeRun(whole, fixture("models", "tiny-llama"));
    expect((await runCli(["train", "run.yaml"], { cwd: whole })).code).toBe(0);

    const dir = tmpDir();
    writeRun(dir, fixture("models", "tiny-llama"));
    const ac = new AbortController();
    const loaded = await loadConfig(path.join(dir, "run.yaml"));
    const stopped = await runRoad(loaded, {
      log: () => {},
      signal: ac.signal,
      onEvent: (e: Event) => {
        if (e.type === "step" && e.step === 2) ac.abort();
      },
    });
    expect(stopped.status).toBe("stopped");
    const r = await runCli(["train", "run.yaml", "--resume"], { cwd: dir });
    expect(r.code).toBe(0);
    const losses = (d: Database.Database) =>
      (
        d.prepare("SELECT step, loss FROM metrics WHERE kind='train' ORDER BY step").all() as {
          step: number;
          loss: number;
        }[]
      ).map((m) => [m.step, m.loss] as const);
    const [a, b] = [db(whole), db(dir)];
    const la = losses(a);
    const lb = losses(b);
    expect(lb.map(([s]) => s)).toEqual(la.map(([s]) => s));
    for (const [i, [, l]] of lb.entries()) expect(Math.abs(l - (la[i]?.[1] as number))).toBeLessThan(1e-5);
    a.close();
    b.close();
  });

  it("trains the tiny ChatGLM3 checkpoint (sharded .bin + tokenizer.model), adapter loads with peft", async () => {
    const dir = tmpDir();
    writeRun(dir, fixture("models", "chatglm3-bin-sharded"), { epochs: 1 });
    const r = await runCli(["train", "run.yaml"], { cwd: dir });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const adapter = path.join(dir, "runs", "run", "adapter");
    const cfg = JSON.parse(readFileSync(path.join(adapter, "adapter_config.json"), "utf8"));
    expect(cfg.target_modules).toEqual(["query_key_value"]);
    const template = JSON.parse(readFileSync(path.join(adapter, "lorakit_template.json"), "utf8"));
    expect(template.template).toBe("chatglm3");
    // Keys exactly as peft names them on the official model.
    const py = process.env.LORAKIT_PYTHON as string;
    const keys = spawnSync(
      py,
      [
        "-c",
        `from safetensors import safe_open\nf=safe_open(${JSON.stringify(path.join(adapter, "adapter_model.safetensors"))},"pt")\nprint("\\n".join(sorted(f.keys())))`,
      ],
      { encoding: "utf8" },
    )
      .stdout.trim()
      .split("\n");
    expect(
      keys.every((k) =>
        /^base_model\.model\.transformer\.encoder\.layers\.\d+\.self_attention\.query_key_value\.lora_[AB]\.weight$/.test(
          k,
        ),
      ),
    ).toBe(true);
  });
});
