// The engine's Python environment. By default a virtual environment in lorakit's cache, made on
// first use from the pinned engine/requirements.txt; LORAKIT_PYTHON points at an existing
// interpreter instead (a GPU machine that already has torch).
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { LorakitError } from "../errors.js";

/** Repository root (this file is src/engine/python.ts or dist/engine/python.js). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const ENGINE_DIR = path.join(ROOT, "engine");

export interface PythonEnv {
  python: string;
  /** Environment for engine processes: PYTHONPATH points at engine/. */
  env: NodeJS.ProcessEnv;
  /** True when LORAKIT_PYTHON chose the interpreter. */
  external: boolean;
}

export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.LORAKIT_CACHE) return path.resolve(env.LORAKIT_CACHE);
  const xdg = env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
  return path.join(xdg, "lorakit");
}

/** Variables every engine process gets, whatever the caller's environment holds. */
function pinned(python: string, base: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  // engine/ leads PYTHONPATH so `-m lorakit_engine` finds this checkout's engine first; whatever the
  // user's PYTHONPATH held follows it (once), so their own packages stay importable.
  const rest = (base.PYTHONPATH ?? "").split(path.delimiter).filter((p) => p !== "" && p !== ENGINE_DIR);
  return {
    PYTHONPATH: [ENGINE_DIR, ...rest].join(path.delimiter),
    PYTHONUNBUFFERED: "1",
    PYTHONDONTWRITEBYTECODE: "1",
    LORAKIT_PYTHON: python,
    // Hubs are never contacted at run time.
    HF_HUB_OFFLINE: "1",
    TRANSFORMERS_OFFLINE: "1",
    TOKENIZERS_PARALLELISM: "false",
  };
}

export function engineEnv(python: string, env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { ...env, ...pinned(python, env) };
}

/**
 * The environment of one engine process: the interpreter's, then the caller's extra variables
 * (CUDA_VISIBLE_DEVICES, a whole copy of the user's environment, …), then the variables the engine
 * cannot run without, applied last so no extra variable (a PYTHONPATH set in the user's shell) can
 * take them away. Every place that starts an engine process uses this.
 */
export function spawnEnv(py: PythonEnv, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const merged = { ...py.env, ...extra };
  return { ...merged, ...pinned(py.python, merged) };
}

/** What `python -m lorakit_engine.deps` reports (engine/lorakit_engine/deps.py). */
export interface DepsReport {
  python: string;
  python_version: string;
  python_ok: boolean;
  packages: { name: string; need: string; have: string | null; status: "ok" | "missing" | "outdated"; for: string }[];
  missing: string[];
  outdated: string[];
  /** One pip command that adds or upgrades only what is missing or too old (never torch). */
  command: string | null;
  torch_hint: string | null;
  problem: { code: string; message: string; hint: string } | null;
}

/** Asks the interpreter which of the engine's packages it has, without importing them. */
export function checkDeps(python: string, env: NodeJS.ProcessEnv, purpose?: "demo"): DepsReport {
  const args = ["-m", "lorakit_engine.deps", ...(purpose ? ["--for", purpose] : [])];
  const r = spawnSync(python, args, { encoding: "utf8", env: engineEnv(python, env) });
  const line = r.stdout
    ?.split("\n")
    .filter((l) => l.startsWith("{"))
    .pop();
  if (r.error || r.status !== 0 || !line) {
    const why = r.error?.message ?? (r.stderr.trim().split("\n").slice(-3).join(" ") || `exit code ${r.status}`);
    throw new LorakitError("PYTHON_NOT_FOUND", `cannot run LORAKIT_PYTHON=${python}: ${why}`, {
      hint: "point LORAKIT_PYTHON at a Python 3.10+ interpreter (its full path), or unset it to let lorakit build its own environment",
    });
  }
  return JSON.parse(line) as DepsReport;
}

/** The hash that names a cached environment: the base interpreter's version and the pinned files' bytes. */
export function requirementsHash(base: string, files: string[]): string {
  const h = createHash("sha256");
  const v = spawnSync(base, ["-c", "import sys;print(sys.version)"], { encoding: "utf8" });
  if (v.error || v.status !== 0) {
    throw new LorakitError("PYTHON_NOT_FOUND", `cannot run '${base}' to build the engine environment`, {
      hint: "install Python 3.10+ (python3 on PATH), or set LORAKIT_PYTHON to an interpreter with torch, transformers and peft",
    });
  }
  h.update(v.stdout);
  for (const f of files) h.update(readFileSync(f));
  return h.digest("hex").slice(0, 12);
}

