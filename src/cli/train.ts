// `lorakit train run.yaml`: the whole road, supervised, with a live progress display.
import { loadConfig } from "../config/load.js";
import type { Event } from "../config/schema.js";
import { renderFinding } from "../doctor/finding.js";
import { LorakitError } from "../errors.js";
import { runRoad } from "../train/road.js";
import { parse } from "./args.js";
import { colors, err, type Io, out } from "./io.js";
import type { Command } from "./main.js";
import { Progress } from "./progress.js";

const usage = "lorakit train <run.yaml> [--resume | --fresh] [--force] [--no-smoke]";

/** Prints engine events for a person: the progress bar, evals, findings, checkpoints. */
export function eventPrinter(io: Io, logEvery: number): { onEvent: (e: Event) => void; progress: Progress } {
  const progress = new Progress(io, logEvery);
  const c = colors(io);
  const onEvent = (e: Event) => {
    switch (e.type) {
      case "start":
        progress.line(
          `engine      ${e.device_name} (${e.dtype}), LoRA on ${e.lora_modules} modules, ${e.trainable_params.toLocaleString("en-US")} trainable of ${e.total_params.toLocaleString("en-US")} parameters (${((100 * e.trainable_params) / Math.max(1, e.total_params)).toFixed(3)}%)${e.start_step ? `, resuming at step ${e.start_step}` : ""}`,
        );
        break;
      case "step":
        progress.step(e);
        break;
      case "eval":
        progress.line(`eval        step ${e.step}: loss ${e.loss === null ? "NaN" : e.loss.toFixed(4)}`);
        break;
      case "checkpoint":
        progress.line(c.dim(`checkpoint  step ${e.step} → ${e.path}`));
        break;
      case "finding":
        break; // printed through the road's onFinding, with the preflight and output findings
      case "log":
        if (e.level !== "debug") progress.line(c.dim(e.message));
        break;
      case "done":
        progress.end();
        break;
      default:
        break;
    }
  };
  return { onEvent, progress };
}

/** Turns Ctrl-C into an AbortSignal for the duration of `fn`. */
export async function withInterrupt<T>(io: Io, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  if (io.signal) return fn(io.signal);
  const ac = new AbortController();
  const onSig = () => {
    if (ac.signal.aborted) process.exit(130); // a second Ctrl-C: now
    err(io, "\nstopping: a running engine saves a checkpoint first (Ctrl-C again to quit at once) …");
    ac.abort();
  };
  process.on("SIGINT", onSig);
  try {
    return await fn(ac.signal);
  } finally {
    process.off("SIGINT", onSig);
  }
}

export const command: Command = {
  summary: "fine-tune a model with LoRA as a run config says",
  usage,
  async run(argv, io) {
    const { values, positionals } = parse(
      argv,
      {
        resume: { type: "boolean" },
        fresh: { type: "boolean" },
        force: { type: "boolean" },
        "no-smoke": { type: "boolean" },
      },
      usage,
    );
    const [configPath] = positionals;
    if (!configPath) {
      err(io, `usage: ${usage}`);
      return 2;
    }
    const loaded = await loadConfig(configPath, io.cwd);
    const { onEvent, progress } = eventPrinter(io, loaded.config.train.log_every);
    const result = await withInterrupt(io, (signal) =>
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
      }),
    );
    progress.end();
    if (result.exactMatch.n > 0 && result.exactMatch.after !== null) {
      const pct = (x: number | null) => (x === null ? "—" : `${(100 * x).toFixed(1)}%`);
      out(
        io,
        `held-out exact match: before ${pct(result.exactMatch.before)} → after ${pct(result.exactMatch.after)} (${result.exactMatch.n} samples)`,
      );
    }
    if (result.status !== "stopped") out(io, `run         ${result.outcome}`);
    out(io, `report      ${result.reportPath}`);
    if (result.adapterDir) out(io, `adapter     ${result.adapterDir}`);
    if (result.status === "stopped") {
      out(io, `stopped; continue with: lorakit train ${configPath} --resume`);
      return 130;
    }
    if (result.error) throw result.error;
    if (result.errorFindings.length > 0) {
      // The run finished, but the doctor found errors in it: say so in the exit code too.
      throw LorakitError.fromList(result.errorFindings.map((f) => new LorakitError(f.code, f.title, { hint: f.fix })));
    }
    return 0;
  },
};
