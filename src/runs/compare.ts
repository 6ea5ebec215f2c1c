// Two finished runs side by side, and what their difference can be blamed on. Each run is described by
// facts read from what it actually trained with (the stored config and plan, the prepared data's manifest,
// the model folder's identity); the facts that differ name the aspects that changed — model, template,
// data, recipe, evaluation — and the verdict follows from those: one aspect changed → the difference is
// its; several → no single cause; none → noise. (The seed's advice: the same recipe on a second model
// tells a model problem from a pipeline problem.)
import type { Plan, RunConfig } from "../config/schema.js";
import { type Finding, fromRow } from "../findings/index.js";
import { pct, plural } from "../format.js";
import type { ModelIdentity } from "../models/identity.js";
import { exactMatchShare } from "./exact-match.js";
import { ASPECTS, type Aspect, type Fact, runFacts } from "./facts.js";
import type { MetricRow, RunRow, RunStore, SampleRow } from "./store.js";

export interface RunSummary {
  label: string;
  name: string;
  model: string;
  status: string;
  metrics: MetricRow[];
  findings: Finding[];
  samples: SampleRow[];
  finalLoss: number | null;
  bestEval: { step: number; loss: number } | null;
  exactMatch: { before: number | null; after: number | null };
  /** How this comparison got the run: read back from the store, or trained (or finished) by this command. */
  origin: { kind: "reused"; endedAt: string | null } | { kind: "trained" } | { kind: "resumed" };
  facts: Fact[];
}

/** What a person reads back from the store about a run. */
export function summarize(
  label: string,
  run: RunRow,
  store: RunStore,
  origin: RunSummary["origin"],
  identity?: (dir: string) => ModelIdentity | null,
): RunSummary {
  const metrics = store.metrics(run.id);
  const train = metrics.filter((m) => m.kind === "train" && m.loss !== null);
  const evals = metrics.filter((m) => m.kind === "eval" && m.loss !== null);
  const best = evals.reduce<MetricRow | null>(
    (b, m) => (b === null || (m.loss as number) < (b.loss as number) ? m : b),
    null,
  );
  const samples = store.samples(run.id);
  const plan = run.plan_json ? (JSON.parse(run.plan_json) as Plan) : null;
  return {
    label,
    name: run.name,
    model: plan?.model.path ?? (JSON.parse(run.config_json) as RunConfig).model,
    status: run.status,
    metrics,
    findings: store.findings(run.id).map(fromRow),
    samples,
    finalLoss: train.at(-1)?.loss ?? null,
    bestEval: best ? { step: best.step, loss: best.loss as number } : null,
    exactMatch: { before: exactMatchShare(samples, "before"), after: exactMatchShare(samples, "after") },
    origin,
    facts: runFacts(run, identity),
  };
}

export interface Difference {
  key: string;
  aspect: Aspect;
  a: Fact | undefined;
  b: Fact | undefined;
  /** Why it differs: its own aspect changed, or it follows from another change (the model, the data …). */
  cause: Aspect | "follows";
}

export interface FactDiff {
  differences: Difference[];
  /** Facts equal in both runs (A's). */
  same: Fact[];
  /** Aspects that changed, in ASPECTS order. */
  changed: Aspect[];
}

export function diffFacts(a: readonly Fact[], b: readonly Fact[]): FactDiff {
  const keys = [...new Set([...a.map((f) => f.key), ...b.map((f) => f.key)])];
  const fa = new Map(a.map((f) => [f.key, f]));
  const fb = new Map(b.map((f) => [f.key, f]));
  const modelChanged = ["model", "tokenizer"].some((k) => fa.get(k)?.value !== fb.get(k)?.value);
  const differences: Difference[] = [];
  const same: Fact[] = [];
  for (const key of keys) {
    const x = fa.get(key);
    const y = fb.get(key);
    if (x && y && x.value === y.value) {
      same.push(x);
      continue;
    }
    const f = (x ?? y) as Fact;
    // A value chosen for the model in both runs (auto) differs because the model does.
    const follows = !f.decides || (modelChanged && x?.auto === true && y?.auto === true);
    differences.push({ key, aspect: f.aspect, a: x, b: y, cause: follows ? "follows" : f.aspect });
  }
  const changed = ASPECTS.filter((asp) => differences.some((d) => d.cause === asp));
  return { differences, same, changed };
}

