// `lorakit doctor run.yaml` in-process, on run configs pointing at the tiny fixtures: the healthy recipe
// reports no warning at all; planted problems come back with their codes and exit code 1.
import { writeFileSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import type { FindingsJson } from "../src/cli/findings-view.js";
import { fixture, runCli, tmpDir } from "./helpers.js";

const dir = tmpDir("lorakit-doctor-cli-");
const model = fixture("models", "chatglm3-single");

function config(name: string, lines: string[]): string {
  writeFileSync(path.join(dir, name), [`model: ${model}`, ...lines, ""].join("\n"));
  return name;
}

beforeAll(() => {
  const records = Array.from({ length: 200 }, (_, i) => ({
    instruction: `Question ${i}: what is ${i} plus ${i}?`,
    input: "",
    output: `The answer is ${2 * i}.`,
  }));
  writeFileSync(path.join(dir, "train.json"), JSON.stringify(records));
  config("healthy.yaml", ["data:", "  train: train.json", "train:", "  epochs: 1"]);
  config("planted.yaml", [
    "data:",
    "  train: train.json",
    "  eval_split: 0",
    "lora:",
    "  targets: [q_proj, v_proj]",
    "train:",
    "  epochs: 1",
    "  lr: 0.003",
    "  batch_size: 32",
  ]);
  config("huge.yaml", [
    "data:",
    "  train: train.json",
    "  max_length: 65536",
    "train:",
    "  batch_size: 512",
    "  grad_accum: 1",
    "  epochs: 60",
  ]);
  config("cuda.yaml", ["data:", "  train: train.json", "train:", "  epochs: 1", "  device: cuda"]);
});

const doctor = (args: string[], env: NodeJS.ProcessEnv = {}) => runCli(["doctor", ...args], { cwd: dir, env });
const json = (stdout: string) =>
  JSON.parse(stdout) as FindingsJson & { summary: { steps: { name: string; status: string }[] } };

describe("lorakit doctor", () => {
  it("the healthy recipe: every step passes, no warning at all, exit 0 (--json, model inspected)", async () => {
    const r = await doctor(["healthy.yaml", "--json"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const j = json(r.stdout);
    expect(j.summary).toMatchObject({ ok: true, errors: 0, warnings: 0 });
    expect(j.findings.filter((f) => f.severity !== "info")).toEqual([]);
    expect(j.summary.steps.map((s) => [s.name, s.status])).toEqual([
      ["environment", "ok"],
      ["config", "ok"],
      ["memory", "ok"],
      ["data", "ok"],
      ["model", "ok"],
    ]);
    expect(j.findings.map((f) => f.code)).toContain("MODEL_REMOTE_CODE");
  });

  it("prints numbered steps with ✓ and a closing line", async () => {
    const r = await doctor(["healthy.yaml", "--skip-model"]);
    expect(r.code).toBe(0);
    const lines = r.stdout.split("\n");
    expect(lines[0]).toBe(`lorakit doctor  ${path.join(dir, "healthy.yaml")}`);
    for (const start of [" 1. ✓ environment", " 2. ✓ config", " 3. ✓ memory", " 4. ✓ data", " 5. – model"]) {
      expect(
        lines.some((l) => l.startsWith(start)),
        start,
      ).toBe(true);
    }
    expect(r.stdout).toContain("lr 0.0001 (family default), LoRA r 8 alpha 32 on query_key_value");
    expect(lines.filter((l) => l.includes("! warning") || l.includes("✗ error"))).toEqual([]);
    expect(lines.at(-2)).toMatch(/^✓ 0 errors, 0 warnings, \d+ info — ready to train$/);
  });

  it("planted config problems: wrong-family targets, high lr, too few steps, no eval — exit 1", async () => {
    const r = await doctor(["planted.yaml", "--skip-model", "--json"]);
    expect(r.code).toBe(1);
    const j = json(r.stdout);
    const byCode = new Map(j.findings.map((f) => [f.code, f]));
    expect([...byCode.keys()].filter((c) => c.startsWith("CONFIG_")).sort()).toEqual([
      "CONFIG_EVAL_EMPTY",
      "CONFIG_LR_HIGH",
      "CONFIG_STEPS_FEW",
      "CONFIG_TARGETS_WRONG_FAMILY",
    ]);
    expect(byCode.get("CONFIG_TARGETS_WRONG_FAMILY")?.evidence.suggestion).toEqual(["query_key_value"]);
    expect(j.summary).toMatchObject({ ok: false, errors: 1 });
    const text = await doctor(["planted.yaml", "--skip-model"]);
    expect(text.stdout).toMatch(/ 2\. ✗ config/);
    expect(text.stdout).toContain("✗ error   CONFIG_TARGETS_WRONG_FAMILY");
    expect(text.stdout.trim().split("\n").at(-1)).toMatch(
      /^✗ 1 error, 3 warnings, \d+ info — fix the errors before training$/,
    );
  });

  it("a huge batch of short samples fits: the estimate reads the prepared lengths, not batch × max_length", async () => {
    // 512 × 65,536 tokens did not fit (MEMORY_WONT_FIT) while the data's samples have ~30 tokens each: the
    // estimate now takes the largest micro-batch the run will see (src/doctor/memory.ts; the finding and its
    // suggestion are tested there).
    const r = await doctor(["huge.yaml", "--skip-model", "--json"]);
    const j = json(r.stdout);
    expect(j.findings.filter((f) => f.code.startsWith("MEMORY_"))).toEqual([]);
    const steps = j.summary.steps as unknown as { name: string; summary: string }[];
    const memory = steps.find((s) => s.name === "memory")?.summary ?? "";
    const tokens = Number(/the largest micro-batch (\d+) tokens, padded path/.exec(memory)?.[1]);
    expect(tokens).toBeGreaterThan(0);
    expect(tokens).toBeLessThan(200 * 64);
  });

  it("device cuda without a driver: ENV_NO_CUDA is an error", async ({ skip }) => {
    const r = await doctor(["cuda.yaml", "--skip-model", "--json"], {
      LORAKIT_NVML_LIB: "/nonexistent/libnvidia-ml.so.1",
    });
    const j = json(r.stdout);
    if (j.findings.some((f) => f.code === "ENV_NVML_FAILED")) skip(); // a GPU machine: torch.cuda works
    expect(r.code).toBe(1);
    expect(j.findings.find((f) => f.code === "ENV_NO_CUDA")?.severity).toBe("error");
  });

  it("usage, help, and a missing config", async () => {
    expect((await runCli(["help"])).stdout).toContain("doctor     check a run before training");
    expect((await doctor(["--help"])).stdout).toContain("usage: lorakit doctor <run.yaml> [--json] [--skip-model]");
    expect((await doctor([])).code).toBe(2);
    const missing = await doctor(["nope.yaml"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("error CONFIG_NOT_FOUND");
  });
});
