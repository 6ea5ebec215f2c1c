// The road of `lorakit train run.yaml`: config → model and tokenizer → prepared data → plan →
// engine (supervised, recorded) → samples, report. Each stage stops the road with a clear error.
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { stringify as toYaml } from "yaml";
import type { LoadedConfig } from "../config/load.js";
import type { Event, Plan } from "../config/schema.js";
import type { Tokenizer } from "../data/index.js";
import { outputFindings } from "../doctor/index.js";
import { ensurePython, type PythonEnv } from "../engine/python.js";
import { engineFailure, spawnEngine } from "../engine/supervisor.js";
import { LorakitError } from "../errors.js";
import { resumableCheckpoint } from "../files/checkpoints.js";
import { type Finding, findingsError, fromEvent, makeFinding } from "../findings/index.js";
import { plural } from "../format.js";
import { buildPlan, smokePlan, type TrainCounts } from "../plan/index.js";
import { renderReport } from "../report/html.js";
import { modelCardFacts, writeModelCard } from "../report/model-card.js";
import { exactMatchShare, exactMatchText } from "../runs/exact-match.js";
import { RunStore } from "../runs/store.js";
import { prepareAndCheck } from "./prepare-and-check.js";

export interface RoadOptions {
  resume?: boolean;
  force?: boolean;
  signal?: AbortSignal;
  log: (line: string) => void;
  onEvent?: (event: Event) => void;
  /** Overrides for tests: the engine's environment. */
  py?: PythonEnv;
  env?: NodeJS.ProcessEnv;
  /** The smoke run before the real one (default on). */
  smoke?: boolean;
  /** Start over: delete an earlier run's checkpoints and adapter under the same name. */
  fresh?: boolean;
  /** Every finding as it is made: the doctor's, the smoke run's, training's, the outputs'. */
  onFinding?: (f: Finding) => void;
}

