// `lorakit doctor run.yaml [--json]`: every check that can run before training, as numbered steps with
// ✓/✗ and the findings under each; `--json` prints `{findings, summary}`. Exit 1 when any finding is an error.
import { loadConfig } from "../config/load.js";
import type { StepResult } from "../doctor/index.js";
import { countFindings, sortFindings } from "../findings/index.js";
import { plural } from "../format.js";
import { prepareAndCheck } from "../train/prepare-and-check.js";
import { defineCommand } from "./command.js";
import { renderFinding, toJson } from "./findings-view.js";
import { withInterrupt } from "./interrupt.js";
import { colors, err, type Io, out } from "./io.js";

function printStep(io: Io, s: StepResult): void {
  const c = colors(io);
  const mark =
    s.status === "fail"
      ? c.red("✗")
      : s.status === "warn"
        ? c.yellow("!")
        : s.status === "skipped"
          ? c.dim("–")
          : c.green("✓");
  out(
    io,
    `${String(s.n).padStart(2)}. ${mark} ${s.name.padEnd(12)} ${s.status === "skipped" ? c.dim(s.summary) : s.summary}`,
  );
  for (const f of sortFindings(s.findings)) out(io, renderFinding(f, io, { indent: "       " }));
}

export const command = defineCommand({
  name: "doctor",
  summary: "check a run before training: environment, config, memory, data, model",
  args: "<run.yaml>",
  positionals: [1, 1],
  description:
    "Runs every check that can run before training, as `lorakit train` does before it starts: the environment " +
    "(driver, torch, devices; on the CPU, how long training would take), the config, the memory it needs, the " +
    "prepared data (exact counts and real tokens) and the model (loaded, LoRA attached, the template's effect " +
    "on the loss). Prints numbered steps with each finding's evidence and fix; exits 1 when any is an error.",
  options: {
    json: { type: "boolean", description: "print {findings, summary} as JSON instead (for scripts and CI)" },
    "skip-model": {
      type: "boolean",
      description: "leave out the model check, which loads the checkpoint (slow for a large model on the CPU)",
    },
  },
  examples: [
    ["lorakit doctor run.yaml", "every check, as numbered steps"],
    ["lorakit doctor run.yaml --skip-model --json", "the quick checks, as JSON"],
  ],
  async run({ values, positionals }, io) {
    const configPath = positionals[0] as string;
    const json = Boolean(values.json);
    const loaded = await loadConfig(configPath, io.cwd, io.env);
    if (!json) out(io, `lorakit doctor  ${loaded.file}\n`);
    // The data is prepared (or reused) so that every check runs on exact counts and real tokens.
    const { doctor: result } = await withInterrupt(
      io,
      (signal) =>
        prepareAndCheck(loaded, {
          signal,
          env: io.env,
          skipModel: Boolean(values["skip-model"]),
          ...(json ? {} : { onStep: (s: StepResult) => printStep(io, s) }),
          log: json ? () => {} : (l) => err(io, l),
        }),
      undefined,
      "stopping the checks …",
    );
    const counts = countFindings(result.findings);
    if (json) {
      out(
        io,
        JSON.stringify(
          toJson(result.findings, {
            steps: result.steps.map((s) => ({ n: s.n, name: s.name, status: s.status, summary: s.summary })),
            config: loaded.file,
          }),
          null,
          2,
        ),
      );
    } else {
      const c = colors(io);
      const tail = `${plural(counts.errors, "error")}, ${plural(counts.warnings, "warning")}, ${counts.info} info`;
      out(io, "");
      out(
        io,
        counts.errors > 0
          ? c.red(`✗ ${tail} — fix the errors before training`)
          : counts.warnings > 0
            ? c.yellow(`! ${tail} — training can start; read the warnings first`)
            : c.green(`✓ ${tail} — ready to train`),
      );
    }
    return counts.errors > 0 ? 1 : 0;
  },
});
