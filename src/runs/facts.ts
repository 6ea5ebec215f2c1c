// What a finished run trained with, as facts: read from the stored config and plan, the prepared data's
// manifest and the model folder's identity, each under the aspect it belongs to (model, template, data,
// recipe, evaluation). runs/compare.ts compares two runs' facts.
import { readFileSync } from "node:fs";
import path from "node:path";
import type { Plan, RunConfig } from "../config/schema.js";
import type { Manifest } from "../data/index.js";
import { plural } from "../format.js";
import { type ModelIdentity, modelIdentity } from "../models/identity.js";
import type { RunRow } from "./store.js";

export type Aspect = "model" | "template" | "data" | "recipe" | "evaluation";
export const ASPECTS: readonly Aspect[] = ["model", "template", "data", "recipe", "evaluation"];

export interface Fact {
  /** A config key (`train.lr`) or a name of what was read (`model`, `tokenizer`, `template`, `data.prepared`). */
  key: string;
  aspect: Aspect;
  /** What is compared. */
  value: string;
  /** What a person reads on the page, and in the terminal (shorter). */
  shown: string;
  short: string;
  /** false: read for information only; it follows from other facts (the prepared hash, the step count). */
  decides: boolean;
  /** The value was not set in the config but chosen for the model (family lr, targets, template). */
  auto?: boolean;
}

/** A value as a person writes it: small numbers in exponent form (1e-4), lists comma-separated. */
export function configValueText(v: unknown): string {
  if (v === undefined || v === null) return "—";
  if (typeof v === "number") return v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential() : String(v);
  if (Array.isArray(v)) return v.length === 0 ? "none" : v.map(configValueText).join(", ");
  if (typeof v === "string") return v === "" ? '""' : v;
  return JSON.stringify(v);
}

const short = (hash: string, n = 12) => hash.slice(0, n);
const mb = (bytes: number) =>
  bytes >= 1e9 ? `${(bytes / 1e9).toFixed(1)} GB` : `${(bytes / 1e6).toFixed(bytes >= 1e7 ? 0 : 1)} MB`;

function readManifest(dir: string | undefined): Manifest | null {
  if (!dir) return null;
  try {
    return JSON.parse(readFileSync(path.join(dir, "manifest.json"), "utf8")) as Manifest;
  } catch {
    return null;
  }
}

/** The config keys that change what is trained, by aspect (name, paths and logging cadence change nothing). */
const RECIPE_KEYS = {
  data: ["format", "max_length", "system", "mask_history", "skip_bad_lines", "eval_split"],
  lora: ["r", "alpha", "dropout"],
  train: [
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum",
    "pack_tokens",
    "scheduler",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "precision",
    "gradient_checkpointing",
    "eval_every",
    "patience",
    "device",
    "devices",
    "shard",
    "fast_path",
  ],
  samples: ["count", "max_new_tokens", "prompts"],
} as const;