/** The smoke run (smokePlan: 2 optimizer steps on a slice, one sample, save + reload check); null when it passed. */
export async function smokeRun(
  py: PythonEnv,
  plan: Plan,
  counts: TrainCounts,
  runDir: string,
  opts: RoadOptions,
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
  const result = await engine.done;
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

function stoppedBeforeTraining(): LorakitError {
  return new LorakitError("INTERRUPTED", "stopped (Ctrl-C) before training started; nothing was trained", {
    hint: "run the same command again to start",
    exitCode: 130,
  });
}

export interface RoadResult {
  status: "completed" | "failed" | "stopped";
  /** The status in words: "completed with 1 error finding: ADAPTER_RELOAD_MISMATCH" (outcomeText). */
  outcome: string;
  runDir: string;
  adapterDir: string | null;
  reportPath: string;
  exactMatch: { before: number | null; after: number | null; n: number };
  error: LorakitError | null;
  runId: number;
  /** Error findings made during or after training (the run completed, but its result is not to be trusted). */
  errorFindings: { code: string; title: string; fix: string }[];
  /** Python that loads the adapter and generates (also in the adapter's README.md); null without an adapter. */
  usage: string | null;
}

/**
 * The run's outcome in words, as the report, the run store and the terminal say it: a run that completed
 * with error findings (a failed adapter reload check, say) never reads as plainly "completed".
 */
export function outcomeText(status: RoadResult["status"], errorFindings: readonly { code: string }[]): string {
  if (status !== "completed" || errorFindings.length === 0) return status;
  const codes = [...new Set(errorFindings.map((f) => f.code))];
  const n = errorFindings.length;
  return `completed with ${plural(n, "error finding")}: ${codes.join(", ")}`;
}

/** Decodes generated ids; ids the tokenizer does not know (a model's padded vocabulary) show as ⟨id N⟩. */
export function decodeGenerated(tokenizer: Tokenizer, ids: readonly number[]): string {
  const known = (id: number) => id >= 0 && id < tokenizer.vocabSize && tokenizer.idToToken(id) !== undefined;
  let text = "";
  let run: number[] = [];
  for (const id of ids) {
    if (known(id)) {
      run.push(id);
      continue;
    }
    text += `${tokenizer.decode(run, { skipSpecial: true })}⟨id ${id}⟩`;
    run = [];
  }
  return text + tokenizer.decode(run, { skipSpecial: true });
}

export async function runRoad(loaded: LoadedConfig, opts: RoadOptions): Promise<RoadResult> {
  const { log } = opts;
  const c = loaded.config;
  const runDir = path.join(loaded.outputDir, loaded.name);
  if (opts.resume) resumableCheckpoint(runDir, loaded.name, path.basename(loaded.file));

  const earlier = ["checkpoints", "adapter"].filter((d) => existsSync(path.join(runDir, d)));
  if (!opts.resume && earlier.length > 0) {
    if (!opts.fresh) {
      throw new LorakitError("RUN_EXISTS", `run '${loaded.name}' already has ${earlier.join(" and ")} in ${runDir}`, {
        where: { file: loaded.file },
        hint: "continue it with --resume, start it over with --fresh (deletes them), or give the run another name",
      });
    }
    for (const d of [...earlier, "smoke"]) rmSync(path.join(runDir, d), { recursive: true, force: true });
  }

  // Everything before the GPU: model, tokenizer, data, and the doctor's checks on them.
  const py = opts.py ?? (await ensurePython({ env: opts.env ?? process.env, log }));
  const { model, tokenizer, prepared, doctor } = await prepareAndCheck(loaded, {
    py,
    env: opts.env ?? process.env,
    ...(opts.signal ? { signal: opts.signal } : {}),
    log,
    onStep: (s) => {
      if (s.status !== "ok") log(`doctor      ${s.name}: ${s.summary}`);
      for (const f of s.findings) opts.onFinding?.(f);
    },
  });
  log(`model       ${loaded.modelDir} (${model.modelType}, family ${model.family.name}, ${model.layers} layers)`);
  if (opts.signal?.aborted) throw stoppedBeforeTraining();
  const refused = findingsError(doctor.findings);
  if (refused && !opts.force) {
    throw new LorakitError(refused.code, `the doctor found ${refused.all().length} error(s); training did not start`, {
      hint: "fix them (details above, or run `lorakit doctor <config>`), or pass --force to train anyway (recorded in the run)",
      more: refused.all(),
    });
  }

  // The plan before anything is written: a value it cannot resolve (LORAKIT_PROFILE_STEPS) stops the road here.
  const plan = buildPlan(loaded, model, prepared, {
    runDir,
    resume: Boolean(opts.resume),
    found: doctor.hardware,
    env: opts.env ?? process.env,
  });

  // Store and run directory.
  mkdirSync(runDir, { recursive: true });
  const store = RunStore.forOutputDir(loaded.outputDir);
  const resolvedYaml = toYaml({ ...c, model: loaded.modelDir });
  const run = store.openRun(loaded.name, JSON.stringify(c), {
    resume: Boolean(opts.resume),
    forced: Boolean(opts.force && refused),
  });
  if (opts.resume) store.clearFindings(run.id); // the checks run again; the engine reports its own again
  for (const f of doctor.findings) store.addFinding(run.id, f.stage, f);
  writeFileSync(path.join(runDir, "config.yaml"), resolvedYaml);
  const planPath = path.join(runDir, "plan.json");
  writeFileSync(planPath, `${JSON.stringify(plan, null, 2)}\n`);
  store.setPlan(run.id, JSON.stringify(plan));

  // The smoke run: a few steps on a small slice, save, reload, generate — before the real run.
  if (opts.smoke !== false && !opts.resume) {
    const counts = {
      trainSamples: prepared.train.samples,
      trainTokens: prepared.train.tokens,
      trainLengths: prepared.trainLengths ?? undefined,
    };
    const smoke = await smokeRun(py, plan, counts, runDir, opts);
    if (smoke) {
      store.addFinding(run.id, smoke.stage, smoke);
      opts.onFinding?.(smoke);
      store.finish(run.id, "failed", `${smoke.code}: ${smoke.title}`);
      store.close();
      throw new LorakitError(smoke.code, smoke.title, { hint: smoke.fix });
    }
    log("smoke       ok: a few steps, save, reload and generate worked");
  }

  const logFile = path.join(runDir, "engine.log");
  const heldOut = new Map(prepared.heldOut.map((s) => [s.index, s]));

  const engine = spawnEngine({
    py,
    command: "train",
    planPath,
    devices: plan.train.devices,
    logFile,
    signal: opts.signal,
    onEvent: (event) => {
      if (event.type === "start" && opts.resume) store.truncateMetrics(run.id, event.start_step);
      store.record(run.id, event);
      if (event.type === "finding") opts.onFinding?.(fromEvent(event));
      if (event.type === "sample") {
        const item = heldOut.get(event.index);
        const output = decodeGenerated(tokenizer, event.output_ids);
        const row = {
          phase: event.phase,
          idx: event.index,
          prompt: item?.display ?? "",
          output,
          reference: item?.reference ?? null,
          stopped: event.stopped ? 1 : 0,
        };
        store.addSample(run.id, row);
      }
      opts.onEvent?.(event);
    },
  });
  const result = await engine.done;

  let status: RoadResult["status"];
  let error: LorakitError | null = null;
  // A `done` event without an `error` is success: torchrun exits non-zero after a clean Ctrl-C stop.
  if (result.finished && !result.error && !result.finished.stopped_early) status = "completed";
  else if (result.finished && !result.error) status = "stopped";
  else {
    status = "failed";
    error = engineFailure(result, logFile);
  }
  if (status === "completed") {
    for (const f of outputFindings(store.samples(run.id))) {
      store.addFinding(run.id, f.stage, f);
      opts.onFinding?.(f);
    }
  }
  const errorFindings = store
    .findings(run.id)
    .filter((f) => f.severity === "error" && (f.stage === "training" || f.stage === "outputs"))
    .map((f) => ({ code: f.code, title: f.title, fix: f.fix }));
  const outcome = outcomeText(status, errorFindings);
  // The store keeps status "completed" (resume and compare read it); the note says what it completed with.
  store.finish(run.id, status, error ? `${error.code}: ${error.message}` : outcome !== status ? outcome : undefined);

  const exactMatch = {
    // From the store: a resumed run keeps the "before" samples of its first start.
    before: exactMatchShare(store.samples(run.id), "before"),
    after: exactMatchShare(store.samples(run.id), "after"),
    n: prepared.heldOut.filter((s) => s.reference !== null).length,
  };
  const reportPath = path.join(runDir, "report.html");
  writeFileSync(
    reportPath,
    renderReport({
      name: loaded.name,
      status: outcome,
      statusClass:
        outcome !== status ? "error" : status === "completed" ? "ok" : status === "stopped" ? "warning" : "error",
      configYaml: resolvedYaml,
      metrics: store.metrics(run.id),
      findings: store.findings(run.id),
      samples: store.samples(run.id),
      summary: {
        model: `${loaded.modelDir} (${model.modelType})`,
        data: `${prepared.train.samples} train / ${prepared.eval?.samples ?? 0} eval samples, ${prepared.train.tokens} train tokens`,
        steps: `${plan.train.total_steps} optimizer steps, ${c.train.pack_tokens !== undefined ? `rows of ≤ ${c.train.pack_tokens} tokens` : `batch ${c.train.batch_size}`} × accumulation ${c.train.grad_accum}, lr ${plan.train.lr}`,
        lora: `r ${plan.lora.r}, alpha ${plan.lora.alpha}, dropout ${plan.lora.dropout} on ${plan.lora.targets.join(", ")}`,
        "held-out exact match": exactMatchText(exactMatch),
        ...(error ? { error: `${error.code}: ${error.message.split("\n")[0]}` } : {}),
      },
    }),
  );
  const adapterDir = result.finished ? result.finished.adapter_dir : null;
  // The adapter's model card (over peft's blank one) and how to use it, now that the metrics are known.
  const usage =
    adapterDir && existsSync(adapterDir)
      ? writeModelCard(
          modelCardFacts({
            loaded,
            model,
            prepared,
            plan,
            store,
            runId: run.id,
            outcome,
            adapterDir,
            exactMatch,
            python: py.python,
          }),
        )
      : null;
  store.close();
  return { status, outcome, runDir, adapterDir, reportPath, exactMatch, error, runId: run.id, errorFindings, usage };
}