function run(cmd: string, args: string[], log: string): Promise<number> {
  return new Promise((resolve) => {
    const out = createWriteStream(log, { flags: "a" });
    out.write(`$ ${cmd} ${args.join(" ")}\n`);
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout.pipe(out, { end: false });
    child.stderr.pipe(out, { end: false });
    child.on("error", () => resolve(127));
    // The log is read on failure: resolve once it is flushed.
    child.on("close", (code) => out.end(() => resolve(code ?? 1)));
  });
}

async function withLock<T>(lockDir: string, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 30 * 60_000;
  for (;;) {
    try {
      mkdirSync(lockDir);
      break;
    } catch {
      // A lock older than 30 minutes belongs to a process that died.
      try {
        if (Date.now() - statSync(lockDir).mtimeMs > 30 * 60_000) rmSync(lockDir, { recursive: true, force: true });
      } catch {}
      if (Date.now() > deadline) throw new LorakitError("PYTHON_ENV_LOCKED", `timed out waiting for ${lockDir}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  try {
    return await fn();
  } finally {
    rmSync(lockDir, { recursive: true, force: true });
  }
}

export interface EnsureOptions {
  env?: NodeJS.ProcessEnv;
  /** Also install the test tools (pytest, ruff). */
  dev?: boolean;
  /** Progress lines for a person ("setting up …"). */
  log?: (line: string) => void;
  /** Also the packages one command needs (the demo: gguf). */
  purpose?: "demo";
}

/** The engine's interpreter, creating the cached virtual environment on first use. */
export async function ensurePython(opts: EnsureOptions = {}): Promise<PythonEnv> {
  const env = opts.env ?? process.env;
  const log = opts.log ?? (() => {});
  if (env.LORAKIT_PYTHON) {
    const python = env.LORAKIT_PYTHON;
    // An interpreter the user brought (a GPU machine's own torch): nothing is installed into it; what
    // it lacks is named with the one command that adds only that.
    const problem = checkDeps(python, env, opts.purpose).problem;
    if (problem) {
      throw new LorakitError(problem.code, `LORAKIT_PYTHON: ${problem.message}`, {
        hint: `${problem.hint} Or unset LORAKIT_PYTHON to let lorakit build its own environment.`,
      });
    }
    return { python, env: engineEnv(python, env), external: true };
  }
  const base = env.LORAKIT_BASE_PYTHON || "python3";
  const reqFiles = [path.join(ENGINE_DIR, "requirements.txt")];
  if (opts.dev) reqFiles.push(path.join(ENGINE_DIR, "requirements-dev.txt"));
  const venv = path.join(cacheDir(env), "python", requirementsHash(base, [reqFiles[0] as string]));
  const python = path.join(venv, "bin", "python");
  // The test tools' stamp names their requirements, so a change to them installs again.
  const devHash = opts.dev
    ? createHash("sha256")
        .update(readFileSync(reqFiles[1] as string))
        .digest("hex")
        .slice(0, 12)
    : "";
  const stamp = path.join(venv, opts.dev ? `.ready-dev-${devHash}` : ".ready");
  if (!existsSync(stamp)) {
    mkdirSync(path.dirname(venv), { recursive: true });
    await withLock(`${venv}.lock`, async () => {
      if (existsSync(stamp)) return;
      const logFile = `${venv}.install.log`;
      writeFileSync(logFile, "");
      const fail = (what: string) => {
        const tail = readFileSync(logFile, "utf8").split("\n").slice(-25).join("\n");
        return new LorakitError("PYTHON_ENV_FAILED", `${what} (log: ${logFile})\n${tail}`, {
          hint: "fix the cause above and run again, or set LORAKIT_PYTHON to an interpreter that has the engine's requirements",
        });
      };
      if (!existsSync(path.join(venv, ".ready"))) {
        log(`Setting up the engine's Python environment in ${venv} (first run only) …`);
        rmSync(venv, { recursive: true, force: true });
        if ((await run(base, ["-m", "venv", venv], logFile)) !== 0)
          throw fail("creating the virtual environment failed");
        const pip = [path.join(venv, "bin", "pip"), "install", "--disable-pip-version-check", "--no-input"];
        const [p0, ...pArgs] = pip as [string, ...string[]];
        if ((await run(p0, [...pArgs, "-r", reqFiles[0] as string], logFile)) !== 0)
          throw fail("installing the engine's requirements failed");
        writeFileSync(path.join(venv, ".ready"), new Date().toISOString());
      }
      if (opts.dev) {
        log("Installing the engine's test tools …");
        if (
          (await run(
            python,
            ["-m", "pip", "install", "--disable-pip-version-check", "-r", reqFiles[1] as string],
            logFile,
          )) !== 0
        )
          throw fail("installing the engine's test tools failed");
        writeFileSync(stamp, new Date().toISOString());
      }
    });
  }
  return { python, env: engineEnv(python, env), external: false };
}
