// `lorakit env`: set up (if needed) and show the engine's Python environment.
import { spawnSync } from "node:child_process";
import { ensurePython, spawnEnv } from "../engine/python.js";
import { defineCommand } from "./command.js";
import { err, out } from "./io.js";

export const command = defineCommand({
  name: "env",
  summary: "set up and show the engine's Python environment",
  description:
    "Creates the engine's Python virtual environment on first use (in ~/.cache/lorakit/python/, from " +
    "engine/requirements.txt; LORAKIT_PYTHON names an interpreter to use instead) and prints its interpreter " +
    "and the versions of Python, torch, transformers and peft, and whether CUDA is available.",
  options: {
    dev: { type: "boolean", description: "also install the test tools (pytest, ruff) into the environment" },
    python: { type: "boolean", description: "print only the interpreter's path (for scripts)" },
  },
  examples: [
    ["lorakit env", "set up if needed, and show versions and CUDA"],
    ['"$(lorakit env --python)" -m pytest engine/tests -q', "run the engine's tests with its interpreter"],
  ],
  async run({ values }, io) {
    const py = await ensurePython({ env: io.env, dev: Boolean(values.dev), log: (l) => err(io, l) });
    if (values.python) {
      out(io, py.python);
      return 0;
    }
    const r = spawnSync(
      py.python,
      [
        "-c",
        "import sys,torch,transformers,peft;print(sys.version.split()[0],torch.__version__,transformers.__version__,peft.__version__,torch.cuda.is_available())",
      ],
      { env: spawnEnv(py), encoding: "utf8" },
    );
    const [pyv, torchv, tfv, peftv, cuda] = r.stdout.trim().split(" ");
    out(io, `python        ${py.python}${py.external ? " (LORAKIT_PYTHON)" : ""}`);
    out(io, `versions      python ${pyv}, torch ${torchv}, transformers ${tfv}, peft ${peftv}`);
    out(io, `cuda          ${cuda === "True" ? "available" : "not available (CPU)"}`);
    return r.status === 0 ? 0 : 1;
  },
});
