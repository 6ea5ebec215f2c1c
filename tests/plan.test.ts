// The plan carries resolved values: precision, device, sharding, the fast path, steps per epoch, the rows file
// and the profiler window are decided here, once, from the config, the probe's answers and the data — and the
// plan built from the tiny checkpoints validates against the exported schema the engine reads.
import path from "node:path";
import { describe, expect, it } from "vitest";
import { parseConfigText } from "../src/config/load.js";
import { Plan, type RunConfig } from "../src/config/schema.js";
import { LorakitError } from "../src/errors.js";
import { readCheckpoint } from "../src/models/checkpoint.js";
import { familyFor } from "../src/models/families.js";
import {
  buildPlan,
  fastPathSetting,
  type PlanData,
  profileFromEnv,
  resolveDevice,
  resolveFastPath,
  resolvePrecision,
  smokePlan,
  stepCounts,
} from "../src/plan/index.js";
import { fixture } from "./helpers.js";

const loadedOf = (train: string, model = fixture("models", "tiny-llama")) => {
  const file = "/x/run.yaml";
  const { config } = parseConfigText(`model: m\ndata:\n  train: t.json\ntrain:\n${train}`, file);
  return { config, file, name: "run", modelDir: model, trainFiles: [], evalFiles: [], outputDir: "/x/runs" };
};
const trainOf = (yaml: string): RunConfig["train"] => loadedOf(yaml).config.train;

const data: PlanData = {
  train: { dir: "/x/prepared/abc", samples: 40, tokens: 4000 },
  eval: { dir: "/x/prepared/abc/eval", samples: 4, tokens: 400 },
  trainLengths: Array.from({ length: 40 }, () => 100),
  rows: "/x/prepared/abc/rows-512.safetensors",
  heldOut: [{ index: 3, promptIds: [1, 2, 3] }],
  stopIds: [2],
  padId: 0,
  adapterExtras: {},
  adapterFiles: {},
};

describe("resolved values", () => {
  const h200 = { device: "cuda" as const, bf16: true };
  const v100 = { device: "cuda" as const, bf16: false };
  const cpu = { device: "cpu" as const, bf16: null };

  it("precision auto: fp32 on the CPU, bf16 where the GPU has it, fp16 where it has not", () => {
    expect(resolvePrecision("auto", cpu)).toBe("fp32");
    expect(resolvePrecision("auto", h200)).toBe("bf16");
    expect(resolvePrecision("auto", v100)).toBe("fp16");
    expect(resolvePrecision("fp16", h200)).toBe("fp16"); // asked for: kept (the doctor warns)
  });

  it("device auto: what the probe found, the CPU when it did not run; cpu and cuda as asked", () => {
    expect(resolveDevice("auto", h200)).toBe("cuda");
    expect(resolveDevice("auto", cpu)).toBe("cpu");
    expect(resolveDevice("auto", null)).toBe("cpu");
    expect(resolveDevice("cpu", h200)).toBe("cpu");
    expect(resolveDevice("cuda", cpu)).toBe("cuda"); // the engine refuses it with NO_CUDA
  });

  it("fast path: the native family on CUDA; the config forces it; LORAKIT_FAST stands in for auto", () => {
    const chatglm = familyFor("chatglm");
    const llama = familyFor("llama");
    if (!chatglm || !llama) throw new Error("families");
    expect(resolveFastPath("auto", chatglm, "cuda")).toBe(true);
    expect(resolveFastPath("auto", chatglm, "cpu")).toBe(false);
    expect(resolveFastPath(true, chatglm, "cpu")).toBe(true);
    expect(resolveFastPath(false, chatglm, "cuda")).toBe(false);
    expect(resolveFastPath(true, llama, "cuda")).toBe(false); // transformers' families have none
    expect(fastPathSetting(trainOf("  epochs: 1\n"), { LORAKIT_FAST: "0" })).toBe(false);
    expect(fastPathSetting(trainOf("  epochs: 1\n"), { LORAKIT_FAST: "1" })).toBe(true);
    expect(fastPathSetting(trainOf("  epochs: 1\n"), {})).toBe("auto");
    expect(fastPathSetting(trainOf("  fast_path: false\n"), { LORAKIT_FAST: "1" })).toBe(false); // the config wins
  });

  it("profile: LORAKIT_PROFILE with LORAKIT_PROFILE_STEPS (11:3 by default); a bad window is an error", () => {
    expect(profileFromEnv({})).toBeNull();
    expect(profileFromEnv({ LORAKIT_PROFILE: "/tmp/prof" })).toEqual({ dir: "/tmp/prof", first_step: 11, steps: 3 });
    expect(profileFromEnv({ LORAKIT_PROFILE: "/tmp/prof", LORAKIT_PROFILE_STEPS: "2:5" })).toMatchObject({
      first_step: 2,
      steps: 5,
    });
    for (const bad of ["11", "0:3", "2:0", "a:b"]) {
      let err: unknown;
      try {
        profileFromEnv({ LORAKIT_PROFILE: "/tmp/prof", LORAKIT_PROFILE_STEPS: bad });
      } catch (e) {
        err = e;
      }
      expect(err, bad).toBeInstanceOf(LorakitError);
      expect((err as LorakitError).code).toBe("BAD_ENVIRONMENT");
    }
  });

  it("steps per epoch and in all, from the same arithmetic", () => {
    const lengths = Array.from({ length: 40 }, () => 100); // 5 samples a 512-token row: 8 rows
    expect(
      stepCounts(
        { trainSamples: 40, trainTokens: 4000, trainLengths: lengths },
        trainOf("  pack_tokens: 512\n  grad_accum: 3\n  epochs: 2\n"),
      ),
    ).toEqual({ perEpoch: 3, total: 6 });
    expect(
      stepCounts(
        { trainSamples: 40, trainTokens: 4000 },
        trainOf("  batch_size: 4\n  grad_accum: 2\n  epochs: 1.5\n  max_steps: 7\n"),
      ),
    ).toEqual({ perEpoch: 5, total: 7 });
  });
});

