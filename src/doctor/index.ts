// The doctor's front door: `runDoctor` runs every check that can run before training — environment,
// config, memory, data (hook), model — and returns all findings at once, as numbered steps.
import { statSync } from "node:fs";
import path from "node:path";
import type { LoadedConfig } from "../config/load.js";
import { ensurePython, type PythonEnv } from "../engine/python.js";
import { LorakitError } from "../errors.js";
import { countFindings, type Finding, findingsOfError, makeFinding } from "../findings/index.js";
import { fmtBytes } from "../format.js";
import { type ModelInfo, readCheckpoint, TOKENIZER_FILES } from "../models/checkpoint.js";
import { supportedModelTypes } from "../models/families.js";
import { loraParams, loraTensors, modelShape } from "../models/shape.js";
import { fastPathSetting, plannedSteps, resolveDevice, resolveFastPath, resolvePrecision } from "../plan/index.js";
import { configFindings, type DatasetFacts, estimateDataset } from "./config.js";
import { diskNeed, onDisk } from "./disk-need.js";
import { envFindings, envSummary, type Hardware, hardwareOf, type Probe, runProbe } from "./env.js";
import { gpuUseFindings } from "./gpu-use.js";
import { estimateMemory, type MemoryEstimate, type MemoryInputs, memoryFindings } from "./memory.js";
import {
  type InspectFacts,
  modelSummary,
  remoteCodeFindings,
  runModelInspection,
  type TemplateSamples,
} from "./model.js";

export { dataFindings } from "./data.js";
export type { TemplateSamples } from "./model.js";
export { outputFindings } from "./outputs.js";

/** The data stage: the prepared data and the function that turns it into DATA_* findings (src/doctor/data.ts). */
export interface DataHook<S = unknown> {
  stats: S;
  check: (stats: S) => Finding[] | Promise<Finding[]>;
}

export type StepName = "environment" | "config" | "memory" | "data" | "model";

export interface StepResult {
  n: number;
  name: StepName;
  status: "ok" | "warn" | "fail" | "skipped";
  /** One line: what was checked and what it found. */
  summary: string;
  findings: Finding[];
}

export interface DoctorOptions {
  loaded: LoadedConfig;
  /** The engine's interpreter; made with ensurePython({env}) when absent. */
  py?: PythonEnv;
  /** Environment for the engine processes (CUDA_VISIBLE_DEVICES, LORAKIT_NVML_LIB, LORAKIT_PYTHON …). */
  env?: NodeJS.ProcessEnv;
  /** Exact counts from prepared data; estimated from the data files when absent. */
  dataset?: DatasetFacts;
  /** Data checks on the prepared data (src/train/prepare-and-check.ts passes them). */
  data?: DataHook;
  /** A few samples formatted with the run's template, and the same text plain (template-mismatch check). */
  templateSamples?: TemplateSamples;
  /** Leave out the model inspection (it loads the checkpoint). */
  skipModel?: boolean;
  /** Called as each step finishes (the CLI prints it). */
  onStep?: (step: StepResult) => void;
  /** Ctrl-C: the check running is killed and runDoctor throws INTERRUPTED (no finding is made of it). */
  signal?: AbortSignal;
  log?: (line: string) => void;
}

export interface DoctorReport {
  findings: Finding[];
  steps: StepResult[];
  ok: boolean;
  probe: Probe | null;
  hardware: Hardware | null;
  memory: MemoryEstimate | null;
  dataset: DatasetFacts | null;
  model: InspectFacts | null;
}

function status(findings: readonly Finding[]): StepResult["status"] {
  const c = countFindings(findings);
  return c.errors > 0 ? "fail" : c.warnings > 0 ? "warn" : "ok";
}

/** The checkpoint as read before loading it, or the reason it cannot be read as a finding. */
function readModel(dir: string): { info: ModelInfo } | { error: Finding } {
  try {
    return { info: readCheckpoint(dir) };
  } catch (e) {
    if (!(e instanceof LorakitError)) throw e;
    if (e.code !== "MODEL_UNSUPPORTED") return { error: makeFinding("MODEL_LOAD_FAILED", { error: e.message }) };
    const supported = supportedModelTypes();
    return {
      error: makeFinding(
        "MODEL_LOAD_FAILED",
        { error: e.message, supported },
        { fix: `Use a checkpoint of a supported family: ${supported.join(", ")}.` },
      ),
    };
  }
}

export function stoppedDuringChecks(): LorakitError {
  return new LorakitError(
    "INTERRUPTED",
    "stopped (Ctrl-C) during the checks, before training started; nothing was trained",
    {
      hint: "run the same command again to start",
      exitCode: 130,
    },
  );
}

