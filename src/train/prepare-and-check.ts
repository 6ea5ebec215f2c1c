// Everything before the GPU: read the model and its tokenizer, prepare the data, then run the
// doctor's checks (environment, config, memory, data, model) on exact counts. Shared by
// `lorakit doctor` and the train road, so both see the same findings.
import type { LoadedConfig } from "../config/load.js";
import { loadTokenizer, type PrepareProgress, pickConversations, type Tokenizer, viewSample } from "../data/index.js";
import { type DoctorReport, dataFindings, runDoctor, type StepResult, type TemplateSamples } from "../doctor/index.js";
import type { PythonEnv } from "../engine/python.js";
import { type ModelInfo, readCheckpoint } from "../models/checkpoint.js";
import { type PreparedRun, prepareForRun } from "./prepare-run.js";

export interface Checked {
  model: ModelInfo;
  tokenizer: Tokenizer;
  prepared: PreparedRun;
  doctor: DoctorReport;
}

/** A few training samples rendered with the run's template, and the same words without it. */
function templateSamples(loaded: LoadedConfig, prepared: PreparedRun, tokenizer: Tokenizer, n = 4): TemplateSamples {
  const d = loaded.config.data;
  // The first n only: the data file is read no further than them.
  const found = pickConversations(
    loaded.trainFiles,
    Array.from({ length: n }, (_, i) => i),
    { format: d.format, ...(d.system !== undefined ? { system: d.system } : {}) },
  ).picked;
  const picked = [...found.values()];
  return {
    formatted: picked.map((conv) => {
      const v = viewSample(conv, prepared.result.template, tokenizer, {
        maxLength: d.max_length,
        maskHistory: d.mask_history,
      });
      return { input_ids: v.ids, labels: v.labels };
    }),
    plain: picked.map((conv) => ({
      input_ids: tokenizer.encode(conv.messages.map((m) => m.content).join("\n")).slice(0, d.max_length),
    })),
  };
}

export async function prepareAndCheck(
  loaded: LoadedConfig,
  opts: {
    py?: PythonEnv;
    env?: NodeJS.ProcessEnv;
    log: (line: string) => void;
    onStep?: (s: StepResult) => void;
    skipModel?: boolean;
    signal?: AbortSignal;
    /** Progress of data preparation (default: a plain line through `log` every 10 s). */
    onDataProgress?: (p: PrepareProgress) => void;
  },
): Promise<Checked> {
  const model = readCheckpoint(loaded.modelDir);
  const tokenizer = await loadTokenizer(loaded.modelDir);
  const prepared = await prepareForRun(loaded, model, tokenizer, opts.log, opts.onDataProgress);
  const doctor = await runDoctor({
    loaded,
    ...(opts.py ? { py: opts.py } : {}),
    env: opts.env ?? process.env,
    dataset: {
      trainSamples: prepared.train.samples,
      evalSamples: prepared.eval?.samples ?? 0,
      trainTokens: prepared.train.tokens,
      trainLengths: prepared.trainLengths ?? undefined,
      trainTrainedTokens: prepared.result.train.trainedTokens,
      // Read only when pack_tokens asks (the pack finding names a sample): a million origins are not free.
      ...(loaded.config.train.pack_tokens !== undefined ? { trainOrigins: prepared.result.manifest.origins } : {}),
      source: "prepared",
      basis: `prepared data ${prepared.result.dir}`,
    },
    data: {
      stats: prepared.result,
      check: () =>
        dataFindings({ result: prepared.result, tokenizer, modelDir: loaded.modelDir, vocabRows: model.vocabSize }),
    },
    templateSamples: templateSamples(loaded, prepared, tokenizer),
    ...(opts.skipModel ? { skipModel: true } : {}),
    ...(opts.onStep ? { onStep: opts.onStep } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
    log: opts.log,
  });
  return { model, tokenizer, prepared, doctor };
}
