// The road of `lorakit train run.yaml`: config → model and tokenizer → prepared data → plan →
// engine (supervised, recorded) → samples, report. Each stage stops the road with a clear error.
import { existsSync, mkdirSync, rmdirSync, rmSync } from "node:fs";
import path from "node:path";
import { stringify as toYaml } from "yaml";
import type { LoadedConfig } from "../config/load.js";
import type { Tokenizer } from "../data/index.js";
import { outputFindings } from "../doctor/index.js";
import { ensurePython } from "../engine/python.js";
import { type EngineRun, engineFailure, spawnEngine } from "../engine/supervisor.js";
import { LorakitError } from "../errors.js";
import { writeFileAtomic } from "../files/atomic.js";
import { newestVerifiedCheckpoint, resumableCheckpoint } from "../files/checkpoints.js";
import { findingsError, fromEvent } from "../findings/index.js";
import { plural } from "../format.js";
import { buildPlan } from "../plan/index.js";
import { writeReport } from "../report/html.js";
import { modelCardFacts, writeModelCard } from "../report/model-card.js";
import { exactMatchShare, exactMatchText } from "../runs/exact-match.js";
import { type Checkpoint, checkpoints, removeTornWrites } from "../runs/layout.js";
import { RunLock } from "../runs/lock.js";
import { configChanges, planChanges, type Recorded, readRecorded, resumeRefusal } from "../runs/resume.js";
import { RunStore } from "../runs/store.js";
import { prepareAndCheck } from "./prepare-and-check.js";
import type { RoadOptions, RoadResult } from "./road-types.js";
import { smokeRun, stoppedBeforeTraining } from "./smoke.js";

export type { QuitHook, RoadOptions, RoadResult } from "./road-types.js";
export { smokeRun } from "./smoke.js";

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
  const runDir = path.join(loaded.outputDir, loaded.name);
  // The checkpoint a resume takes (the newest whose files match their SHA256SUMS), or the refusal, before any file
  // of the run is written.
  const resumeFrom = opts.resume ? resumableCheckpoint(runDir, loaded.name, path.basename(loaded.file)) : null;
  const created = !existsSync(runDir);
  mkdirSync(runDir, { recursive: true });
  const flags = [opts.resume && "--resume", opts.fresh && "--fresh", opts.force && "--force"].filter(Boolean);
  // One lorakit per run: taken before anything of the run is read or written, held to the end.
  const lock = RunLock.acquire(runDir, loaded.name, {
    command: ["lorakit train", path.basename(loaded.file), ...flags].join(" "),
    log: opts.log,
  });
  const store = RunStore.forOutputDir(loaded.outputDir);
  try {
    for (const s of store.settled) opts.log(`runs        run '${s.name}' was left running: ${s.reason}; marked failed`);
    removeTornWrites(runDir);
    return await road(loaded, opts, { runDir, lock, store, resumeFrom });
  } catch (e) {
    // A road stopped by an error (or by Ctrl-C before training) after it opened the run: the run says so.
    const row = store.getRun(loaded.name);
    if (row?.status === "running" && row.owner_pid === process.pid) {
      const err = e instanceof LorakitError ? e : null;
      const status = err?.code === "INTERRUPTED" ? "stopped" : "failed";
      store.finish(row.id, status, `${err?.code ?? "INTERNAL_ERROR"}: ${(e as Error).message}`);
    }
    throw e;
  } finally {
    if (opts.quit) opts.quit.quit = undefined;
    store.close();
    lock.release();
    if (created) rmEmptyDir(runDir); // a run that stopped before writing anything leaves no trace
  }
}

function rmEmptyDir(dir: string): void {
  try {
    rmdirSync(dir);
  } catch {
    // not empty: the run wrote something
  }
}

interface Held {
  runDir: string;
  lock: RunLock;
  store: RunStore;
  /** The checkpoint a `--resume` continues from (found and verified once, before the lock). */
  resumeFrom: Checkpoint | null;
}

/** `--resume` of a run: refused (every changed setting named) before anything is written; or, when the run has
 * already completed and nothing asks for more steps, its result as it stands. */