/** What a person calls a setting, for "the difference is the learning rate's". */
const NAMES: Record<string, string> = {
  "train.lr": "learning rate",
  "train.epochs": "number of epochs",
  "train.max_steps": "step limit",
  "train.batch_size": "batch size",
  "train.grad_accum": "gradient accumulation",
  "train.pack_tokens": "packing",
  "train.scheduler": "learning-rate schedule",
  "train.warmup_ratio": "warmup",
  "train.weight_decay": "weight decay",
  "train.max_grad_norm": "gradient clipping",
  "train.seed": "seed",
  "train.precision": "precision",
  "train.gradient_checkpointing": "gradient checkpointing",
  "train.eval_every": "eval interval",
  "train.patience": "early stopping",
  "train.devices": "device count",
  "train.fast_path": "fast path",
  "lora.r": "LoRA rank",
  "lora.alpha": "LoRA alpha",
  "lora.dropout": "LoRA dropout",
  "lora.targets": "LoRA targets",
  "data.max_length": "length cut",
  "data.system": "system prompt",
  "data.mask_history": "history masking",
  "data.eval_split": "held-out split",
};

const listing = (items: string[]) =>
  items.length <= 1 ? (items[0] ?? "") : `${items.slice(0, -1).join(", ")} and ${items.at(-1)}`;

const lossOf = (r: RunSummary) => r.bestEval?.loss ?? r.finalLoss ?? Number.POSITIVE_INFINITY;

/** How the two runs fared, in words, and whether they fared differently. */
function outcome(a: RunSummary, b: RunSummary): { differ: boolean | null; text: string } {
  const byEval = a.bestEval !== null && b.bestEval !== null;
  const va = byEval ? (a.bestEval?.loss ?? null) : a.finalLoss;
  const vb = byEval ? (b.bestEval?.loss ?? null) : b.finalLoss;
  if (va === null || vb === null) return { differ: null, text: "" };
  const measure = byEval ? "best eval loss" : "final train loss";
  const rel = Math.abs(va - vb) / Math.max(Math.abs(va), Math.abs(vb), 1e-12);
  const ea = a.exactMatch.after;
  const eb = b.exactMatch.after;
  const exact = ea !== null && eb !== null;
  const differ = rel > 0.1 || (exact && Math.abs(ea - eb) >= 0.25);
  const text = `${measure} ${va.toFixed(4)} vs ${vb.toFixed(4)}${exact ? `, exact match ${pct(ea, 0)} vs ${pct(eb, 0)}` : ""}`;
  return { differ, text };
}

