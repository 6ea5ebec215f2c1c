// Before any TypeScript test: the engine's Python environment (LORAKIT_PYTHON, or the cached
// venv) and the tiny fixtures (tokenizers and checkpoints in the real layouts) in tests/.fixtures.
import { spawnSync } from "node:child_process";
import path from "node:path";
import { ensurePython, ROOT } from "../../src/engine/python.js";

export default async function setup(): Promise<void> {
  const py = await ensurePython({ dev: true, log: (l) => console.log(l) });
  process.env.LORAKIT_PYTHON = py.python;
  const r = spawnSync(
    py.python,
    [path.join(ROOT, "engine", "tests", "fixtures", "build_all.py"), "--out", path.join(ROOT, "tests", ".fixtures")],
    { stdio: "inherit" },
  );
  if (r.status !== 0) throw new Error("building the test fixtures failed");
}