function checkResume(
  loaded: LoadedConfig,
  store: RunStore,
  runDir: string,
  from: Checkpoint | null,
): { recorded: Recorded; done: RoadResult | null } {
  const row = store.getRun(loaded.name);
  const fallback = row ? { configJson: row.config_json, planJson: row.plan_json } : undefined;
  const recorded = readRecorded(runDir, fallback, from);
  const refused = resumeRefusal(loaded, configChanges(recorded, loaded.config));
  if (refused) throw refused;
  const longer =
    recorded.config !== null &&
    (JSON.stringify(recorded.config.train?.max_steps ?? null) !==
      JSON.stringify(loaded.config.train.max_steps ?? null) ||
      recorded.config.train?.epochs !== loaded.config.train.epochs);
  if (row?.status !== "completed" || longer) return { recorded, done: null };
  const step =
    (store.lastEvent(row.id, "done") as { step?: number } | undefined)?.step ?? recorded.checkpoint?.step ?? 0;
  const samples = store.samples(row.id);
  const adapterDir = path.join(runDir, "adapter");
  return {
    recorded,
    done: {
      status: "completed",
      outcome: row.error ? row.error : "completed",
      runDir,
      adapterDir: existsSync(adapterDir) ? adapterDir : null,
      reportPath: path.join(runDir, "report.html"),
      exactMatch: {
        before: exactMatchShare(samples, "before"),
        after: exactMatchShare(samples, "after"),
        n: samples.filter((s) => s.phase === "after" && s.reference !== null).length,
      },
      error: null,
      runId: row.id,
      errorFindings: [],
      usage: null,
      completedAt: step,
    },
  };
}