/** Every check that can run before training, all findings at once. Never throws for what it finds. */
export async function runDoctor(o: DoctorOptions): Promise<DoctorReport> {
  const { loaded } = o;
  const c = loaded.config;
  const steps: StepResult[] = [];
  const step = (name: StepName, summary: string, findings: Finding[], skipped = false) => {
    // A check killed by Ctrl-C failed because of it: a stop, not a finding about the machine or the model.
    if (o.signal?.aborted) throw stoppedDuringChecks();
    const s: StepResult = {
      n: steps.length + 1,
      name,
      status: skipped ? "skipped" : status(findings),
      summary,
      findings,
    };
    steps.push(s);
    o.onStep?.(s);
  };

  const model = readModel(loaded.modelDir);
  const family = "info" in model ? model.info.family : null;
  const shape = "info" in model ? modelShape(model.info.config, model.info.family) : null;
  const targets = c.lora.targets ?? family?.targets ?? [];

  let dataset: DatasetFacts | null = o.dataset ?? null;
  let dataError: string | undefined;
  if (!dataset) {
    try {
      dataset = estimateDataset(loaded);
    } catch (e) {
      dataError = (e as Error).message;
    }
  }

  // 1. environment
  let py = o.py ?? null;
  let probe: Probe | null = null;
  const envOut: Finding[] = [];
  if (!py) {
    try {
      py = await ensurePython({ env: o.env ?? process.env, log: o.log });
    } catch (e) {
      if (!(e instanceof LorakitError)) throw e;
      // The interpreter cannot run the engine (packages missing or too old, no Python): that error, as a finding.
      envOut.push(...findingsOfError(e));
    }
  }
  if (py) {
    const r = await runProbe(py, loaded.outputDir, { env: o.env, ...(o.signal ? { signal: o.signal } : {}) });
    probe = r.probe;
    if (r.finding) envOut.push(r.finding);
  }
  const hardware = probe ? hardwareOf(probe, c.train.device) : null;
  // As the plan resolves them (src/plan): what trains is what is checked.
  const precision = resolvePrecision(c.train.precision, {
    device: resolveDevice(c.train.device, hardware),
    bf16: hardware?.bf16 ?? null,
  });
  const lora = shape ? loraParams(shape, targets, c.lora.r) : 0;
  if (probe) {
    const steps = dataset ? plannedSteps(dataset, c.train) : null;
    let cpuWork: Parameters<typeof envFindings>[1]["cpuWork"];
    if (shape && dataset && steps !== null) {
      const perSample = dataset.trainSamples > 0 ? dataset.trainTokens / dataset.trainSamples : 0;
      const full = dataset.trainTokens * c.train.epochs;
      const perMicro = c.train.pack_tokens ?? c.train.batch_size * perSample; // a row holds ≤ pack_tokens
      const capped = Math.min(full, steps * c.train.grad_accum * perMicro);
      cpuWork = {
        tokens: Math.round(capped),
        tokensBasis: `${dataset.trainTokens} train tokens × ${c.train.epochs} epochs${capped < full ? `, capped at max_steps ${c.train.max_steps}` : ""} (${dataset.source})`,
        flopsPerToken: (c.train.gradient_checkpointing !== false ? 6 : 4) * shape.matmulParams + 6 * lora,
      };
    }
    envOut.push(
      ...envFindings(probe, {
        device: c.train.device,
        precision: c.train.precision,
        diskNeed: shape
          ? diskNeed({
              loraParams: lora,
              loraTensors: loraTensors(shape, targets),
              keepCheckpoints: c.train.keep_checkpoints,
              patience: c.train.patience,
              copied: copiedBytes(loaded.modelDir),
              preparedTokens: dataset?.source === "prepared" ? 0 : (dataset?.trainTokens ?? 0),
            })
          : undefined,
        cpuWork,
      }),
    );
  }
  step("environment", probe && hardware ? envSummary(probe, hardware) : "the probe did not run", envOut);

  // 2. config
  const cfgOut = family ? configFindings({ loaded, family, data: dataset, dataError, hardware }) : [];
  const lr = c.train.lr ?? family?.lr;
  step(
    "config",
    `lr ${lr ?? "?"}${c.train.lr === undefined ? " (family default)" : ""}, LoRA r ${c.lora.r} alpha ${c.lora.alpha} on ${targets.join(", ") || "?"}, ${precision}${
      dataset
        ? `, ${plannedSteps(dataset, c.train)} steps over ${dataset.trainSamples} samples (${dataset.source})`
        : ""
    }`,
    cfgOut,
  );

  // 3. memory
  let memory: MemoryEstimate | null = null;
  let memOut: Finding[] = [];
  let memSummary = "skipped: the model's shape is unknown";
  if (shape) {
    const device = hardware?.device ?? "cpu";
    const fast = family ? resolveFastPath(fastPathSetting(c.train, o.env ?? process.env), family, device) : false;
    const runSteps = dataset ? plannedSteps(dataset, c.train) : null;
    const inputs: MemoryInputs = {
      shape,
      precision,
      // train.pack_tokens: a row of whole samples, ≤ pack_tokens tokens, a micro-batch.
      microBatch: c.train.pack_tokens === undefined ? c.train.batch_size : 1,
      seqLen: c.train.pack_tokens ?? c.data.max_length,
      ...(c.train.pack_tokens !== undefined ? { packed: true } : {}),
      checkpointing: c.train.gradient_checkpointing !== false,
      ...(c.train.gradient_checkpointing === "low_memory" && fast ? { lowMemory: true } : {}),
      r: c.lora.r,
      targets,
      dropout: c.lora.dropout,
      device,
      path: fast ? "fast" : "padded",
      ...(dataset?.trainLengths ? { lengths: dataset.trainLengths } : {}),
      ...(runSteps !== null ? { microBatches: runSteps * c.train.grad_accum * c.train.devices } : {}),
      ...(dataset?.trainTrainedTokens !== undefined && dataset.trainTokens > 0
        ? { trainedShare: dataset.trainTrainedTokens / dataset.trainTokens }
        : {}),
    };
    memory = estimateMemory(inputs);
    const free = hardware?.free ?? null;
    if (free !== null && hardware) {
      memOut = memoryFindings(memory, inputs, { free, deviceName: hardware.name, gradAccum: c.train.grad_accum });
      if (fast && dataset) memOut.push(...gpuUseFindings(inputs, c.train, dataset, free));
    }
    memSummary = `peak ≈ ${fmtBytes(memory.peak)} allocated (weights ${fmtBytes(memory.weights)}, activations ${fmtBytes(memory.activations)}, loss ${fmtBytes(memory.logits)}; the largest micro-batch ${memory.tokens} tokens, ${memory.path} path), needs ≈ ${fmtBytes(memory.need)} ${
      free !== null ? `of ${fmtBytes(free)} free on ${hardware?.name}` : "(free memory unknown)"
    }`;
  }
  step("memory", memSummary, memOut, !shape);

  // 4. data
  if (o.data) {
    const dataOut = await o.data.check(o.data.stats);
    step("data", `${dataOut.length} finding(s) from the prepared data`, dataOut);
  } else {
    step("data", "skipped: no prepared data was given", [], true);
  }

  // 5. model
  let facts: InspectFacts | null = null;
  const modelOut: Finding[] = [];
  if ("error" in model) modelOut.push(model.error);
  else modelOut.push(...remoteCodeFindings(model.info.config));
  const tooBig = memory && hardware?.free != null && memory.weights > hardware.free;
  if (o.skipModel || !py || !family || tooBig) {
    const why = o.skipModel
      ? "skipped (--skip-model)"
      : !family
        ? "skipped: the model cannot be read"
        : tooBig
          ? "skipped: the weights alone do not fit in free memory"
          : "skipped: no engine environment";
    step("model", why, modelOut, true);
  } else {
    const r = await runModelInspection(py, {
      modelDir: loaded.modelDir,
      targets,
      r: c.lora.r,
      alpha: c.lora.alpha,
      dropout: c.lora.dropout,
      precision,
      device: hardware?.device ?? "cpu",
      samples: o.templateSamples,
      env: o.env,
      ...(o.signal ? { signal: o.signal } : {}),
    });
    facts = r.facts;
    modelOut.push(...r.findings);
    step("model", facts ? modelSummary(facts) : "the inspection did not run", modelOut);
  }

  const findings = steps.flatMap((s) => s.findings);
  return {
    findings,
    steps,
    ok: countFindings(findings).errors === 0,
    probe,
    hardware,
    memory,
    dataset,
    model: facts,
  };
}

/** On-disk bytes of the base's tokenizer files, which the adapter folder gets a copy of. */
function copiedBytes(modelDir: string): number {
  let n = 0;
  for (const f of TOKENIZER_FILES) {
    try {
      n += onDisk(statSync(path.join(modelDir, f)).size);
    } catch {
      // not there: not copied
    }
  }
  return n;
}
