// The engine's checkpoints (`<run>/checkpoints/step-N/`, engine/lorakit_engine/checkpoint.py) as lorakit sees
// them before a resume: the one the engine will resume from is the newest whose files all match its
// SHA256SUMS, and the newer ones it passes over are named with why. The same rule on both sides, so a resume
// can be checked (its plan, its step) against the checkpoint that will really be read, before the engine starts.
import { existsSync, readdirSync } from "node:fs";
import path from "node:path";
import { LorakitError } from "../errors.js";
import { plural } from "../format.js";
import { checkSums } from "./sums.js";

export interface Checkpoints {
  /** The newest checkpoint that verifies, or null. */
  newest: { step: number; dir: string } | null;
  /** Newer checkpoints that do not verify, newest first, each with its first problem. */
  skipped: { step: number; dir: string; why: string }[];
}

/** The run's checkpoints, as a resume takes them. */
export function newestVerifiedCheckpoint(runDir: string): Checkpoints {
  const base = path.join(runDir, "checkpoints");
  const steps = existsSync(base)
    ? readdirSync(base, { withFileTypes: true })
        .filter((d) => d.isDirectory() && /^step-\d+$/.test(d.name))
        .map((d) => ({ step: Number(d.name.slice(5)), dir: path.join(base, d.name) }))
        .sort((a, b) => b.step - a.step)
    : [];
  const skipped: Checkpoints["skipped"] = [];
  for (const c of steps) {
    const problems = checkSums(c.dir);
    if (problems.length === 0) return { newest: c, skipped };
    const more = problems.length > 1 ? ` (and ${problems.length - 1} more)` : "";
    skipped.push({ ...c, why: `${problems[0]}${more}` });
  }
  return { newest: null, skipped };
}

/**
 * The checkpoint `lorakit train <config> --resume` will continue from. None that verifies is CHECKPOINT_CORRUPT
 * with each damaged checkpoint named (its first file that does not match), and none at all RESUME_NOTHING:
 * both before anything of the run is written or the engine starts.
 */
export function resumableCheckpoint(runDir: string, runName: string, config: string): { step: number; dir: string } {
  const { newest, skipped } = newestVerifiedCheckpoint(runDir);
  if (newest) return newest;
  if (skipped.length > 0) {
    throw new LorakitError(
      "CHECKPOINT_CORRUPT",
      `run '${runName}' has no checkpoint that verifies to resume from (${plural(skipped.length, "damaged checkpoint")})`,
      {
        where: { file: path.join(runDir, "checkpoints") },
        hint: `the damaged checkpoints cannot be trusted: start the run over with \`lorakit train ${config} --fresh\``,
        more: skipped.map(
          (s) =>
            new LorakitError("CHECKPOINT_CORRUPT", `checkpoint step-${s.step} is damaged: ${s.why}`, {
              where: { file: s.dir },
            }),
        ),
      },
    );
  }
  throw new LorakitError("RESUME_NOTHING", `run '${runName}' has no complete checkpoint to resume from`, {
    where: { file: runDir },
    hint: `start it without --resume: lorakit train ${config}`,
  });
}
