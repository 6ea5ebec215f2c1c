// The engine's processes, all started here in its environment (spawnEnv): a supervised run
// (`python -m lorakit_engine <command> --plan …`: JSON-lines events read, Ctrl-C turned into a clean `stop`,
// a crash into an error that shows the tail of the traceback), and a module that answers with one JSON
// object (the probe, the model inspection).
import { spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { constants } from "node:os";
import { createInterface } from "node:readline";
import type { Control, Event, EventOf } from "../config/schema.js";
import { LorakitError } from "../errors.js";
import { parseEventLine } from "./protocol.js";
import { type PythonEnv, spawnEnv } from "./python.js";

export interface EngineRun {
  /** Sends a control line to the engine. */
  send(control: Control): void;
  /** Resolves when the engine has exited. */
  done: Promise<EngineResult>;
  /** The engine's process id (undefined when it could not be started). */
  pid: number | undefined;
  /** Ends the engine at once (SIGKILL): lorakit itself is quitting. */
  kill(): void;
}

export interface EngineResult {
  exitCode: number;
  /** The signal that ended the engine, when one did (SIGKILL: kill -9, or the kernel out of memory). */
  signal: NodeJS.Signals | null;
  /** The engine's own `error` event, when it wrote one. */
  error: EventOf<"error"> | null;
  /** The `done` event, when it finished or stopped cleanly. */
  finished: EventOf<"done"> | null;
  /** The last lines the engine wrote to stderr (its traceback when it crashed). */
  stderrTail: string[];
  /** True when a stop was requested (Ctrl-C or `send({type: "stop"})`). */
  stopRequested: boolean;
}

export interface SpawnOptions {
  py: PythonEnv;
  command: string;
  planPath: string;
  onEvent: (event: Event) => void;
  /** stderr of the engine is appended here in full. */
  logFile?: string;
  /** Aborting sends `stop`; a second abort (or no exit within `killAfterMs`) kills the engine. */
  signal?: AbortSignal;
  killAfterMs?: number;
  extraEnv?: NodeJS.ProcessEnv;
  /** Processes to launch through torchrun (data parallel); 1 = a plain process. */
  devices?: number;
}

/** The engine's command line: a plain module run, or torchrun with one process per device. */
export function engineArgs(command: string, planPath: string, devices = 1): string[] {
  const engine = ["-m", "lorakit_engine", command, "--plan", planPath];
  if (devices <= 1) return engine;
  return ["-m", "torch.distributed.run", "--standalone", `--nproc_per_node=${devices}`, ...engine];
}

const TAIL_LINES = 40;

export function spawnEngine(opts: SpawnOptions): EngineRun {
  const child = spawn(opts.py.python, engineArgs(opts.command, opts.planPath, opts.devices), {
    env: spawnEnv(opts.py, opts.extraEnv),
    stdio: ["pipe", "pipe", "pipe"],
  });
  const log = opts.logFile ? createWriteStream(opts.logFile, { flags: "a" }) : null;
  const tail: string[] = [];
  let error: EventOf<"error"> | null = null;
  let finished: EventOf<"done"> | null = null;
  let stopRequested = false;
  let killTimer: NodeJS.Timeout | undefined;

  const send = (control: Control) => {
    if (child.stdin.writable) child.stdin.write(`${JSON.stringify(control)}\n`);
  };
  child.stdin.on("error", () => {}); // the engine may exit before reading everything

  const onAbort = () => {
    if (stopRequested) {
      child.kill("SIGKILL");
      return;
    }
    stopRequested = true;
    send({ type: "stop" });
    killTimer = setTimeout(() => child.kill("SIGTERM"), opts.killAfterMs ?? 120_000);
  };
  if (opts.signal?.aborted) onAbort();
  else opts.signal?.addEventListener("abort", onAbort);

  createInterface({ input: child.stdout }).on("line", (line) => {
    const event = parseEventLine(line);
    if (!event) {
      // Stray prints from libraries: keep them in the log, out of the event stream.
      log?.write(`[stdout] ${line}\n`);
      return;
    }
    if (event.type === "error") error = event;
    if (event.type === "done") finished = event;
    try {
      opts.onEvent(event);
    } catch (e) {
      // A bug in a consumer must not kill the supervisor (and with it the run's records).
      log?.write(`[lorakit] event handler failed on ${event.type}: ${(e as Error).stack ?? e}\n`);
    }
  });
  createInterface({ input: child.stderr }).on("line", (line) => {
    log?.write(`${line}\n`);
    tail.push(line);
    if (tail.length > TAIL_LINES) tail.shift();
  });

  const done = new Promise<EngineResult>((resolve) => {
    let spawnError: Error | null = null;
    child.on("error", (e) => {
      spawnError = e;
    });
    child.on("close", (code, sig) => {
      if (killTimer) clearTimeout(killTimer);
      opts.signal?.removeEventListener("abort", onAbort);
      log?.end();
      if (spawnError) tail.push(`could not start ${opts.py.python}: ${(spawnError as Error).message}`);
      resolve({
        exitCode: code ?? (sig ? 128 + (constants.signals[sig] ?? 0) : 1),
        signal: sig,
        error,
        finished,
        stderrTail: tail,
        stopRequested,
      });
    });
  });
  return { send, done, pid: child.pid, kill: () => child.kill("SIGKILL") };
}

/** The user-facing error for an engine that did not finish. */
export function engineFailure(result: EngineResult, logFile?: string): LorakitError {
  const tail = result.stderrTail.slice(-15).join("\n");
  const where = logFile ? { file: logFile } : undefined;
  if (result.error) {
    // The traceback tells only where an unexpected exception came from; the engine's own errors (DISK_FULL,
    // CHECKPOINT_CORRUPT, …) name their cause and fix already, and a stack under them reads as a crash.
    const trace =
      result.error.traceback && result.error.code === "ENGINE_CRASH"
        ? `\n${result.error.traceback.trimEnd().split("\n").slice(-8).join("\n")}`
        : "";
    return new LorakitError(result.error.code, `${result.error.message}${trace}`, {
      where,
      hint: result.error.hint,
    });
  }
  const how = result.signal
    ? `the engine was killed by ${result.signal}${result.signal === "SIGKILL" ? " (kill -9, or the system ran out of memory)" : ""}`
    : `the engine exited with code ${result.exitCode}`;
  return new LorakitError("ENGINE_CRASH", `${how}${tail ? `:\n${tail}` : ""}`, {
    where,
    hint: "the run is marked failed and its checkpoints are kept: fix the cause above, then `lorakit train <config> --resume`",
  });
}

// ---------------------------------------------------------------- a module's one JSON answer

export interface EngineJson<T> {
  json: T | null;
  error: string | null;
  stderrTail: string;
}

/** Runs `python -m <module> ...args` and parses the JSON object it prints as its last stdout line. */
export function runEngineJson<T>(
  py: PythonEnv,
  module: string,
  args: string[],
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; signal?: AbortSignal } = {},
): Promise<EngineJson<T>> {
  return new Promise((resolve) => {
    const child = spawn(py.python, ["-m", module, ...args], {
      env: spawnEnv(py, opts.env),
      stdio: ["ignore", "pipe", "pipe"],
      ...(opts.signal ? { signal: opts.signal, killSignal: "SIGKILL" as const } : {}),
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    child.stderr.on("data", (d) => {
      stderr = (stderr + d).slice(-8000);
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 120_000);
    const tail = () => stderr.trim().split("\n").slice(-12).join("\n");
    child.on("error", (e) => {
      clearTimeout(timer);
      resolve({ json: null, error: `cannot run ${py.python}: ${e.message}`, stderrTail: "" });
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const line = stdout
        .split("\n")
        .map((l) => l.trim())
        .filter((l) => l.startsWith("{"))
        .pop();
      if (code === 0 && line) {
        try {
          resolve({ json: JSON.parse(line) as T, error: null, stderrTail: tail() });
          return;
        } catch (e) {
          resolve({ json: null, error: `unreadable output: ${(e as Error).message}`, stderrTail: tail() });
          return;
        }
      }
      const how = signal ? `killed by ${signal}` : `exit code ${code}`;
      const last = tail().split("\n").pop() ?? "";
      resolve({ json: null, error: `${module} failed (${how})${last ? `: ${last}` : ""}`, stderrTail: tail() });
    });
  });
}
