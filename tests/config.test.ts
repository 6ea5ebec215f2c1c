import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { loadConfig, parseConfigText } from "../src/config/load.js";
import { RunConfig } from "../src/config/schema.js";
import { protocolFiles, staleProtocolFiles } from "../src/engine/protocol.js";
import { ROOT } from "../src/engine/python.js";
import { LorakitError } from "../src/errors.js";
import { runCli, tmpDir } from "./helpers.js";

function errorsOf(fn: () => unknown): LorakitError[] {
  try {
    fn();
  } catch (e) {
    if (e instanceof LorakitError) return e.all();
    throw e;
  }
  throw new Error("expected an error");
}

describe("run config", () => {
  it("fills the Self-LLM recipe defaults", () => {
    const c = RunConfig.parse({ model: "m", data: { train: "t.json" } });
    expect(c.lora).toEqual({ r: 8, alpha: 32, dropout: 0.1 });
    expect(c.train.batch_size).toBe(4);
    expect(c.train.grad_accum).toBe(2);
    expect(c.train.log_every).toBe(10);
    expect(c.train.lr).toBeUndefined(); // the family decides
    expect(c.data.max_length).toBe(512);
  });

  it("reports every problem at once, with line, key path and the nearest valid key or value", () => {
    const text = [
      "model: ./m",
      "data:",
      "  train: t.jsonl",
      "  formt: alpaca",
      "lora:",
      "  r: eight",
      "train:",
      "  scheduler: cosin",
      "  batchsize: 4",
      "",
    ].join("\n");
    const errs = errorsOf(() => parseConfigText(text, "/x/run.yaml"));
    const byKey = new Map(errs.map((e) => [e.where?.key, e]));
    expect(errs).toHaveLength(4);
    const formt = byKey.get("data.formt");
    expect(formt?.code).toBe("CONFIG_UNKNOWN_KEY");
    expect(formt?.where?.line).toBe(4);
    expect(formt?.hint).toContain("data.format");
    const r = byKey.get("lora.r");
    expect(r?.code).toBe("CONFIG_WRONG_TYPE");
    expect(r?.where?.line).toBe(6);
    expect(r?.hint).toContain("number");
    const sched = byKey.get("train.scheduler");
    expect(sched?.code).toBe("CONFIG_BAD_VALUE");
    expect(sched?.hint).toContain("did you mean 'cosine'");
    expect(byKey.get("train.batchsize")?.hint).toContain("train.batch_size");
  });

  it("names a missing required key", () => {
    const errs = errorsOf(() => parseConfigText("data:\n  train: t.json\n", "/x/run.yaml"));
    expect(errs.map((e) => [e.code, e.where?.key])).toEqual([["CONFIG_MISSING_KEY", "model"]]);
  });

  it("train.shard: none by default; fsdp needs more than one device", () => {
    const parse = (train: string) =>
      parseConfigText(`model: m\ndata:\n  train: t.json\ntrain:\n${train}`, "/x/run.yaml").config.train;
    expect(parse("  devices: 1\n").shard).toBe("none");
    expect(errorsOf(() => parse("  devices: 2\n  shard: auto\n"))[0]?.hint).toBe("expected one of: none, fsdp");
    expect(parse("  devices: 2\n  shard: fsdp\n").shard).toBe("fsdp");
    const errs = errorsOf(() => parse("  shard: fsdp\n"));
    expect(errs.map((e) => [e.code, e.where?.key, e.where?.line])).toEqual([["CONFIG_BAD_VALUE", "train.shard", 5]]);
    expect(errs[0]?.message).toContain("train.devices to 2 or more");
    expect(errorsOf(() => parse("  devices: 2\n  shard: fdsp\n"))[0]?.hint).toContain("did you mean 'fsdp'");
  });

  it("train.fast_path: auto by default, or true or false", () => {
    const parse = (train: string) =>
      parseConfigText(`model: m\ndata:\n  train: t.json\ntrain:\n${train}`, "/x/run.yaml").config.train;
    expect(parse("  epochs: 1\n").fast_path).toBe("auto");
    expect(parse("  fast_path: false\n").fast_path).toBe(false);
    expect(parse("  fast_path: true\n").fast_path).toBe(true);
    const errs = errorsOf(() => parse("  fast_path: yes please\n"));
    expect(errs.map((e) => [e.code, e.where?.key, e.where?.line])).toEqual([
      ["CONFIG_BAD_VALUE", "train.fast_path", 5],
    ]);
  });

  it("train.gradient_checkpointing: true, false or low_memory; anything else is named with its line", () => {
    const parse = (value: string) =>
      parseConfigText(`model: m\ndata:\n  train: t.json\ntrain:\n  gradient_checkpointing: ${value}\n`, "/x/run.yaml")
        .config.train.gradient_checkpointing;
    expect(parse("true")).toBe(true);
    expect(parse("low_memory")).toBe("low_memory");
    const errs = errorsOf(() => parse("low_memroy"));
    expect(errs.map((e) => [e.where?.key, e.where?.line])).toEqual([["train.gradient_checkpointing", 5]]);
    expect(errs[0]?.code).toBe("CONFIG_BAD_VALUE");
    expect(errs[0]?.hint).toBe("did you mean 'low_memory'? expected one of: true, false, low_memory");
  });

  it("reports bad YAML with its line", () => {
    const errs = errorsOf(() => parseConfigText("model: [\n", "/x/run.yaml"));
    expect(errs[0]?.code).toBe("CONFIG_BAD_YAML");
    expect(errs[0]?.where?.line).toBeGreaterThan(0);
  });

  it("checks paths on disk, suggesting the nearest file", async () => {
    const dir = tmpDir();
    mkdirSync(path.join(dir, "model"));
    writeFileSync(path.join(dir, "model", "config.json"), "{}");
    writeFileSync(path.join(dir, "train.jsonl"), "");
    writeFileSync(path.join(dir, "run.yaml"), "model: model\ndata:\n  train: trian.jsonl\n  eval: [missing.jsonl]\n");
    const err = await loadConfig(path.join(dir, "run.yaml")).catch((e) => e as LorakitError);
    expect(err).toBeInstanceOf(LorakitError);
    const all = (err as LorakitError).all();
    expect(all.map((e) => e.where?.key)).toEqual(["data.train", "data.eval[0]"]);
    expect(all[0]?.code).toBe("CONFIG_MISSING_PATH");
    expect(all[0]?.where?.line).toBe(3);
    expect(all[0]?.hint).toContain("train.jsonl");
  });

  it("the CLI prints each error and exits non-zero", async () => {
    const dir = tmpDir();
    writeFileSync(path.join(dir, "run.yaml"), "model: nowhere\ndata:\n  train: t.jsonl\nlroa: {}\n");
    const r = await runCli(["train", "run.yaml"], { cwd: dir });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("CONFIG_UNKNOWN_KEY");
    expect(r.stderr).toContain("did you mean 'lora'");
    expect(r.stderr).toMatch(/run\.yaml:4/);
  });
});

