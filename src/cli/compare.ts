// `lorakit compare a.yaml b.yaml`: two runs side by side — the same recipe on two models (the seed's advice:
// a second model tells a model problem from a pipeline problem), or one setting changed on one model. Trains
// each run that has not finished yet and reuses (says so) each that has; then shows what differs between the
// two (model identity, template, data, hyperparameters), the results and findings of each, and a verdict that
// follows from what differs — in the terminal and on one HTML page.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { type LoadedConfig, loadConfig } from "../config/load.js";
import type { Plan } from "../config/schema.js";
import { writeFileAtomic } from "../files/atomic.js";
import type { Finding } from "../findings/index.js";
import { pct } from "../format.js";
import { type ModelIdentity, modelIdentity } from "../models/identity.js";
import { renderCompare } from "../report/compare.js";
import {
  changedKeys,
  diffFacts,
  findingCounts,
  originText,
  type RunSummary,
  summarize,
  verdict,
} from "../runs/compare.js";
import { configValueText } from "../runs/facts.js";
import { type RunRow, RunStore } from "../runs/store.js";
import { runRoad } from "../train/road.js";
import { defineCommand } from "./command.js";
import { renderFinding } from "./findings-view.js";
import { withInterrupt } from "./interrupt.js";
import { colors, err, out, userPath } from "./io.js";
import { eventPrinter, stoppedLine } from "./progress.js";

const fmt = (x: number | null, digits = 4) => (x === null ? "—" : x.toFixed(digits));
const sha256 = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");

/** What has changed in the config file (and its data files) since a stored run was trained with it. */
function staleness(loaded: LoadedConfig, run: RunRow): string[] {
  const then = JSON.parse(run.config_json) as unknown;
  const now = JSON.parse(JSON.stringify(loaded.config)) as unknown;
  const get = (o: unknown, key: string) =>
    key
      .split(".")
      .reduce<unknown>((v, k) => (v && typeof v === "object" ? (v as Record<string, unknown>)[k] : undefined), o);
  const changes = changedKeys(then, now).map(
    (k) => `${k} ${configValueText(get(then, k))} then, ${configValueText(get(now, k))} now`,
  );
  if (run.plan_json) {
    try {
      const dir = (JSON.parse(run.plan_json) as Plan).data.train.dir;
      const manifest = JSON.parse(readFileSync(path.join(dir, "manifest.json"), "utf8")) as {
        inputs: { files: { path: string; sha256: string }[] };
      };
      const trained = new Map(manifest.inputs.files.map((f) => [f.path, f.sha256]));
      for (const f of loaded.trainFiles) {
        const before = trained.get(path.resolve(f));
        if (before !== undefined && before !== sha256(f)) changes.push(`${path.basename(f)}'s contents`);
      }
    } catch {
      // The prepared data or a file is gone: nothing to hold the config against.
    }
  }
  return changes;
}

