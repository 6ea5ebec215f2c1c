// Config checks: each failure planted in a run config, the healthy recipe reports nothing.
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import type { LoadedConfig } from "../src/config/load.js";
import { RunConfig, type RunConfigInput } from "../src/config/schema.js";
import {
  configFindings,
  type DatasetFacts,
  estimateDataset,
  lrFindings,
  precisionFindings,
  targetFindings,
} from "../src/doctor/config.js";
import { hardwareOf, type Probe } from "../src/doctor/env.js";
import { ROOT } from "../src/engine/python.js";
import { familyFor } from "../src/models/families.js";
import { plannedSteps } from "../src/plan/index.js";
import { tmpDir } from "./helpers.js";

const chatglm = familyFor("chatglm")!;
const llama = familyFor("llama")!;
const h200 = JSON.parse(readFileSync(path.join(ROOT, "tests/fixtures/doctor-probe-h200.json"), "utf8")) as Probe;

function loaded(input: Partial<RunConfigInput>, files: { train?: string[]; eval?: string[] } = {}): LoadedConfig {
  const config = RunConfig.parse({ model: "m", data: { train: "t.json" }, ...input });
  return {
    config,
    file: "/x/run.yaml",
    name: "run",
    modelDir: "/x/m",
    trainFiles: files.train ?? [],
    evalFiles: files.eval ?? [],
    outputDir: "/x/runs",
  };
}

const data = (trainSamples: number, evalSamples = Math.round(trainSamples * 0.05)): DatasetFacts => ({
  trainSamples,
  evalSamples,
  trainTokens: trainSamples * 100,
  source: "prepared",
  basis: "test",
});

const codes = (fs: { code: string }[]) => fs.map((f) => f.code);
const cpu = hardwareOf({ ...h200, cuda: { is_available: false, device_count: 0, devices: [], errors: {} } }, "auto");

describe("the healthy recipe", () => {
  it("reports nothing (Self-LLM recipe: lr 1e-4, r 8, alpha 32, batch 4 × 2, 3 epochs)", () => {
    const l = loaded({ train: { epochs: 3 } as RunConfigInput["train"] });
    expect(
      configFindings({ loaded: l, family: chatglm, data: data(3729), hardware: hardwareOf(h200, "auto") }),
    ).toEqual([]);
    expect(configFindings({ loaded: l, family: chatglm, data: data(190, 10), hardware: cpu })).toEqual([]);
  });
});

describe("learning rate", () => {
  it("flags lr > 1e-3 at r ≤ 16 with alpha/r ≥ 2 as high, with the reasoning", () => {
    const [f, ...rest] = lrFindings(
      loaded({ train: { lr: 3e-3 } as RunConfigInput["train"] }).config,
      chatglm,
      data(3000),
    );
    expect(rest).toEqual([]);
    expect(f?.code).toBe("CONFIG_LR_HIGH");
    expect(f?.severity).toBe("warning");
    expect(f?.evidence).toMatchObject({
      lr: 3e-3,
      r: 8,
      alpha: 32,
      scale: 4,
      effective_step: 0.012,
      lr_source: "train.lr",
    });
    expect(String(f?.evidence.reasoning)).toContain("alpha/r = 4");
    expect(f?.title).toBe("learning rate 0.003 is high for LoRA r 8 with alpha/r 4");
  });

  it("leaves lr 2e-3 alone where the rank is large or alpha/r small, not above 5e-3", () => {
    const at = (lr: number, r: number, alpha: number) =>
      codes(
        lrFindings(
          loaded({ train: { lr } as RunConfigInput["train"], lora: { r, alpha } as RunConfigInput["lora"] }).config,
          chatglm,
          data(3000),
        ),
      );
    expect(at(2e-3, 64, 128)).toEqual([]);
    expect(at(2e-3, 8, 8)).toEqual([]);
    expect(at(6e-3, 64, 16)).toEqual(["CONFIG_LR_HIGH"]);
  });

  it("flags lr < 1e-5 as low, and lr < 1e-4 on a small dataset as a note", () => {
    const low = lrFindings(loaded({ train: { lr: 5e-6 } as RunConfigInput["train"] }).config, chatglm, data(3000));
    expect(codes(low)).toEqual(["CONFIG_LR_LOW"]);
    expect(low[0]?.evidence.steps).toBe(plannedSteps(data(3000), loaded({}).config.train));
    const seed = loaded({ train: { lr: 5e-5 } as RunConfigInput["train"] }).config;
    expect(codes(lrFindings(seed, chatglm, data(300)))).toEqual(["CONFIG_LR_SMALL_DATA"]);
    expect(lrFindings(seed, chatglm, data(300))[0]?.severity).toBe("info");
    expect(lrFindings(seed, chatglm, data(5000))).toEqual([]);
  });
});