/** The verdict: what changed between the runs, and what the difference in their results is therefore due to. */
export function verdict(a: RunSummary, b: RunSummary, diff: FactDiff = diffFacts(a.facts, b.facts)): string[] {
  const lines: string[] = [];
  const o = outcome(a, b);
  const vs = (d: Difference) => `${d.a?.short ?? "—"} vs ${d.b?.short ?? "—"}`;
  const changes = (aspect: Aspect) =>
    diff.differences.filter((d) => d.cause === aspect).map((d) => `${d.key} (${vs(d)})`);
  const changed = diff.changed.filter((x) => x !== "evaluation");
  const evalOnly = diff.changed.includes("evaluation") ? changes("evaluation") : [];
  const sameAs = (except: Aspect[]) => {
    const rest = (["model", "template", "data", "recipe"] as Aspect[]).filter((x) => !except.includes(x));
    return `same ${listing(rest)}`;
  };
  const result = o.text ? ` (${o.text})` : "";
  if (changed.length === 0) {
    const base = "nothing that shapes training differs: same model, template, data and recipe, seed included";
    lines.push(
      o.differ === null
        ? base
        : o.differ
          ? `${base}; yet the results differ${result}: nondeterminism (GPU kernels, thread counts) or a changed environment`
          : `${base}, and the results agree${result}`,
    );
  } else if (changed.length === 1) {
    const aspect = changed[0] as Aspect;
    const items = changes(aspect);
    const own = diff.differences.filter((d) => d.cause === aspect);
    const keys = own.map((d) => d.key);
    if (aspect === "model") {
      const m = diff.differences.find((d) => d.key === "model");
      const ownTemplates = diff.differences.some((d) => d.key === "template");
      const base = `different models (${a.label} ${m?.a?.short ?? a.model}, ${b.label} ${m?.b?.short ?? b.model}), ${ownTemplates ? "same recipe and data (each with its own template)" : "same template, recipe and data"}`;
      const weaker = o.differ ? (lossOf(a) > lossOf(b) ? a.label : b.label) : "";
      lines.push(
        o.differ === null
          ? `${base}: a difference between them is the models', not the pipeline's`
          : o.differ
            ? `${base}: a model problem, not a pipeline problem — ${weaker} fares worse${result}`
            : `${base}, and they behave alike${result}: a problem both show is in the pipeline (data, template, recipe), not the model`,
      );
      if (diff.differences.some((d) => d.key === "tokenizer" && d.cause === "model"))
        lines.push("the tokenizers differ, so per-token losses compare only roughly");
    } else {
      const what =
        aspect === "recipe"
          ? keys.length === 1
            ? `the ${NAMES[keys[0] as string] ?? keys[0]}'s${keys[0] === "train.seed" ? ": run-to-run noise" : ""}`
            : "these hyperparameters'"
          : aspect === "template"
            ? "the template's"
            : "the data's";
      const only =
        items.length === 1 ? `only ${keys[0]} differs (${vs(own[0] as Difference)})` : `only ${listing(items)} differ`;
      const base = `${sameAs([aspect])}; ${only}`;
      lines.push(
        o.differ === null
          ? `${base}: a difference between the runs is ${what}`
          : o.differ
            ? `${base}: the difference is ${what}${result}`
            : `${base}: ${items.length === 1 ? "it makes" : "they make"} little difference${result}`,
      );
    }
  } else {
    const items = changed.flatMap((x) => changes(x));
    lines.push(
      `the runs differ in ${listing(changed)} (${items.join("; ")}): more than one thing changed, so no one of them can be blamed${o.text ? ` for the difference (${o.text})` : ""}; change one at a time (the same recipe on a second model, or one setting on the same model)`,
    );
  }
  if (evalOnly.length > 0)
    lines.push(`the sampling differs too (${evalOnly.join("; ")}): exact match is scored on different prompts`);
  const dataFindings = (r: RunSummary) => r.findings.filter((f) => f.stage === "data").map((f) => f.code);
  if (dataFindings(a).length > 0 && dataFindings(b).length > 0)
    lines.push(
      `both runs have data findings (${[...new Set([...dataFindings(a), ...dataFindings(b)])].join(", ")}): look at the pipeline (data, template) first`,
    );
  return lines;
}

/** "none", "1 warning", "2 errors, 1 warning": a run's findings counted by severity. */
export function findingCounts(findings: readonly Finding[]): string {
  const n = (s: string) => findings.filter((f) => f.severity === s).length;
  const parts = [
    n("error") ? plural(n("error"), "error") : "",
    n("warning") ? plural(n("warning"), "warning") : "",
    n("info") ? plural(n("info"), "note") : "",
  ].filter(Boolean);
  return parts.length === 0 ? "none" : parts.join(", ");
}

/** How the comparison got the run, in words. */
export function originText(r: RunSummary): string {
  if (r.origin.kind === "trained") return "trained now";
  if (r.origin.kind === "resumed") return "resumed from its checkpoint and finished now";
  const when = r.origin.endedAt ? `, finished ${r.origin.endedAt.replace("T", " ").replace(/\.\d+Z$/, " UTC")}` : "";
  return `reused from the store${when}; not retrained`;
}

/** Keys whose values differ between two configs (deep), for "the config has changed since the run was trained". */
export function changedKeys(before: unknown, after: unknown, prefix = ""): string[] {
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
  if (isObj(before) && isObj(after)) {
    const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])];
    return keys.flatMap((k) => changedKeys(before[k], after[k], prefix ? `${prefix}.${k}` : k));
  }
  return JSON.stringify(before) === JSON.stringify(after) ? [] : [prefix];
}