describe("buildPlan", () => {
  it("writes the resolved values into a plan the exported schema accepts", () => {
    const loaded = loadedOf("  pack_tokens: 512\n  grad_accum: 2\n  epochs: 2\n  precision: auto\n");
    const model = readCheckpoint(loaded.modelDir);
    const plan = buildPlan(loaded, model, data, {
      runDir: "/x/runs/run",
      resume: false,
      found: { device: "cpu", bf16: null },
      env: { LORAKIT_PROFILE: "/tmp/prof" },
    });
    expect(Plan.parse(plan)).toEqual(plan);
    expect(plan.version).toBe(2);
    expect(plan.model).toMatchObject({ family: "llama", layers: model.layers });
    expect(model.layers).toBeGreaterThan(0);
    expect(plan.train).toMatchObject({
      precision: "fp32",
      device: "cpu",
      shard: "none",
      fast_path: false,
      steps_per_epoch: 4,
      total_steps: 8,
    });
    expect(plan.data.train).toEqual({ dir: data.train.dir, samples: 40, tokens: 4000, rows: data.rows });
    expect(plan.profile).toEqual({ dir: "/tmp/prof", first_step: 11, steps: 3 });
    expect("fail_at_step" in plan).toBe(false);
    // Without pack_tokens the plan names no rows file.
    const unpacked = buildPlan(loadedOf("  epochs: 1\n"), model, data, {
      runDir: "/x/runs/run",
      resume: false,
      found: null,
      env: {},
    });
    expect(unpacked.data.train.rows).toBeNull();
    expect(unpacked.profile).toBeNull();
  });

  it("the smoke plan: two steps on one process, its own epoch length, no profile", () => {
    const loaded = loadedOf("  pack_tokens: 512\n  devices: 2\n  shard: fsdp\n", fixture("models", "tiny-llama"));
    const plan = buildPlan(loaded, readCheckpoint(loaded.modelDir), data, {
      runDir: "/x/runs/run",
      resume: false,
      found: { device: "cuda", bf16: true },
      env: { LORAKIT_PROFILE: "/tmp/prof" },
    });
    const smoke = smokePlan(plan, path.join("/x/runs/run", "smoke"), {
      trainSamples: 40,
      trainTokens: 4000,
      trainLengths: data.trainLengths ?? undefined,
    });
    expect(Plan.parse(smoke)).toEqual(smoke);
    expect(smoke.train).toMatchObject({ total_steps: 2, steps_per_epoch: 8, devices: 1, shard: "none", grad_accum: 1 });
    expect(smoke.profile).toBeNull();
  });
});
