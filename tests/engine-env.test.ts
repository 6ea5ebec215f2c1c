// The engine in interpreters as users have them (LORAKIT_PYTHON): a second, real interpreter made here —
// a venv of the same Python whose site-packages links the engine environment's packages, with some hidden
// or replaced by others' metadata (a GPU machine's CUDA torch 2.11, an old peft) — and a PYTHONPATH set in
// the user's shell to an unrelated folder (holding a decoy `lorakit_engine` that fails when imported).
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ENGINE_DIR, ensurePython, requirementsHash } from "../src/engine/python.js";
import { LorakitError } from "../src/errors.js";
import { fixture, runCli, tmpDir, writeCodeWords } from "./helpers.js";

const DEV_PYTHON = process.env.LORAKIT_PYTHON as string;
const work = tmpDir("lorakit-engine-env-");

function py(python: string, code: string): string {
  const r = spawnSync(python, ["-c", code], { encoding: "utf8", env: { PATH: process.env.PATH } });
  if (r.status !== 0) throw new Error(r.stderr);
  return r.stdout.trim();
}

/**
 * A venv of the engine environment's base Python whose site-packages links every package of the engine
 * environment except those named in `hide`; `fake` adds packages as bare metadata (name → version) in
 * place of hidden ones.
 */
function makeInterpreter(name: string, opts: { hide?: string[]; fake?: Record<string, string> } = {}): string {
  const dir = path.join(work, name);
  const base = py(DEV_PYTHON, "import sys; print(sys._base_executable)");
  const made = spawnSync(base, ["-m", "venv", "--without-pip", dir], { encoding: "utf8" });
  if (made.status !== 0) throw new Error(made.stderr);
  const python = path.join(dir, "bin", "python");
  const purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])";
  const from = py(DEV_PYTHON, purelib);
  const to = py(python, purelib);
  const hidden = (entry: string) =>
    (opts.hide ?? []).some((h) => entry === h || entry.startsWith(`${h}-`) || entry === `${h}.py`);
  for (const entry of readdirSync(from)) {
    if (!hidden(entry)) symlinkSync(path.join(from, entry), path.join(to, entry));
  }
  for (const [pkg, version] of Object.entries(opts.fake ?? {})) {
    mkdirSync(path.join(to, pkg));
    writeFileSync(path.join(to, pkg, "__init__.py"), `__version__ = ${JSON.stringify(version)}\n`);
    const info = path.join(to, `${pkg}-${version}.dist-info`);
    mkdirSync(info);
    writeFileSync(path.join(info, "METADATA"), `Metadata-Version: 2.1\nName: ${pkg}\nVersion: ${version}\n`);
  }
  return python;
}

// The user's PYTHONPATH: an unrelated folder, with a package of the engine's name that must not win.
const unrelated = path.join(work, "unrelated");
mkdirSync(path.join(unrelated, "lorakit_engine"), { recursive: true });
writeFileSync(path.join(unrelated, "lorakit_engine", "__init__.py"), 'raise ImportError("the decoy lorakit_engine")\n');
writeFileSync(path.join(unrelated, "their_module.py"), "X = 1\n");

async function ensureError(env: NodeJS.ProcessEnv, purpose?: "demo"): Promise<LorakitError> {
  try {
    await ensurePython({ env: { ...process.env, ...env }, ...(purpose ? { purpose } : {}) });
  } catch (e) {
    if (e instanceof LorakitError) return e;
    throw e;
  }
  throw new Error("ensurePython accepted the interpreter");
}

