// `lorakit train run.yaml`: the whole road, supervised, with a live progress display.
import { loadConfig } from "../config/load.js";
import { errorOfFindings } from "../findings/index.js";
import { exactMatchText } from "../runs/exact-match.js";
import { type QuitHook, runRoad } from "../train/road.js";
import { defineCommand } from "./command.js";
import { renderFinding } from "./findings-view.js";
import { withInterrupt } from "./interrupt.js";
import { out } from "./io.js";
import { eventPrinter, stoppedLine } from "./progress.js";

export const command = defineCommand({
  name: "train",
  summary: "fine-tune a model with LoRA as a run config says",
  args: "<run.yaml>",
  positionals: [1, 1],
  description:
    "Reads the run config, checks the environment, config, memory, data and model (as `lorakit doctor` does), " +
    "prepares the data, makes a smoke run (two steps, save, reload, generate), then trains with live " +
    "monitors, samples the held-out prompts before and after, and writes the adapter (PEFT format) and " +
    "report.html under output_dir/<name>/. Ctrl-C ends the current step, saves a checkpoint and stops (a second " +
    "Ctrl-C quits at once, saying what is not saved); --resume continues from there. One lorakit trains a run at " +
    "a time (runs/<name>/run.lock).",
  options: {
    resume: {
      type: "boolean",
      description:
        "continue the run from its last checkpoint (after Ctrl-C, a crash or kill -9) with the settings it started with: the losses match an uninterrupted run. A changed setting is refused before anything is written, each named (then and now); a completed run says so",
    },
    fresh: {
      type: "boolean",
      description: "start the run over: delete the checkpoints and adapter an earlier run of the same name left",
    },
    force: {
      type: "boolean",
      description:
        "train even when the doctor's checks found errors (the run records that it was forced); warnings never stop a run",
    },
    "no-smoke": {
      type: "boolean",
      description: "skip the smoke run (two steps, save, reload and generate on a slice) before the real one",
    },
  },
  examples: [
    ["lorakit train run.yaml", "train as run.yaml says"],
    ["lorakit train run.yaml --resume", "continue after Ctrl-C or a crash"],
    ["lorakit train run.yaml --fresh", "train again from scratch under the same name"],
    ["lorakit doctor run.yaml && lorakit train run.yaml --no-smoke", "check first, then train without the smoke run"],
  ],
  async run({ values, positionals }, io) {
    const configPath = positionals[0] as string;
    const loaded = await loadConfig(configPath, io.cwd, io.env);
    const { onEvent, progress, trace } = eventPrinter(io, loaded.config.train.log_every);
    const quit: QuitHook = {};
    const result = await withInterrupt(
      io,
      (signal) =>
        runRoad(loaded, {
          resume: Boolean(values.resume),
          force: Boolean(values.force),
          fresh: Boolean(values.fresh),
          smoke: !values["no-smoke"],
          signal,
          env: io.env,
          log: (l) => progress.line(l),
          onEvent,
          onFinding: (f) => progress.line(renderFinding(f, io)),
          quit,
        }),
      progress,
      undefined,
      () => quit.quit?.(),
    ).finally(() => progress.end());
    if (result.completedAt !== undefined) {
      const how = result.outcome === "completed" ? "" : ` (${result.outcome})`;
      out(io, `run         '${loaded.name}' completed at step ${result.completedAt}${how}; nothing to resume`);
      out(io, `report      ${result.reportPath}`);
      if (result.adapterDir) out(io, `adapter     ${result.adapterDir}`);
      return 0;
    }
    if (result.exactMatch.n > 0 && result.exactMatch.after !== null) {
      out(io, `held-out exact match: ${exactMatchText(result.exactMatch)}`);
    }
    if (result.status !== "stopped") out(io, `run         ${result.outcome}`);
    out(io, `report      ${result.reportPath}`);
    if (result.status === "stopped") {
      out(io, stoppedLine(trace, `lorakit train ${configPath} --resume`));
      return 130;
    }
    if (result.adapterDir) out(io, `adapter     ${result.adapterDir}`);
    if (result.usage && result.status === "completed") {
      out(io, "use it      from Python, as below (also in the adapter's README.md, its model card):");
      out(io, result.usage.replace(/^(?=.)/gm, "    "));
    }
    if (result.error) throw result.error;
    if (result.errorFindings.length > 0) {
      // The run finished, but the doctor found errors in it: say so in the exit code too.
      throw errorOfFindings(result.errorFindings);
    }
    return 0;
  },
});
