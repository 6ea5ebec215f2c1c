// The road of `lorakit train run.yaml`: config → model and tokenizer → prepared data → plan →
// engine (supervised, recorded) → samples, report. Each stage stops the road with a clear error.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { stringify as toYaml } from "yaml";
import type { LoadedConfig } from "../config/load.js";
import type { Event, Plan } from "../config/schema.js";
import { loadTokenizer, type Tokenizer } from "../data/tokenizer.js";
import { ensurePython, type PythonEnv } from "../engine/python.js";
import { engineFailure, spawnEngine } from "../engine/supervisor.js";
import { LorakitError } from "../errors.js";
import { type Family, familyFor, supportedModelTypes } from "../models/families.js";
import { renderReport } from "../report/html.js";
import { RunStore } from "../runs/store.js";
import { type PreparedRun, prepareForRun } from "./prepare-run.js";

export interface ModelInfo {
  dir: string;
  modelType: string;
  family: Family;
  vocabSize: number;
  layers: number;
  config: Record<string, unknown>;
}

export function inspectModel(dir: string): ModelInfo {
  const cfgPath = path.join(dir, "config.json");
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(readFileSync(cfgPath, "utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new LorakitError("MODEL_BAD_CONFIG", `cannot read ${cfgPath}: ${(e as Error).message}`, {
      where: { file: cfgPath },
      hint: "point `model` at a checkpoint folder with a valid config.json",
    });
  }
  const modelType = String(config.model_type ?? "");
  const family = familyFor(modelType);
  if (!family) {
    throw new LorakitError("MODEL_UNSUPPORTED", `model_type '${modelType}' is not supported`, {
      where: { file: cfgPath, key: "model_type" },
      hint: `supported: ${supportedModelTypes().join(", ")}`,
    });
  }
  const vocabSize = Number(config.padded_vocab_size ?? config.vocab_size ?? 0);
  const layers = Number(family.layerKeys.map((k) => config[k]).find((v) => v !== undefined) ?? 0);
  return { dir, modelType, family, vocabSize, layers, config };
}

export interface RoadOptions {
  resume?: boolean;
  force?: boolean;
  signal?: AbortSignal;
  log: (line: string) => void;
  onEvent?: (event: Event) => void;
  /** Overrides for tests: the engine's environment. */
  py?: PythonEnv;
  env?: NodeJS.ProcessEnv;
  /** Test hook passed to the plan. */
  failAtStep?: number;
}

export interface RoadResult {
  status: "completed" | "failed" | "stopped";
  runDir: string;
  adapterDir: string | null;
  reportPath: string;
  exactMatch: { before: number | null; after: number | null; n: number };
  error: LorakitError | null;
  runId: number;
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
    text += tokenizer.decode(run, { skipSpecial: true }) + `⟨id ${id}⟩`;
    run = [];
  }
  return text + tokenizer.decode(run, { skipSpecial: true });
}

export function totalSteps(samples: number, batch: number, accum: number, epochs: number, maxSteps?: number): number {
  const microPerEpoch = Math.ceil(samples / batch);
  const stepsPerEpoch = Math.ceil(microPerEpoch / accum);
  const total = Math.max(1, Math.ceil(stepsPerEpoch * epochs));
  return maxSteps !== undefined ? Math.min(total, maxSteps) : total;
}

function exactMatchShare(samples: { output: string; reference: string | null }[]): number | null {
  const scored = samples.filter((s) => s.reference !== null);
  if (scored.length === 0) return null;
  return scored.filter((s) => s.output.trim() === (s.reference as string).trim()).length / scored.length;
}

export function buildPlan(
  loaded: LoadedConfig,
  model: ModelInfo,
  prepared: PreparedRun,
  runDir: string,
  opts: { resume: boolean; failAtStep?: number },
): Plan {
  const c = loaded.config;
  const total = totalSteps(
    prepared.train.samples,
    c.train.batch_size,
    c.train.grad_accum,
    c.train.epochs,
    c.train.max_steps,
  );
  return {
    version: 1,
    run_dir: runDir,
    model: { path: model.dir, family: model.family.name, model_type: model.modelType, vocab_size: model.vocabSize },
    data: {
      train: { dir: prepared.train.dir, samples: prepared.train.samples, tokens: prepared.train.tokens },
      eval: prepared.eval
        ? { dir: prepared.eval.dir, samples: prepared.eval.samples, tokens: prepared.eval.tokens }
        : null,
      pad_id: prepared.padId,
    },
    lora: {
      r: c.lora.r,
      alpha: c.lora.alpha,
      dropout: c.lora.dropout,
      targets: c.lora.targets ?? model.family.targets,
    },
    train: {
      total_steps: total,
      epochs: c.train.epochs,
      batch_size: c.train.batch_size,
      grad_accum: c.train.grad_accum,
      lr: c.train.lr ?? model.family.lr,
      scheduler: c.train.scheduler,
      warmup_steps: Math.round(c.train.warmup_ratio * total),
      weight_decay: c.train.weight_decay,
      max_grad_norm: c.train.max_grad_norm,
      seed: c.train.seed,
      precision: c.train.precision,
      gradient_checkpointing: c.train.gradient_checkpointing,
      log_every: c.train.log_every,
      eval_every: c.train.eval_every,
      save_every: c.train.save_every,
      keep_checkpoints: c.train.keep_checkpoints,
      device: c.train.device,
      devices: c.train.devices,
    },
    samples: {
      items: prepared.heldOut.map((s) => ({ index: s.index, prompt_ids: s.promptIds })),
      max_new_tokens: c.samples.max_new_tokens,
      stop_ids: prepared.stopIds,
      before: true,
    },
    resume: opts.resume,
    adapter_extras: prepared.adapterExtras,
    ...(opts.failAtStep !== undefined ? { fail_at_step: opts.failAtStep } : {}),
  };
}

