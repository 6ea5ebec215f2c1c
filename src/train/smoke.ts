// The smoke run before the real one: two optimizer steps on a slice of the data, one sample, the adapter saved
// and reloaded; any error finding fails it. Also the error for a road stopped before training started.
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { Plan } from "../config/schema.js";
import type { PythonEnv } from "../engine/python.js";
import { type EngineRun, engineFailure, spawnEngine } from "../engine/supervisor.js";
import { LorakitError } from "../errors.js";
import { type Finding, makeFinding } from "../findings/index.js";
import { smokePlan, type TrainCounts } from "../plan/index.js";
import type { RoadOptions } from "./road-types.js";

/** The smoke run (smokePlan: 2 optimizer steps on a slice, one sample, save + reload check); null when it passed. */
export async function smokeRun(
  py: PythonEnv,
  plan: Plan,
  counts: TrainCounts,
  runDir: string,
  opts: RoadOptions & { onEngine?: (e: EngineRun | null) => void },
): Promise<Finding | null> {
  const dir = path.join(runDir, "smoke");
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const smoke = smokePlan(plan, dir, counts);
  const planPath = path.join(dir, "plan.json");
  writeFileSync(planPath, `${JSON.stringify(smoke, null, 2)}\n`);
  const logFile = path.join(dir, "engine.log");
  const errors: string[] = [];
  const engine = spawnEngine({
    py,
    command: "train",
    planPath,
    logFile,
    signal: opts.signal,
    // An error finding (the reload check, targets, a non-finite loss) fails the smoke run too.
    onEvent: (e) => {
      if (e.type === "finding" && e.severity === "error") errors.push(`${e.code}: ${e.title}`);
    },
  });
  opts.onEngine?.(engine);
  const result = await engine.done;
  opts.onEngine?.(null);
  if (opts.signal?.aborted) throw stoppedBeforeTraining();
  if (result.finished && !result.error && !result.finished.stopped_early && errors.length === 0) {
    rmSync(dir, { recursive: true, force: true });
    return null;
  }
  if (errors.length > 0)
    return makeFinding("SMOKE_FAILED", { code: errors[0], error: errors.join("\n"), log: logFile });
  const failure = engineFailure(result, logFile);
  return makeFinding("SMOKE_FAILED", {
    code: failure.code,
    error: failure.message.split("\n").slice(0, 12).join("\n"),
    log: logFile,
  });
}

export function stoppedBeforeTraining(): LorakitError {
  return new LorakitError("INTERRUPTED", "stopped (Ctrl-C) before training started; nothing was trained", {
    hint: "run the same command again to start",
    exitCode: 130,
  });
}
