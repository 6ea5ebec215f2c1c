// The command line as a newcomer meets it, in-process: each command's help explains every option with
// examples; a mistyped option or config key gets the nearest valid one; `~` in paths is the home folder.
import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import type { Command } from "../src/cli/command.js";
import { loadConfig } from "../src/config/load.js";
import type { LorakitError } from "../src/errors.js";
import { fixture, runCli, tmpDir, writeCodeWords } from "./helpers.js";

const COMMANDS = {
  train: () => import("../src/cli/train.js"),
  demo: () => import("../src/cli/demo.js"),
  compare: () => import("../src/cli/compare.js"),
  tokenize: () => import("../src/cli/tokenize.js"),
  data: () => import("../src/cli/data.js"),
  protocol: () => import("../src/cli/protocol.js"),
  env: () => import("../src/cli/env.js"),
  doctor: () => import("../src/cli/doctor.js"),
};

describe("--help", () => {
  it("train --help explains --resume, --fresh, --force and --no-smoke, with examples", async () => {
    const r = await runCli(["train", "--help"]);
    expect(r.code).toBe(0);
    const help = r.stdout;
    for (const [option, words] of [
      ["--resume", "last checkpoint"],
      ["--fresh", "start the run over"],
      ["--force", "doctor's checks found errors"],
      ["--no-smoke", "skip the smoke run"],
    ] as const) {
      const line = help.split("\n").find((l) => l.trimStart().startsWith(option));
      expect(line, help).toBeDefined();
      expect(help.replace(/\s+/g, " ")).toContain(words);
    }
    expect(help).toContain("examples:");
    expect(help).toContain("lorakit train run.yaml --resume");
  });

  it("every command's help names each of its options with a description, and shows an example of it", async () => {
    for (const [name, load] of Object.entries(COMMANDS)) {
      const c = (await load()).command as Command;
      const r = await runCli([name, "-h"]);
      expect(r.code).toBe(0);
      const flat = r.stdout.replace(/\s+/g, " ");
      expect(r.stdout).toContain(`usage: lorakit ${name}`);
      for (const [option, spec] of Object.entries(c.options)) {
        expect(spec.description.length, `${name} --${option}`).toBeGreaterThan(15);
        expect(flat, `${name} --${option}`).toContain(`--${option}`);
        expect(flat).toContain(spec.description.replace(/\s+/g, " "));
      }
      expect(c.examples.length).toBeGreaterThan(0);
      for (const [line] of c.examples) expect(r.stdout).toContain(line);
    }
  });

  it("`lorakit help <command>` is the command's help", async () => {
    const r = await runCli(["help", "data"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("--sample N");
  });
});

describe("a wrong command line", () => {
  it("an unknown option gets the nearest one, not node's parseArgs message; exit 2", async () => {
    const r = await runCli(["train", "run.yaml", "--resum"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("unknown option '--resum'");
    expect(r.stderr).toContain("did you mean '--resume'?");
    expect(r.stderr).not.toContain("To specify a positional argument");
    expect(r.stderr).toContain("usage: lorakit train <run.yaml>");
  });

  it("every problem at once: two unknown options, a missing value, an extra argument", async () => {
    const r = await runCli(["compare", "a.yaml", "b.yaml", "c.yaml", "--no-trian", "--jsn", "--out"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("did you mean '--no-train'?");
    expect(r.stderr).toContain("unknown option '--jsn'");
    expect(r.stderr).toContain("option '--out' needs a value (FILE)");
    expect(r.stderr).toContain("unexpected argument 'c.yaml'");
  });

  it("a boolean option given a value, a required option missing", async () => {
    const a = await runCli(["data", "run.yaml", "--json=yes"]);
    expect(a.code).toBe(2);
    expect(a.stderr).toContain("option '--json' takes no value");
    const b = await runCli(["tokenize", "hello"]);
    expect(b.code).toBe(2);
    expect(b.stderr).toContain("--model DIR is required");
  });
});

describe("config keys: the nearest valid key, across sections", () => {
  async function hint(yaml: string): Promise<string[]> {
    const dir = tmpDir();
    writeCodeWords(dir);
    writeFileSync(path.join(dir, "run.yaml"), `model: ${fixture("models", "tiny-llama")}\n${yaml}`);
    const e = (await loadConfig(path.join(dir, "run.yaml")).catch((x) => x)) as LorakitError;
    return e
      .all()
      .map((x) => `${x.where?.key}: ${x.hint}`)
      .sort();
  }

  it("data.max_len → data.max_length; learning_rate → train.lr; lr at the top → train.lr", async () => {
    expect(await hint("data:\n  train: train.json\n  max_len: 256\n")).toEqual([
      "data.max_len: did you mean 'data.max_length'?",
    ]);
    expect(await hint("data:\n  train: train.json\nlearning_rate: 1e-4\n")).toEqual([
      "learning_rate: did you mean 'train.lr'?",
    ]);
    expect(await hint("data:\n  train: train.json\nlr: 1e-4\ntrain:\n  learning_rate: 1e-4\n")).toEqual([
      "lr: did you mean 'train.lr'?",
      "train.learning_rate: did you mean 'train.lr'?",
    ]);
    expect(await hint("data:\n  train: train.json\n  epochs: 2\nlora:\n  lora_alpha: 16\n")).toEqual([
      "data.epochs: did you mean 'train.epochs'?",
      "lora.lora_alpha: did you mean 'lora.alpha'?",
    ]);
  });

  it("a typo within the section still finds its key", async () => {
    expect(await hint("data:\n  train: train.json\nlroa: {}\ntrain:\n  bacth_size: 2\n")).toEqual([
      "lroa: did you mean 'lora'?",
      "train.bacth_size: did you mean 'train.batch_size'?",
    ]);
  });
});

describe("~ in paths", () => {
  it("the config's paths and the command line's paths start at the home folder", async () => {
    const home = tmpDir("lorakit-home-");
    mkdirSync(path.join(home, "models"));
    symlinkSync(fixture("models", "tiny-llama"), path.join(home, "models", "tiny"));
    mkdirSync(path.join(home, "proj"));
    writeCodeWords(path.join(home, "proj"));
    writeFileSync(
      path.join(home, "proj", "run.yaml"),
      "model: ~/models/tiny\noutput_dir: ~/runs\ndata:\n  train: ~/proj/train.json\n",
    );
    const env = { HOME: home };
    const elsewhere = tmpDir();
    const loaded = await loadConfig("~/proj/run.yaml", elsewhere, env);
    expect(loaded.modelDir).toBe(path.join(home, "models", "tiny"));
    expect(loaded.trainFiles).toEqual([path.join(home, "proj", "train.json")]);
    expect(loaded.outputDir).toBe(path.join(home, "runs"));
    const data = await runCli(["data", "~/proj/run.yaml", "--json"], { cwd: elsewhere, env });
    expect(data.stderr).toBe("");
    expect(data.code).toBe(0);
    const tok = await runCli(["tokenize", "--model", "~/models/tiny", "--json", "hello"], { cwd: elsewhere, env });
    expect(tok.code).toBe(0);
    expect(JSON.parse(tok.stdout).ids.length).toBeGreaterThan(0);
  });
});