export async function runRoad(loaded: LoadedConfig, opts: RoadOptions): Promise<RoadResult> {
  const { log } = opts;
  const c = loaded.config;
  const runDir = path.join(loaded.outputDir, loaded.name);
  if (opts.resume && !existsSync(path.join(runDir, "checkpoints"))) {
    throw new LorakitError("RESUME_NOTHING", `run '${loaded.name}' has no checkpoints to resume from`, {
      where: { file: runDir },
      hint: `start it without --resume: lorakit train ${path.basename(loaded.file)}`,
    });
  }

  // Model and tokenizer.
  const model = inspectModel(loaded.modelDir);
  const tokenizer: Tokenizer = await loadTokenizer(loaded.modelDir);
  log(`model       ${loaded.modelDir} (${model.modelType}, family ${model.family.name}, ${model.layers} layers)`);

  // Data.
  const prepared = await prepareForRun(loaded, model, tokenizer, log);

  // Store and run directory.
  mkdirSync(runDir, { recursive: true });
  const store = RunStore.forOutputDir(loaded.outputDir);
  const resolvedYaml = toYaml({ ...c, model: loaded.modelDir });
  const run = store.openRun(loaded.name, JSON.stringify(c), { resume: Boolean(opts.resume), forced: opts.force });
  writeFileSync(path.join(runDir, "config.yaml"), resolvedYaml);
  const plan = buildPlan(loaded, model, prepared, runDir, {
    resume: Boolean(opts.resume),
    failAtStep: opts.failAtStep,
  });
  const planPath = path.join(runDir, "plan.json");
  writeFileSync(planPath, `${JSON.stringify(plan, null, 2)}\n`);
  store.setPlan(run.id, JSON.stringify(plan));

  const py = opts.py ?? (await ensurePython({ env: opts.env ?? process.env, log }));
  const logFile = path.join(runDir, "engine.log");
  const heldOut = new Map(prepared.heldOut.map((s) => [s.index, s]));
  const outputs: Record<"before" | "after", { output: string; reference: string | null }[]> = { before: [], after: [] };

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
        if (event.phase !== "during") outputs[event.phase].push(row);
      }
      opts.onEvent?.(event);
    },
  });
  const result = await engine.done;

  let status: RoadResult["status"];
  let error: LorakitError | null = null;
  if (result.finished && !result.finished.stopped_early && result.exitCode === 0) status = "completed";
  else if (result.finished && result.exitCode === 0) status = "stopped";
  else {
    status = "failed";
    error = engineFailure(result, logFile);
  }
  store.finish(run.id, status, error ? `${error.code}: ${error.message}` : undefined);

  const exactMatch = {
    before: exactMatchShare(outputs.before),
    after: exactMatchShare(outputs.after),
    n: prepared.heldOut.filter((s) => s.reference !== null).length,
  };
  const pct = (x: number | null) => (x === null ? "—" : `${(100 * x).toFixed(1)}%`);
  const reportPath = path.join(runDir, "report.html");
  writeFileSync(
    reportPath,
    renderReport({
      name: loaded.name,
      status,
      configYaml: resolvedYaml,
      metrics: store.metrics(run.id),
      findings: store.findings(run.id),
      samples: store.samples(run.id),
      summary: {
        model: `${loaded.modelDir} (${model.modelType})`,
        data: `${prepared.train.samples} train / ${prepared.eval?.samples ?? 0} eval samples, ${prepared.train.tokens} train tokens`,
        steps: `${plan.train.total_steps} optimizer steps, batch ${c.train.batch_size} × accumulation ${c.train.grad_accum}, lr ${plan.train.lr}`,
        lora: `r ${plan.lora.r}, alpha ${plan.lora.alpha}, dropout ${plan.lora.dropout} on ${plan.lora.targets.join(", ")}`,
        "held-out exact match": `before ${pct(exactMatch.before)} → after ${pct(exactMatch.after)} (${exactMatch.n} samples)`,
        ...(error ? { error: `${error.code}: ${error.message.split("\n")[0]}` } : {}),
      },
    }),
  );
  store.close();
  const adapterDir = result.finished ? result.finished.adapter_dir : null;
  return { status, runDir, adapterDir, reportPath, exactMatch, error, runId: run.id };
}