/** What a run trained with, as facts. `identity` is asked for the model folder (cached by the caller). */
export function runFacts(run: RunRow, identity: (dir: string) => ModelIdentity | null = modelIdentity): Fact[] {
  const config = JSON.parse(run.config_json) as RunConfig;
  const plan = run.plan_json ? (JSON.parse(run.plan_json) as Plan) : null;
  const manifest = readManifest(plan?.data.train.dir);
  const facts: Fact[] = [];
  const add = (f: Omit<Fact, "short"> & { short?: string }) => facts.push({ ...f, short: f.short ?? f.shown });

  // The model: its identity decides; where it lies and its type are what a person recognises it by.
  const modelDir = plan?.model.path ?? config.model;
  const id = plan ? identity(plan.model.path) : null;
  add({
    key: "model",
    aspect: "model",
    value: id ? id.hash : `path:${modelDir}`,
    shown: id
      ? `${modelDir} — sha256 ${short(id.hash)} (config.json + ${plural(id.files, "weight file")}, ${mb(id.bytes)}${id.sampled ? ", read at fixed places" : ""})`
      : `${modelDir} (folder gone: identity unknown, compared by path)`,
    short: `${path.basename(modelDir)}${id ? ` (${short(id.hash, 8)})` : ""}`,
    decides: true,
  });
  if (plan)
    add({
      key: "model.type",
      aspect: "model",
      value: `${plan.model.model_type}/${plan.model.family}`,
      shown: `${plan.model.model_type} (family ${plan.model.family})`,
      decides: false,
    });
  if (manifest) {
    const t = manifest.inputs.tokenizer;
    add({
      key: "tokenizer",
      aspect: "model",
      value: t.hash,
      shown: `${t.kind}, vocabulary ${t.vocab_size}, sha256 ${short(t.hash)}`,
      short: `${t.kind} (${short(t.hash, 8)})`,
      decides: true,
    });
    const tpl = manifest.inputs.template;
    add({
      key: "template",
      aspect: "template",
      value: `${tpl.name}:${tpl.sha256}`,
      shown: `${tpl.name} (sha256 ${short(tpl.sha256)})${config.data.template === "auto" ? ", chosen for the model (data.template: auto)" : ""}`,
      short: `${tpl.name}${config.data.template === "auto" ? " (auto)" : ""}`,
      decides: true,
      auto: config.data.template === "auto",
    });
    const files = (list: Manifest["inputs"]["files"]) => ({
      value: list.map((f) => f.sha256).join(","),
      shown:
        list.length === 0
          ? "none"
          : list.map((f) => `${f.path} (sha256 ${short(f.sha256)}, ${f.bytes} bytes)`).join("; "),
      short:
        list.length === 0 ? "none" : list.map((f) => `${path.basename(f.path)} (${short(f.sha256, 8)})`).join(", "),
    });
    add({ key: "data.train", aspect: "data", ...files(manifest.inputs.files), decides: true });
    add({ key: "data.eval", aspect: "data", ...files(manifest.inputs.eval_files), decides: true });
  } else {
    add({
      key: "template",
      aspect: "template",
      value: `config:${config.data.template}`,
      shown: `${config.data.template} (the prepared data is gone: what it resolved to is unknown)`,
      short: config.data.template,
      decides: true,
    });
    add({
      key: "data.train",
      aspect: "data",
      value: `config:${JSON.stringify(config.data.train)}`,
      shown: `${configValueText(config.data.train)} (the prepared data is gone: contents unknown)`,
      decides: true,
    });
  }
  for (const [section, keys] of Object.entries(RECIPE_KEYS)) {
    const values = (config as unknown as Record<string, Record<string, unknown>>)[section] ?? {};
    const aspect: Aspect = section === "data" ? "data" : section === "samples" ? "evaluation" : "recipe";
    for (const k of keys) {
      const shown = configValueText(values[k]);
      add({ key: `${section}.${k}`, aspect, value: JSON.stringify(values[k] ?? null), shown, decides: true });
    }
  }
  // Chosen for the model when the config leaves them out: the learning rate and the LoRA targets.
  if (plan) {
    const lrAuto = config.train.lr === undefined;
    add({
      key: "train.lr",
      aspect: "recipe",
      value: String(plan.train.lr),
      shown: `${configValueText(plan.train.lr)}${lrAuto ? " (the family's default)" : ""}`,
      decides: true,
      auto: lrAuto,
    });
    const targetsAuto = config.lora.targets === undefined;
    add({
      key: "lora.targets",
      aspect: "recipe",
      value: JSON.stringify(plan.lora.targets),
      shown: `${configValueText(plan.lora.targets)}${targetsAuto ? " (the family's default)" : ""}`,
      decides: true,
      auto: targetsAuto,
    });
    add({
      key: "data.prepared",
      aspect: "data",
      value: path.basename(plan.data.train.dir),
      shown: `${path.basename(plan.data.train.dir)}: ${plan.data.train.samples} train / ${plan.data.eval?.samples ?? 0} eval samples, ${plan.data.train.tokens} train tokens`,
      short: path.basename(plan.data.train.dir),
      decides: false,
    });
    add({
      key: "train.total_steps",
      aspect: "recipe",
      value: String(plan.train.total_steps),
      shown: `${plan.train.total_steps} (warmup ${plan.train.warmup_steps})`,
      decides: false,
    });
  } else {
    for (const k of ["lr", "targets"] as const) {
      const section = k === "lr" ? "train" : "lora";
      const v = k === "lr" ? config.train.lr : config.lora.targets;
      add({
        key: `${section}.${k}`,
        aspect: "recipe",
        value: JSON.stringify(v ?? null),
        shown: v === undefined ? "the family's default" : configValueText(v),
        decides: true,
        auto: v === undefined,
      });
    }
  }
  return facts;
}