describe("LORAKIT_PYTHON: what the interpreter lacks", () => {
  it("names exactly the missing packages and one pip command that adds only them (jsonschema is not needed)", async () => {
    const python = makeInterpreter("lacking", { hide: ["peft", "safetensors", "jsonschema", "gguf"] });
    const e = await ensureError({ LORAKIT_PYTHON: python, PYTHONPATH: unrelated });
    expect(e.code).toBe("PYTHON_ENV_INCOMPLETE");
    expect(e.message).toBe(
      `LORAKIT_PYTHON: ${python} lacks peft (for LoRA layers and the adapter format), safetensors (for checkpoint files)`,
    );
    expect(e.hint).toBe(
      `run: ${python} -m pip install peft==0.21.2 safetensors==0.8.0. Or unset LORAKIT_PYTHON to let lorakit build its own environment.`,
    );
    expect(e.hint).not.toMatch(/torch|requirements/);
    // The demo needs gguf too.
    const demo = await ensureError(
      { LORAKIT_PYTHON: makeInterpreter("no-gguf", { hide: ["gguf", "jsonschema"] }), PYTHONPATH: unrelated },
      "demo",
    );
    expect(demo.message).toMatch(/ lacks gguf \(for reading the demo model's GGUF file\)$/);
    expect(demo.hint).toContain(" -m pip install gguf==0.19.0.");
  });

  it("says which versions are too old, the one seen and the one needed, and never installs torch", async () => {
    const python = makeInterpreter("old", { hide: ["torch", "peft"], fake: { torch: "2.4.1+cu121", peft: "0.13.0" } });
    const e = await ensureError({ LORAKIT_PYTHON: python });
    expect(e.code).toBe("PYTHON_ENV_OUTDATED");
    expect(e.message).toBe(
      `LORAKIT_PYTHON: ${python}: torch 2.4.1+cu121 is older than the 2.11 the engine needs; peft 0.13.0 is older than the 0.21 the engine needs`,
    );
    expect(e.hint).toContain("Install torch 2.11 or newer built for this machine's CUDA (https://pytorch.org/");
    expect(e.hint).toContain(`then run: ${python} -m pip install peft==0.21.2.`);
    expect(e.hint).not.toMatch(/pip install[^.]*torch/);
  });

  it("`pip install ./engine` keeps a GPU machine's CUDA torch 2.11 (the old exact pins could not)", () => {
    const python = makeInterpreter("cuda-torch", { hide: ["torch"], fake: { torch: "2.11.0+cu130" } });
    const copy = path.join(work, "engine-copy");
    cpSync(path.join(ENGINE_DIR, "lorakit_engine"), path.join(copy, "lorakit_engine"), { recursive: true });
    cpSync(path.join(ENGINE_DIR, "pyproject.toml"), path.join(copy, "pyproject.toml"));
    const report = path.join(work, "pip-report.json");
    const r = spawnSync(
      DEV_PYTHON,
      ["-m", "pip", "--python", python, "install", "--isolated", "--no-index", "--no-build-isolation"].concat([
        "--dry-run",
        "--quiet",
        "--report",
        report,
        copy,
      ]),
      { encoding: "utf8" },
    );
    expect(r.status, r.stderr).toBe(0);
    const install = JSON.parse(readFileSync(report, "utf8")).install as { metadata: { name: string } }[];
    expect(install.map((i) => i.metadata.name)).toEqual(["lorakit_engine"]);
  });

  it("the cached environment's name changes with the pins", () => {
    const dir = tmpDir("lorakit-reqhash-");
    const file = path.join(dir, "requirements.txt");
    writeFileSync(file, "torch==2.13.0\n");
    const before = requirementsHash(DEV_PYTHON, [file]);
    expect(requirementsHash(DEV_PYTHON, [file])).toBe(before);
    writeFileSync(file, "torch==2.13.1\n");
    expect(requirementsHash(DEV_PYTHON, [file])).not.toBe(before);
  });
});

describe("LORAKIT_PYTHON with the user's PYTHONPATH set: doctor and train run", () => {
  let python = "";
  const dir = tmpDir("lorakit-engine-env-run-");
  beforeAll(() => {
    // Everything the engine needs; no jsonschema, no pytest: what a GPU machine's interpreter has.
    python = makeInterpreter("gpu-like", { hide: ["jsonschema", "pytest", "ruff"] });
    writeCodeWords(dir);
    const cfg = {
      model: fixture("models", "tiny-llama"),
      data: { train: "train.json", eval_split: 0.2, max_length: 96 },
      lora: { r: 4, alpha: 8 },
      train: { epochs: 1, batch_size: 4, grad_accum: 1, lr: 5e-3 },
      samples: { count: 2, max_new_tokens: 4 },
    };
    writeFileSync(path.join(dir, "run.yaml"), JSON.stringify(cfg));
  });
  const env = () => ({ LORAKIT_PYTHON: python, PYTHONPATH: unrelated });

  it("lorakit doctor: the probe and the model inspection run", async () => {
    const r = await runCli(["doctor", "run.yaml", "--json"], { cwd: dir, env: env() });
    const j = JSON.parse(r.stdout) as { findings: { code: string; severity: string }[]; summary: unknown };
    expect(j.findings.filter((f) => f.severity === "error")).toEqual([]);
    expect(j.findings.map((f) => f.code)).not.toContain("ENV_PROBE_FAILED");
    expect(r.code).toBe(0);
  });

  it("lorakit train: a short run completes", async () => {
    const r = await runCli(["train", "run.yaml", "--no-smoke"], { cwd: dir, env: env() });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(readdirSync(path.join(dir, "runs", "run", "adapter"))).toContain("adapter_model.safetensors");
  });
});