export const command = defineCommand({
  name: "compare",
  summary: "two runs side by side (the same recipe on two models, or one setting changed): what differs, and why",
  args: "<a.yaml> <b.yaml>",
  positionals: [2, 2],
  description:
    "Trains each of the two runs that has not completed yet (a stopped one continues from its checkpoint, a " +
    "failed one starts over) and reuses each that has (and says so), then shows what differs between them " +
    "(model identity, template, data, hyperparameters), final and best eval loss, held-out exact match and every " +
    "finding, and a verdict that follows from what differs: a different model with the same recipe and data " +
    "tells a model problem from a pipeline problem. Writes one HTML page with both loss curves and the samples " +
    "beside the reference answers.",
  options: {
    "no-train": {
      type: "boolean",
      description: "only read runs that have completed; stop with an error if one has not",
    },
    out: {
      type: "string",
      value: "FILE",
      description: "where the HTML page goes (default compare-<a>-<b>.html in the current folder)",
    },
  },
  examples: [
    ["lorakit compare chatglm3.yaml deepseek.yaml", "the same recipe on two models: train both (if needed), compare"],
    ["lorakit compare a.yaml b.yaml --no-train --out cmp.html", "compare two finished runs, page in cmp.html"],
  ],
  async run({ values, positionals }, io) {
    const c = colors(io);
    const identities = new Map<string, ModelIdentity | null>();
    const identity = (dir: string) => {
      if (!identities.has(dir)) identities.set(dir, modelIdentity(dir));
      return identities.get(dir) ?? null;
    };
    const summaries: RunSummary[] = [];
    for (const [i, configPath] of positionals.entries()) {
      const label = i === 0 ? "A" : "B";
      const loaded = await loadConfig(configPath as string, io.cwd, io.env);
      let store = RunStore.forOutputDir(loaded.outputDir);
      let run = store.getRun(loaded.name);
      let origin: RunSummary["origin"];
      if (run?.status === "completed") {
        origin = { kind: "reused", endedAt: run.ended_at };
        out(
          io,
          `${label}: run '${loaded.name}' (${configPath}) finished earlier: reused from the store, not retrained`,
        );
        const stale = staleness(loaded, run);
        if (stale.length > 0) {
          out(
            io,
            c.yellow(
              `${label}: ${configPath} has changed since '${loaded.name}' was trained (${stale.join("; ")}); this compares what was trained. To train the new config: lorakit train ${configPath} --fresh, or give it another name`,
            ),
          );
        }
      } else {
        if (values["no-train"]) {
          err(io, `error: run '${loaded.name}' (${configPath}) has not finished; drop --no-train to train it`);
          store.close();
          return 1;
        }
        store.close();
        const resume = run?.status === "stopped";
        origin = resume ? { kind: "resumed" } : { kind: "trained" };
        out(io, `${label}: ${resume ? "resuming" : "training"} ${loaded.name} (${configPath})`);
        const { onEvent, progress, trace } = eventPrinter(io, loaded.config.train.log_every);
        const result = await withInterrupt(
          io,
          (signal) =>
            runRoad(loaded, {
              signal,
              env: io.env,
              log: (l) => progress.line(l),
              onEvent,
              // A run stopped earlier continues from its checkpoint; a failed one starts over.
              resume,
              fresh: run?.status === "failed",
            }),
          progress,
        ).finally(() => progress.end());
        if (result.status === "stopped") {
          out(io, stoppedLine(trace, `lorakit compare ${positionals.join(" ")}`));
          return 130;
        }
        if (result.error) throw result.error;
        store = RunStore.forOutputDir(loaded.outputDir);
        run = store.getRun(loaded.name) as RunRow;
      }
      summaries.push(summarize(label, run, store, origin, identity));
      store.close();
    }
    const [a, b] = summaries as [RunSummary, RunSummary];
    const diff = diffFacts(a.facts, b.facts);
    const lines = verdict(a, b, diff);

    const width = 22;
    const col = 34;
    const line = (k: string, f: (r: RunSummary) => string) =>
      out(io, `${k.padEnd(width)} ${f(a).padEnd(col)} ${f(b)}`.trimEnd());
    out(io, "");
    line("", (r) => r.label);
    line("run", (r) => r.name);
    line("model", (r) => r.facts.find((f) => f.key === "model")?.short ?? path.basename(r.model));
    line("origin", (r) => (r.origin.kind === "reused" ? "reused from the store" : originText(r)));
    line("final train loss", (r) => fmt(r.finalLoss));
    line("best eval loss", (r) => (r.bestEval ? `${fmt(r.bestEval.loss)} @${r.bestEval.step}` : "—"));
    line("exact match", (r) => `${pct(r.exactMatch.before)} → ${pct(r.exactMatch.after)}`);
    line("findings", (r) => findingCounts(r.findings));

    const changed = diff.differences.filter((d) => d.cause !== "follows");
    const follows = diff.differences.filter((d) => d.cause === "follows");
    out(io, `\n${c.bold("what differs")}${diff.differences.length === 0 ? ": nothing the runs trained with" : ""}`);
    for (const d of [...changed, ...follows]) {
      const key = d.cause === "follows" ? `${d.key} (follows)` : d.key;
      out(io, `  ${key.padEnd(width - 2)} ${(d.a?.short ?? "—").padEnd(col)} ${d.b?.short ?? "—"}`.trimEnd());
    }
    if (follows.length > 0)
      out(io, c.dim("  (follows): differs only because of another change, e.g. a value chosen per model"));
    const same = (key: string) => diff.same.find((f) => f.key === key);
    const alike = ["model", "tokenizer", "template", "data.train", "data.prepared", "train.lr"]
      .map((k) => same(k))
      .filter((f) => f !== undefined)
      .map((f) => `${f.key} ${f.short}`);
    if (alike.length > 0)
      out(io, `${c.bold("the same")}: ${alike.join("; ")} (and ${diff.same.length - alike.length} more)`);

    // Each finding by name; one both runs have (same code and title) once, marked "both".
    out(io, `\n${c.bold("findings")}${a.findings.length + b.findings.length === 0 ? ": none" : ""}`);
    const head = (f: Finding) => renderFinding(f, io).split("\n")[0]?.trim() ?? f.code;
    const key = (f: Finding) => `${f.code}\n${f.title}`;
    const inB = new Set(b.findings.map(key));
    const inA = new Set(a.findings.map(key));
    for (const f of a.findings) out(io, `  ${(inB.has(key(f)) ? "both" : a.label).padEnd(4)}  ${head(f)}`);
    for (const f of b.findings) if (!inA.has(key(f))) out(io, `  ${b.label.padEnd(4)}  ${head(f)}`);

    out(io, "");
    for (const [i, l] of lines.entries()) out(io, `${i === 0 ? c.bold("verdict") : "       "}  ${l}`);
    const file = values.out ? userPath(io, values.out) : path.resolve(io.cwd, `compare-${a.name}-${b.name}.html`);
    writeFileAtomic(file, renderCompare({ a, b, diff, verdict: lines }), { what: "the comparison" });
    out(io, `\nreport   ${file}`);
    return 0;
  },
});
