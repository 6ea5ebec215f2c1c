// Whether `lorakit train --resume` may continue a run, decided before anything of the run is written: the run's
// recorded config and plan (runs/<name>/config.yaml and plan.json, as it was last started) against today's.
// A resumed run continues the interrupted one exactly — the losses of a run never interrupted — so every
// setting the steps already taken depend on must be the same. Each difference is one located error naming
// the key, then and now; nothing on disk or in the store changes.
//
// The step count is the one setting a run may change on resume, and only where the learning-rate schedule does
// not depend on it (`scheduler: constant`, the same warmup): a cosine or linear schedule is a curve over the
// run's total steps, so a longer run is a different curve from its first step, and the learning rate would
// jump where the old curve ends. Such a run is refused with the reason; to train longer, start a run that says
// so from its first step (`--fresh`, or another name).
import { readFileSync } from "node:fs";
import path from "node:path";
import { parse as parseYaml } from "yaml";
import type { LoadedConfig } from "../config/load.js";
import { parseConfigText } from "../config/load.js";
import type { Plan, RunConfig } from "../config/schema.js";
import { LorakitError } from "../errors.js";
import { newestVerifiedCheckpoint } from "../files/checkpoints.js";
import { configValueText } from "./facts.js";
import type { Checkpoint } from "./layout.js";

/** What a run was last started with, read from its directory. */
export interface Recorded {
  config: RunConfig | null;
  plan: Plan | null;
  checkpoint: Checkpoint | null;
}

function readJsonish<T>(file: string, parse: (text: string) => unknown): T | null {
  try {
    const v = parse(readFileSync(file, "utf8"));
    return v && typeof v === "object" ? (v as T) : null;
  } catch {
    return null;
  }
}

/** config.yaml and plan.json of `runDir` (either null when missing or unreadable), and the checkpoint a resume takes
 * (the newest that verifies; given when the caller has already found it). */
export function readRecorded(
  runDir: string,
  fallback?: { configJson?: string; planJson?: string | null },
  checkpoint: Checkpoint | null = newestVerifiedCheckpoint(runDir).newest,
): Recorded {
  const config =
    readJsonish<RunConfig>(path.join(runDir, "config.yaml"), parseYaml) ??
    (fallback?.configJson ? readJsonish<RunConfig>("", () => JSON.parse(fallback.configJson as string)) : null);
  const plan =
    readJsonish<Plan>(path.join(runDir, "plan.json"), JSON.parse) ??
    (fallback?.planJson ? readJsonish<Plan>("", () => JSON.parse(fallback.planJson as string)) : null);
  return { config, plan, checkpoint };
}

export interface Change {
  /** The config key, as a person writes it (`lora.r`); `model` or `data` for what the config only names. */
  key: string;
  was: string;
  now: string;
  /** Why the steps already taken depend on it. */
  why: string;
  /** How to continue the run instead (default: put the key back to its old value). */
  back?: string;
}

const SAME_STEPS =
  "the steps already taken were made with the old value; continuing with the new one makes a run that no single start of either config makes";
const DATA_PLACE = "the checkpoint stands at a place in the data (epoch, micro-batch) counted in these units";

interface Rule {
  key: string;
  config?: (c: RunConfig) => unknown;
  plan?: (p: Plan) => unknown;
  why: string;
  back?: string;
}