async function road(loaded: LoadedConfig, opts: RoadOptions, held: Held): Promise<RoadResult> {
  const { log } = opts;
  const { runDir, lock, store } = held;
  const c = loaded.config;
  const cfgName = path.basename(loaded.file);
  const quit = opts.quit ?? {};
  quit.quit = () => {
    lock.release();
    return "quitting now: nothing was trained yet, nothing is lost";
  };

  const recorded = opts.resume ? checkResume(loaded, store, runDir, held.resumeFrom) : null;
  if (recorded?.done) return recorded.done;

  const earlier = [
    ...(checkpoints(runDir).length > 0 ? ["checkpoints"] : []),
    ...(existsSync(path.join(runDir, "adapter")) ? ["adapter"] : []),
  ];
  if (!opts.resume && earlier.length > 0) {
    if (!opts.fresh) {
      throw new LorakitError("RUN_EXISTS", `run '${loaded.name}' already has ${earlier.join(" and ")} in ${runDir}`, {
        where: { file: loaded.file },
        hint: "continue it with --resume, start it over with --fresh (deletes them), or give the run another name",
      });
    }
  }
  if (opts.fresh && !opts.resume) {
    for (const d of ["checkpoints", "adapter", "smoke"]) rmSync(path.join(runDir, d), { recursive: true, force: true });
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

  // The plan before anything is written: a value it cannot resolve (LORAKIT_PROFILE_STEPS) stops the road here,
  // and so does a resume whose plan differs from the one the run was started with (its data, say).
  const plan = buildPlan(loaded, model, prepared, {
    runDir,
    resume: Boolean(opts.resume),
    found: doctor.hardware,
    env: opts.env ?? process.env,
  });
  if (recorded) {
    const changed = resumeRefusal(loaded, planChanges(recorded.recorded, c, plan));
    if (changed) throw changed;
  }

  // The run's records: from here on, the run is `running` in the store, owned by this process.
  const resolvedYaml = toYaml({ ...c, model: loaded.modelDir });
  const run = store.openRun(loaded.name, JSON.stringify(c), {
    resume: Boolean(opts.resume),
    forced: Boolean(opts.force && refused),
  });
  let engine: EngineRun | null = null;
  let training = false; // false: the smoke run (or nothing yet) is in progress
  quit.quit = () => {
    engine?.kill();
    const at = newestVerifiedCheckpoint(runDir).newest;
    const gives = !training
      ? "nothing of the run was trained yet"
      : at
        ? `the step in progress is not saved; the last checkpoint is step ${at.step} (${at.dir})`
        : "the step in progress is not saved, and no checkpoint was written yet";
    store.finish(run.id, "stopped", `quit at once (a second Ctrl-C): ${gives}`);
    lock.release();
    const next = at ? `continue with: lorakit train ${cfgName} --resume` : `start it again: lorakit train ${cfgName}`;
    return `quitting now: ${gives}; ${next}`;
  };
  if (opts.resume) store.clearFindings(run.id); // the checks run again; the engine reports its own again
  for (const f of doctor.findings) store.addFinding(run.id, f.stage, f);
  writeFileAtomic(path.join(runDir, "config.yaml"), resolvedYaml, { what: "the run's config.yaml" });
  const planPath = path.join(runDir, "plan.json");
  writeFileAtomic(planPath, `${JSON.stringify(plan, null, 2)}\n`, { what: "the run's plan.json" });
  store.setPlan(run.id, JSON.stringify(plan));

  // The smoke run: a few steps on a small slice, save, reload, generate — before the real run.
  if (opts.smoke !== false && !opts.resume) {
    const counts = {
      trainSamples: prepared.train.samples,
      trainTokens: prepared.train.tokens,
      trainLengths: prepared.trainLengths ?? undefined,
    };
    const smoke = await smokeRun(py, plan, counts, runDir, {
      ...opts,
      onEngine: (e) => {
        engine = e;
        lock.setEngine(e?.pid ?? null);
      },
    });
    engine = null;
    if (smoke) {
      store.addFinding(run.id, smoke.stage, smoke);
      opts.onFinding?.(smoke);
      store.finish(run.id, "failed", `${smoke.code}: ${smoke.title}`);
      throw new LorakitError(smoke.code, smoke.title, { hint: smoke.fix });
    }
    log("smoke       ok: a few steps, save, reload and generate worked");
  }

  const logFile = path.join(runDir, "engine.log");
  const heldOut = new Map(prepared.heldOut.map((s) => [s.index, s]));

  const trainer = spawnEngine({
    py,
    command: "train",
    planPath,
    devices: plan.train.devices,
    logFile,
    signal: opts.signal,
    onEvent: (event) => {
      if (event.type === "start" && opts.resume) {
        store.truncateMetrics(run.id, event.start_step);
        const missing = store.missingSteps(run.id, event.start_step);
        if (missing.length > 0)
          log(
            `runs        the losses of ${plural(missing.length, "step")} before the checkpoint (${stepsText(missing)}) were never recorded: the lorakit that trained them was killed before it read them (the checkpoint holds their training)`,
          );
      }
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
  engine = trainer;
  training = true;
  lock.setEngine(trainer.pid ?? null);
  const result = await trainer.done;
  lock.setEngine(null);

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
  const exactMatch = {
    // From the store: a resumed run keeps the "before" samples of its first start.
    before: exactMatchShare(store.samples(run.id), "before"),
    after: exactMatchShare(store.samples(run.id), "after"),
    n: prepared.heldOut.filter((s) => s.reference !== null).length,
  };
  const reportPath = path.join(runDir, "report.html");
  const adapterDir = result.finished ? result.finished.adapter_dir : null;
  let usage: string | null = null;
  try {
    // The report and the adapter's model card are written before the run is marked finished: a run the store
    // calls completed has both (a lorakit killed while writing them leaves it `running`, settled as failed,
    // and --resume writes them again).
    writeReport(reportPath, {
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
    });
    // The adapter's model card (over peft's blank one) and how to use it, now that the metrics are known.
    usage =
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
  } finally {
    // The store keeps status "completed" (resume and compare read it); the note says what it completed with.
    store.finish(run.id, status, error ? `${error.code}: ${error.message}` : outcome !== status ? outcome : undefined);
  }
  return { status, outcome, runDir, adapterDir, reportPath, exactMatch, error, runId: run.id, errorFindings, usage };
}

/** Step numbers as ranges: "3, 7–9". */
function stepsText(steps: readonly number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < steps.length; ) {
    let j = i;
    while (j + 1 < steps.length && (steps[j + 1] as number) === (steps[j] as number) + 1) j++;
    parts.push(i === j ? `${steps[i]}` : `${steps[i]}–${steps[j]}`);
    i = j + 1;
  }
  return parts.join(", ");
}
