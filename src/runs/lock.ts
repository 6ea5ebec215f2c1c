// One lorakit at a time per run: `runs/<name>/run.lock` names the process that trains the run (its PID, host,
// start and command) and, while one runs, the engine it started. A second `lorakit train` of the same run is
// refused while either is alive; a lock whose processes are gone (kill -9, a crash) is taken over, and said.
//
// The lock appears whole or not at all: it is written to a private file and hard-linked to its name, which
// fails when the name exists. Taking over a stale lock is serialised by a second such file
// (`run.lock.recover`), so two processes that find the same stale lock cannot both take it.
import { linkSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { LorakitError } from "../errors.js";
import { childProcess, liveness, type ProcessId, thisProcess } from "./owner.js";

export const LOCK_FILE = "run.lock";

export interface LockHolder extends ProcessId {
  /** The command line, for the message that names the holder. */
  command: string;
  /** The engine process it started, while one runs. */
  engine: ProcessId | null;
}

/** Whether anyone still works on the run under `holder`'s lock. */
export function holderState(holder: LockHolder): "alive" | "engine" | "unknown" | "gone" {
  const lorakit = liveness(holder);
  if (lorakit !== "gone") return lorakit;
  return holder.engine && liveness(holder.engine) === "alive" ? "engine" : "gone";
}

function readHolder(file: string): { text: string; holder: LockHolder | null } | undefined {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
  try {
    const h = JSON.parse(text) as LockHolder;
    return { text, holder: typeof h?.pid === "number" && typeof h.host === "string" ? h : null };
  } catch {
    return { text, holder: null }; // not lorakit's lock (never written partly: see the module's first lines)
  }
}

/** Creates `file` holding `text`, all at once; false when it exists. */
function createWhole(file: string, text: string): boolean {
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}`;
  writeFileSync(tmp, text);
  try {
    linkSync(tmp, file);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw e;
  } finally {
    rmSync(tmp, { force: true });
  }
}

function lockedError(name: string, file: string, h: LockHolder, state: "alive" | "engine" | "unknown"): LorakitError {
  const who = `lorakit pid ${h.pid} on ${h.host}, started ${h.started_at}${h.command ? ` (\`${h.command}\`)` : ""}`;
  if (state === "engine") {
    const e = h.engine as ProcessId;
    return new LorakitError(
      "RUN_LOCKED",
      `run '${name}' is still being written by its engine (pid ${e.pid}); the lorakit that started it (pid ${h.pid}) is gone`,
      {
        where: { file },
        hint: `the engine ends by itself at its next step (its output has nowhere to go), or end it now with \`kill ${e.pid}\`; then run the command again`,
      },
    );
  }
  if (state === "unknown") {
    return new LorakitError("RUN_LOCKED", `run '${name}' is locked by ${who}: another machine, lorakit cannot look`, {
      where: { file },
      hint: `wait for it to end; if it has ended (that machine went down), delete ${file} and run the command again`,
    });
  }
  return new LorakitError("RUN_LOCKED", `run '${name}' is being trained by another lorakit: ${who}`, {
    where: { file },
    hint: `wait for it to end, stop it (Ctrl-C in its terminal, or \`kill -INT ${h.pid}\`), or give this run another name (\`name:\` in the config)`,
  });
}

export class RunLock {
  private constructor(
    readonly file: string,
    private holder: LockHolder,
  ) {}

  /**
   * Takes the run's lock, or throws RUN_LOCKED naming who holds it. A stale lock (its processes are gone) is
   * taken over, with a line through `log` saying whose it was.
   */
  static acquire(runDir: string, name: string, opts: { command: string; log: (line: string) => void }): RunLock {
    const file = path.join(runDir, LOCK_FILE);
    const mine: LockHolder = { ...thisProcess(), command: opts.command, engine: null };
    const text = `${JSON.stringify(mine, null, 1)}\n`;
    for (let attempt = 0; attempt < 10; attempt++) {
      if (createWhole(file, text)) return new RunLock(file, mine);
      const found = readHolder(file);
      if (!found) continue; // released meanwhile
      const h = found.holder;
      if (h) {
        const state = holderState(h);
        if (state !== "gone") throw lockedError(name, file, h, state);
      }
      if (RunLock.takeOver(file, found.text, name)) {
        opts.log(
          h
            ? `lock        run '${name}': took over the lock of lorakit pid ${h.pid} (started ${h.started_at}), which ended without releasing it (killed or crashed)`
            : `lock        run '${name}': replaced ${file}, which is not a lock lorakit wrote`,
        );
      }
    }
    throw new LorakitError("RUN_LOCKED", `run '${name}': its lock ${file} keeps changing hands`, {
      where: { file },
      hint: "several lorakit processes are starting this run at once: let one of them run",
    });
  }

  /** Removes the stale lock whose contents are `stale`, unless another process got there first. */
  private static takeOver(file: string, stale: string, name: string): boolean {
    const guard = `${file}.recover`;
    if (!createWhole(guard, `${JSON.stringify(thisProcess())}\n`)) {
      const other = readHolder(guard);
      if (other?.holder && liveness(other.holder) !== "gone") {
        throw new LorakitError(
          "RUN_LOCKED",
          `run '${name}': another lorakit (pid ${other.holder.pid}) is taking over its stale lock right now`,
          {
            where: { file },
            hint: "let that one run; or wait for it to end and run the command again",
          },
        );
      }
      rmSync(guard, { force: true }); // left by a process that died within the take-over
      return false;
    }
    try {
      const now = readHolder(file);
      if (now?.text !== stale) return false;
      unlinkSync(file);
      return true;
    } finally {
      rmSync(guard, { force: true });
    }
  }

  /** Names the engine process this lorakit started (null: it has ended). */
  setEngine(pid: number | null): void {
    this.holder = { ...this.holder, engine: pid === null ? null : childProcess(pid) };
    const tmp = `${this.file}.${process.pid}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(this.holder, null, 1)}\n`);
    renameSync(tmp, this.file);
  }

  /** Gives the lock up (when it is still this process's). */
  release(): void {
    const found = readHolder(this.file);
    if (found?.holder?.pid === this.holder.pid && found.holder.proc_start === this.holder.proc_start) {
      rmSync(this.file, { force: true });
    }
  }
}