const RULES: Rule[] = [
  { key: "lora.r", config: (c) => c.lora?.r, plan: (p) => p.lora.r, why: "the checkpoint's adapter has that rank" },
  { key: "lora.alpha", config: (c) => c.lora?.alpha, plan: (p) => p.lora.alpha, why: SAME_STEPS },
  { key: "lora.dropout", config: (c) => c.lora?.dropout, plan: (p) => p.lora.dropout, why: SAME_STEPS },
  {
    key: "lora.targets",
    config: (c) => c.lora?.targets,
    plan: (p) => p.lora.targets,
    why: "the checkpoint holds adapters of exactly those modules",
  },
  { key: "train.batch_size", config: (c) => c.train?.batch_size, plan: (p) => p.train.batch_size, why: DATA_PLACE },
  { key: "train.grad_accum", config: (c) => c.train?.grad_accum, plan: (p) => p.train.grad_accum, why: DATA_PLACE },
  { key: "train.pack_tokens", config: (c) => c.train?.pack_tokens, plan: (p) => p.train.pack_tokens, why: DATA_PLACE },
  { key: "train.devices", config: (c) => c.train?.devices, plan: (p) => p.train.devices, why: DATA_PLACE },
  {
    key: "train.seed",
    config: (c) => c.train?.seed,
    plan: (p) => p.train.seed,
    why: "the order of the samples and the dropout masks follow from it",
  },
  { key: "train.lr", config: (c) => c.train?.lr, plan: (p) => p.train.lr, why: SAME_STEPS },
  { key: "train.scheduler", config: (c) => c.train?.scheduler, plan: (p) => p.train.scheduler, why: SAME_STEPS },
  { key: "train.warmup_ratio", config: (c) => c.train?.warmup_ratio, why: SAME_STEPS },
  {
    key: "train.weight_decay",
    config: (c) => c.train?.weight_decay,
    plan: (p) => p.train.weight_decay,
    why: SAME_STEPS,
  },
  {
    key: "train.max_grad_norm",
    config: (c) => c.train?.max_grad_norm,
    plan: (p) => p.train.max_grad_norm,
    why: SAME_STEPS,
  },
  { key: "train.precision", config: (c) => c.train?.precision, plan: (p) => p.train.precision, why: SAME_STEPS },
  ...(["format", "template", "system", "max_length", "mask_history", "skip_bad_lines", "eval_split"] as const).map(
    (k): Rule => ({
      key: `data.${k}`,
      config: (c) => c.data?.[k],
      why: "the samples the steps were taken on are rendered with it",
    }),
  ),
  {
    key: "model",
    plan: (p) => `${p.model.model_type}, ${p.model.layers} layers, vocabulary ${p.model.vocab_size}`,
    why: "the checkpoint's adapter was trained on that model",
    back: "point `model` at the model it started with",
  },
];

const text = (v: unknown) => (v === undefined ? "not set" : configValueText(v));
const same = (a: unknown, b: unknown) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

function stepsKey(then: RunConfig | null, now: RunConfig): "train.max_steps" | "train.epochs" | null {
  if (!then) return null;
  if (!same(then.train?.max_steps, now.train.max_steps)) return "train.max_steps";
  if (!same(then.train?.epochs, now.train.epochs)) return "train.epochs";
  return null;
}

function scheduleChange(key: string, then: unknown, now: unknown, scheduler: string, at: Checkpoint | null): Change {
  const where = at ? ` and the checkpoint stands at step ${at.step}` : "";
  return {
    key,
    was: text(then),
    now: text(now),
    why:
      `the ${scheduler} learning-rate schedule is a curve over the run's total steps${where}; over another total it is ` +
      "another curve, so the learning rate would jump where the old one ends (no run started with the new value trains this way)",
  };
}

/** Differences between the config the run was started with and today's: found at once, before any work. */
export function configChanges(rec: Recorded, now: RunConfig): Change[] {
  const then = rec.config;
  if (!then) return [];
  const out: Change[] = [];
  for (const r of RULES) {
    if (!r.config) continue;
    const [a, b] = [r.config(then), r.config(now)];
    if (!same(a, b)) out.push({ key: r.key, was: text(a), now: text(b), why: r.why });
  }
  const key = stepsKey(then, now);
  if (key && now.train.scheduler !== "constant") {
    const get = (c: RunConfig) => (key === "train.max_steps" ? c.train?.max_steps : c.train?.epochs);
    out.push(scheduleChange(key, get(then), get(now), now.train.scheduler, rec.checkpoint));
  }
  return out;
}