describe("precision against the hardware", () => {
  const cfg = (precision: "fp16" | "bf16" | "auto") =>
    loaded({ train: { precision } as RunConfigInput["train"] }).config;
  const v100: Probe = {
    ...h200,
    cuda: {
      ...h200.cuda,
      devices: [
        {
          index: 0,
          name: "Tesla V100-SXM2-32GB",
          capability: [7, 0],
          bf16: false,
          memory_free: 3e10,
          memory_total: 3.4e10,
          errors: {},
        },
      ],
    },
  };

  it("suggests bf16 over fp16 on a GPU that has it", () => {
    const [f] = precisionFindings(cfg("fp16"), hardwareOf(h200, "auto"));
    expect(f?.code).toBe("CONFIG_PREFER_BF16");
    expect(f?.evidence).toMatchObject({ device: "NVIDIA H200", capability: "9.0" });
    expect(precisionFindings(cfg("bf16"), hardwareOf(h200, "auto"))).toEqual([]);
  });

  it("stops bf16 on a pre-Ampere GPU", () => {
    const [f] = precisionFindings(cfg("bf16"), hardwareOf(v100, "auto"));
    expect(f).toMatchObject({ code: "CONFIG_BF16_UNSUPPORTED", severity: "error" });
    expect(f?.title).toBe("precision bf16 on Tesla V100-SXM2-32GB, which has no bf16 (compute capability 7.0)");
    expect(precisionFindings(cfg("auto"), hardwareOf(v100, "auto"))).toEqual([]);
  });

  it("sees fp32 on a GPU coming: the fast path attends through SDPA (info, not an error)", () => {
    const fp32 = loaded({ train: { precision: "fp32" } as RunConfigInput["train"] }).config;
    const [f, ...rest] = precisionFindings(fp32, hardwareOf(h200, "auto"), chatglm);
    expect(rest).toEqual([]);
    expect(f).toMatchObject({ code: "CONFIG_FP32_ON_GPU", severity: "info", stage: "config" });
    expect(f?.title).toContain("SDPA with a block mask, not flash attention");
    expect(precisionFindings(fp32, hardwareOf(h200, "auto"), llama)).toEqual([]); // no fast path there
    expect(precisionFindings(fp32, cpu, chatglm)).toEqual([]);
  });

  it("warns about half precision on the CPU", () => {
    expect(codes(precisionFindings(cfg("fp16"), cpu))).toEqual(["CONFIG_HALF_ON_CPU"]);
    expect(precisionFindings(cfg("auto"), cpu)).toEqual([]);
  });
});

describe("LoRA targets", () => {
  it("stops llama names on chatglm and suggests query_key_value", () => {
    const [f, ...rest] = targetFindings(["q_proj", "v_proj"], chatglm);
    expect(rest).toEqual([]);
    expect(f).toMatchObject({ code: "CONFIG_TARGETS_WRONG_FAMILY", severity: "error" });
    expect(f?.evidence.suggestion).toEqual(["query_key_value"]);
    expect(f?.fix).toContain("lora.targets: [query_key_value]");
  });

  it("maps chatglm names to llama's, keeping the names that are right", () => {
    const [f] = targetFindings(["query_key_value", "o_proj"], llama);
    expect(f?.evidence.targets).toEqual(["query_key_value"]);
    expect(f?.evidence.suggestion).toEqual(["o_proj", "q_proj", "k_proj", "v_proj"]);
  });

  it("warns about names no family has, with the nearest one", () => {
    const [f] = targetFindings(["qproj", "q_proj"], llama);
    expect(f?.code).toBe("CONFIG_TARGETS_UNKNOWN");
    expect(f?.evidence.did_you_mean).toEqual({ qproj: "q_proj" });
  });

  it("accepts the family's sets and dotted paths", () => {
    expect(targetFindings(chatglm.allLinear, chatglm)).toEqual([]);
    expect(targetFindings(["self_attention.query_key_value", "output_layer"], chatglm)).toEqual([]);
    expect(targetFindings(llama.allLinear, llama)).toEqual([]);
  });
});

describe("steps and eval split", () => {
  it("flags fewer than 20 optimizer steps", () => {
    const l = loaded({ train: { epochs: 1, batch_size: 8, grad_accum: 4 } as RunConfigInput["train"] });
    const f = configFindings({ loaded: l, family: chatglm, data: data(300), hardware: null }).find(
      (x) => x.code === "CONFIG_STEPS_FEW",
    );
    expect(f?.evidence).toMatchObject({ steps: 10, samples: 300, batch_size: 8, grad_accum: 4, epochs: 1 });
  });

  it("flags an empty eval split, saying why", () => {
    const none = loaded({ data: { train: "t.json", eval_split: 0 } as RunConfigInput["data"] });
    const f = configFindings({ loaded: none, family: chatglm, data: data(3000, 0), hardware: null }).find(
      (x) => x.code === "CONFIG_EVAL_EMPTY",
    );
    expect(f?.title).toBe("no held-out samples: data.eval_split is 0 and no data.eval is given");
  });

  it("notes when the data cannot be counted", () => {
    const f = configFindings({
      loaded: loaded({}),
      family: chatglm,
      data: null,
      dataError: "bad JSON",
      hardware: null,
    });
    expect(codes(f)).toEqual(["CONFIG_DATA_UNCOUNTED"]);
  });
});

describe("counting the data before it is prepared", () => {
  it("counts JSON arrays and JSON lines, holds out eval_split, estimates tokens", () => {
    const dir = tmpDir();
    const a = path.join(dir, "a.json");
    const b = path.join(dir, "b.jsonl");
    const records = Array.from({ length: 150 }, (_, i) => ({ instruction: "x".repeat(35), input: "", output: `${i}` }));
    writeFileSync(a, `\uFEFF${JSON.stringify(records)}`);
    writeFileSync(
      b,
      [
        ...Array.from({ length: 49 }, () => JSON.stringify({ instruction: "嬛".repeat(40), output: "" })),
        "{broken",
      ].join("\n"),
    );
    const d = estimateDataset(loaded({}, { train: [a, b] }));
    expect(d).toMatchObject({ trainSamples: 190, evalSamples: 10, source: "estimated" });
    // 150 × (ceil(36..38 chars / 3.5) + 8) + 49 × (40 CJK × 0.75 + 8) + the broken line (ceil(7 / 3.5) + 8),
    // scaled to the 190 samples kept for training.
    expect(d.trainTokens).toBe(Math.round(((150 * 19 + 49 * 38 + 10) * 190) / 200));
    const withEval = estimateDataset(loaded({}, { train: [a], eval: [b] }));
    expect(withEval).toMatchObject({ trainSamples: 150, evalSamples: 50 });
  });
});
