// The shape of src/: stages in one order, each importing only itself and the stages below it, no import
// circle anywhere, and the stages with a front door (index.ts) entered only through it. The module graph is
// TypeScript's own reading of each file's imports (type-only, re-exports and dynamic import() included).
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { ROOT } from "../src/engine/python.js";

/** The stages of src/, lowest first: a module may import its own stage and the stages before it. */
const LAYERS = [
  "errors", // src/errors.ts: LorakitError, located
  "format", // src/format.ts: numbers as text
  "rng", // src/rng.ts: a seeded generator
  "files", // writing for later reading: atomically, with SHA256SUMS, DISK_FULL when the disk is full
  "config", // the zod schema (run config, plan, events) and run.yaml loading
  "findings", // the code catalogue and the finding model
  "models", // a checkpoint folder read before loading: family, layers, shape, identity
  "data", // samples → prepared tokens, rows
  "plan", // every value the engine needs, resolved once
  "runs", // the run store and what a run trained with
  "engine", // the Python environment, the engine's processes, protocol/ export
  "doctor", // checks by stage
  "report", // the pages: report.html, compare.html
  "train", // the road of `lorakit train`
  "demo", // `lorakit demo`'s model and task
  "cli", // the commands
];
/** Stages whose modules outside them import through index.ts only. */
const FRONT_DOORS = ["data", "doctor", "findings", "plan"];

type Graph = Map<string, string[]>;

const SRC = path.join(ROOT, "src");

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = path.join(dir, name);
    return statSync(p).isDirectory() ? sourceFiles(p) : p.endsWith(".ts") ? [path.relative(SRC, p)] : [];
  });
}

/** Each module of src/ (relative path) → the modules of src/ it imports. */
function moduleGraph(): Graph {
  const graph: Graph = new Map();
  for (const file of sourceFiles(SRC)) {
    const info = ts.preProcessFile(readFileSync(path.join(SRC, file), "utf8"), true, true);
    const deps = info.importedFiles
      .map((i) => i.fileName)
      .filter((spec) => spec.startsWith("."))
      .map((spec) => path.normalize(path.join(path.dirname(file), spec.replace(/\.js$/, ".ts"))));
    graph.set(file, [...new Set(deps)]);
  }
  return graph;
}

/** A module's stage: its folder under src/, or its name for a file at the top (errors.ts → errors). */
const stageOf = (file: string) =>
  file.includes(path.sep) ? (file.split(path.sep)[0] as string) : file.replace(/\.ts$/, "");

/** Every import circle, each as its modules in order (Tarjan's strongly connected components). */
function circles(graph: Graph): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  let next = 0;
  const visit = (v: string) => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v) as number, low.get(w) as number));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v) as number, index.get(w) as number));
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop() as string;
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || (graph.get(v) ?? []).includes(v)) out.push(scc.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return out;
}

/** Imports that break the layering, as `from → to (why)`. */
function layerViolations(graph: Graph, layers: readonly string[], frontDoors: readonly string[]): string[] {
  const out: string[] = [];
  for (const [from, deps] of graph) {
    const a = stageOf(from);
    if (!layers.includes(a)) out.push(`${from}: stage '${a}' is not in LAYERS`);
    for (const to of deps) {
      const b = stageOf(to);
      if (a === b) continue;
      if (layers.indexOf(b) > layers.indexOf(a)) out.push(`${from} → ${to} (${a} imports the higher stage ${b})`);
      if (frontDoors.includes(b) && to !== path.join(b, "index.ts"))
        out.push(`${from} → ${to} (${b} is entered through ${b}/index.ts)`);
    }
  }
  return out;
}

describe("the module graph of src/", () => {
  const graph = moduleGraph();

  it("is read from every source file", () => {
    expect(graph.size).toBeGreaterThan(70);
    expect(graph.get(path.join("cli", "main.ts"))).toContain(path.join("cli", "command.ts"));
    for (const deps of graph.values()) for (const d of deps) expect(graph.has(d), d).toBe(true);
  });

  it("has no import circle", () => {
    expect(circles(graph)).toEqual([]);
  });

  it("imports only its own stage and the stages below it, through their front doors", () => {
    expect(layerViolations(graph, LAYERS, FRONT_DOORS)).toEqual([]);
  });

  it("the checks catch a circle, an upward import and a side door", () => {
    const planted: Graph = new Map([
      ["runs/store.ts", ["doctor/index.ts", "findings/finding.ts"]],
      ["doctor/index.ts", ["doctor/env.ts"]],
      ["doctor/env.ts", ["doctor/index.ts"]],
      ["findings/finding.ts", []],
      ["shiny/new.ts", []],
    ]);
    expect(circles(planted)).toEqual([["doctor/env.ts", "doctor/index.ts"]]);
    expect(layerViolations(planted, LAYERS, FRONT_DOORS)).toEqual([
      "runs/store.ts → doctor/index.ts (runs imports the higher stage doctor)",
      "runs/store.ts → findings/finding.ts (findings is entered through findings/index.ts)",
      "shiny/new.ts: stage 'shiny' is not in LAYERS",
    ]);
  });
});