describe("protocol", () => {
  it("protocol/ is the current export of the zod schema, the code catalogue and the families", async () => {
    expect(await staleProtocolFiles(path.join(ROOT, "protocol"))).toEqual([]);
    const dir = tmpDir();
    writeFileSync(path.join(dir, "findings.json"), "{}\n");
    expect(await staleProtocolFiles(dir)).toEqual(Object.keys(protocolFiles()));
    expect(Object.keys(protocolFiles())).toEqual(expect.arrayContaining(["findings.json", "families.json"]));
  });

  it("findings.json holds every code with what the engine fills in; families.json every family", () => {
    const files = protocolFiles();
    const findings = JSON.parse(files["findings.json"] as string);
    expect(findings.version).toBe(1);
    expect(findings.codes.MODEL_TARGETS_PARTIAL).toEqual({
      stage: "model",
      severity: "warning",
      title: "LoRA targets match {matched_total} modules, fewer than layers × targets = {expected_total}",
      fix: "Use plain leaf names that occur in every layer, and drop names that match nothing.",
      row: "targets partly matched",
    });
    expect(findings.errors.CUDA_OOM).toEqual({ stage: "training", from: "engine", when: "the GPU ran out of memory" });
    expect(findings.codes.LORA_TARGETS_PARTLY_MATCHED).toBeUndefined(); // renamed: MODEL_TARGETS_PARTIAL
    const families = JSON.parse(files["families.json"] as string);
    expect(families.version).toBe(1);
    const byName = Object.fromEntries(families.families.map((f: { name: string }) => [f.name, f]));
    expect(byName.chatglm).toMatchObject({ model_types: ["chatglm"], builder: "native", layer_keys: ["num_layers"] });
    // transformers builds glm (GlmForCausalLM) and glm4 (Glm4ForCausalLM) with separate classes.
    expect([byName.glm?.model_types, byName.glm4?.model_types]).toEqual([["glm"], ["glm4"]]);
  });
});

describe("cli", () => {
  it("suggests the nearest command", async () => {
    const r = await runCli(["trian"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("did you mean 'train'");
  });

  it("prints help", async () => {
    const r = await runCli(["help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("train");
    expect(r.stdout).toContain("demo");
  });
});
