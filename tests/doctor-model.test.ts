// The model check through the engine's inspection, on the tiny fixtures: the failures planted in the
// request (targets the model lacks, targets matching one layer, adapters left in the base's fp16) come back
// as findings with the right codes; the model's remote code is noted.
import { readFileSync } from "node:fs";
import { beforeAll, describe, expect, it } from "vitest";
import { modelSummary, remoteCodeFindings, runModelInspection } from "../src/doctor/model.js";
import { ensurePython, type PythonEnv } from "../src/engine/python.js";
import { fixture } from "./helpers.js";

let py: PythonEnv;
beforeAll(async () => {
  py = await ensurePython({ env: process.env });
});

describe("runModelInspection", () => {
  it("llama names on ChatGLM3: targets not found, with the model's linear modules and the family's set", async () => {
    const r = await runModelInspection(py, {
      modelDir: fixture("models", "chatglm3-single"),
      targets: ["q_proj", "v_proj"],
      r: 8,
      alpha: 32,
      dropout: 0.1,
      precision: "fp32",
      device: "cpu",
    });
    expect(r.findings.map((f) => [f.code, f.severity, f.stage])).toEqual([
      ["MODEL_TARGETS_NOT_FOUND", "error", "model"],
    ]);
    expect(r.findings[0]?.evidence).toMatchObject({
      recommended: ["query_key_value"],
      linear_modules: ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "output_layer"],
    });
    expect(r.facts?.layers).toBe(2);
  });

  it("a target in one layer of two, adapters in fp16: partly matched and half-precision adapters", async () => {
    const r = await runModelInspection(py, {
      modelDir: fixture("models", "tiny-llama"),
      targets: ["q_proj", "layers.1.self_attn.v_proj"],
      r: 4,
      alpha: 8,
      dropout: 0,
      precision: "fp16",
      device: "cpu",
      noFp32Adapters: true,
    });
    expect(r.findings.map((f) => f.code)).toEqual(["MODEL_TARGETS_PARTIAL", "MODEL_ADAPTER_DTYPE"]);
    expect(r.findings[0]?.evidence).toMatchObject({ matched_total: 3, expected_total: 4 });
    expect(r.findings[1]?.evidence.dtypes).toEqual({ float16: 6 });
    expect(modelSummary(r.facts!)).toBe(
      "LoRA on 3 modules (3 of 4 expected), 1,408 trainable of 198,336 parameters (0.71%)",
    );
  });
});

describe("remote code", () => {
  it("notes ChatGLM3's auto_map, which lorakit never runs", () => {
    const config = JSON.parse(readFileSync(fixture("models", "chatglm3-single", "config.json"), "utf8"));
    const [f] = remoteCodeFindings(config);
    expect(f).toMatchObject({ code: "MODEL_REMOTE_CODE", severity: "info" });
    expect(f?.title).toBe(
      "config.json points at remote code (configuration_chatglm.ChatGLMConfig); lorakit builds chatglm without running it",
    );
    expect(remoteCodeFindings({ model_type: "llama" })).toEqual([]);
  });
});
