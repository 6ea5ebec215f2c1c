// A run directory as lorakit and its engine leave it: `runs/<name>/` holds config.yaml and plan.json (what the
// run was last started with), checkpoints/step-N/ (complete: the engine renames a folder to step-N only once
// its state.json is written, last), adapter/, report.html, engine.log and the lock while a process trains it.
// Files lorakit writes here are written whole (src/files/atomic.ts): a temporary name beside them, then renamed.
import { existsSync, readdirSync, rmSync } from "node:fs";
import path from "node:path";

export interface Checkpoint {
  step: number;
  dir: string;
}

/** The complete checkpoints of a run, oldest first (`.tmp-*` folders, half-written, are not among them). */
export function checkpoints(runDir: string): Checkpoint[] {
  const root = path.join(runDir, "checkpoints");
  let names: string[];
  try {
    names = readdirSync(root);
  } catch {
    return [];
  }
  return names
    .filter((n) => /^step-\d+$/.test(n) && existsSync(path.join(root, n, "state.json")))
    .map((n) => ({ step: Number(n.slice(5)), dir: path.join(root, n) }))
    .sort((a, b) => a.step - b.step);
}

/** A temporary file of an atomic write (src/files/atomic.ts tempBeside: `.<name>.tmp-<pid>-<hex>`). */
const TORN = /^\..+\.tmp-\d+-[0-9a-f]+$/;

/** Removes what a killed atomic write left in `dir` (call it holding the run's lock: no one else writes here). */
export function removeTornWrites(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const torn = names.filter((n) => TORN.test(n));
  for (const n of torn) rmSync(path.join(dir, n), { force: true });
  return torn;
}
