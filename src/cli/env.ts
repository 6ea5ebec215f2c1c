// `lorakit env`: set up (if needed) and show the engine's Python environment.
import { spawnSync } from "node:child_process";
import { ensurePython, spawnEnv } from "../engine/python.js";
import { parse } from "./args.js";
import { err, out } from "./io.js";
import type { Command } from "./main.js";

const usage = "lorakit env [--dev] [--python]";

export const command: Command = {
  summary: "set up and show the engine's Python environment",
  usage,
  async run(argv, io) {
    const { values } = parse(argv, { dev: { type: "boolean" }, python: { type: "boolean" } }, usage);
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
};