/** The prepared data as content: the files' bytes (not their paths), the options, tokenizer and template. */
function dataIdentity(split: Plan["data"]["train"]): string {
  const m = readJsonish<{
    inputs?: {
      files?: { sha256: string }[];
      eval_files?: { sha256: string }[];
      options?: unknown;
      tokenizer?: unknown;
    };
    template?: { source?: string };
  }>(path.join(split.dir, "manifest.json"), JSON.parse);
  const inputs = m?.inputs;
  return JSON.stringify({
    samples: split.samples,
    tokens: split.tokens,
    ...(inputs
      ? {
          files: inputs.files?.map((f) => f.sha256),
          eval_files: inputs.eval_files?.map((f) => f.sha256),
          options: inputs.options,
          tokenizer: inputs.tokenizer,
          template: m?.template?.source,
        }
      : { dir: path.basename(split.dir) }),
  });
}

/** Differences between the plan the run was last started with and today's: found once the data is prepared. */
export function planChanges(rec: Recorded, nowConfig: RunConfig, now: Plan): Change[] {
  const then = rec.plan;
  if (!then) return [];
  const out: Change[] = [];
  for (const r of RULES) {
    if (!r.plan) continue;
    const [a, b] = [r.plan(then), r.plan(now)];
    if (!same(a, b))
      out.push({ key: r.key, was: text(a), now: text(b), why: r.why, ...(r.back ? { back: r.back } : {}) });
  }
  const t = then.data.train;
  const n = now.data.train;
  if (t.dir !== n.dir && dataIdentity(t) !== dataIdentity(n)) {
    out.push({
      key: "data.train",
      was: `${t.samples} samples, ${t.tokens} tokens (prepared ${path.basename(t.dir)})`,
      now: `${n.samples} samples, ${n.tokens} tokens (prepared ${path.basename(n.dir)})`,
      why: "the training data changed (its files' contents, or how they are read)",
      back: "train on the data files it started with",
    });
  }
  if (then.train.total_steps !== now.train.total_steps) {
    const key = stepsKey(rec.config, nowConfig);
    const value = (c: RunConfig | null) => (key === "train.max_steps" ? c?.train?.max_steps : c?.train?.epochs);
    const [a, b] = key ? [value(rec.config), value(nowConfig)] : [then.train.total_steps, now.train.total_steps];
    const label = key ?? "train.total_steps";
    const at = rec.checkpoint?.step ?? 0;
    const constant = then.train.scheduler === "constant" && now.train.scheduler === "constant";
    if (!constant || then.train.warmup_steps !== now.train.warmup_steps) {
      out.push(scheduleChange(label, a, b, now.train.scheduler, rec.checkpoint));
    } else if (now.train.total_steps <= at) {
      out.push({
        key: label,
        was: text(a),
        now: text(b),
        why: `that makes ${now.train.total_steps} steps, and the checkpoint already stands at step ${at}`,
      });
    }
  }
  return out;
}

/** One located error per difference (every difference at once), or null when there is none. */
export function resumeRefusal(loaded: LoadedConfig, changes: Change[]): LorakitError | null {
  if (changes.length === 0) return null;
  let lineOf: (p: string[]) => number | undefined = () => undefined;
  try {
    lineOf = parseConfigText(readFileSync(loaded.file, "utf8"), loaded.file).lineOf;
  } catch {
    // the config was read a moment ago; without its lines the errors still name the keys
  }
  const cfg = path.basename(loaded.file);
  const errors = changes.map((c) => {
    const keyPath = c.key.split(".");
    const line = lineOf(keyPath) ?? (keyPath.length > 1 ? lineOf(keyPath.slice(0, 1)) : undefined);
    return new LorakitError(
      "RESUME_MISMATCH",
      `${c.key} was ${c.was} when run '${loaded.name}' started, and is ${c.now} now: ${c.why}`,
      {
        where: { file: loaded.file, ...(line !== undefined ? { line } : {}), key: c.key },
        hint:
          `to continue run '${loaded.name}', ${c.back ?? `put ${c.key} back to ${c.was}`}; to train as the config says now, start over: ` +
          `\`lorakit train ${cfg} --fresh\` (deletes its checkpoints and adapter), or give the run another name (\`name:\` in the config)`,
      },
    );
  });
  return LorakitError.fromList(errors);
}
