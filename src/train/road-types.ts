// What the road of `lorakit train` takes (its options, the second Ctrl-C's hook) and what it gives back.
import type { Event } from "../config/schema.js";
import type { PythonEnv } from "../engine/python.js";
import type { LorakitError } from "../errors.js";
import type { Finding } from "../findings/index.js";

export interface RoadOptions {
  resume?: boolean;
  force?: boolean;
  signal?: AbortSignal;
  log: (line: string) => void;
  onEvent?: (event: Event) => void;
  /** Overrides for tests: the engine's environment. */
  py?: PythonEnv;
  env?: NodeJS.ProcessEnv;
  /** The smoke run before the real one (default on). */
  smoke?: boolean;
  /** Start over: delete an earlier run's checkpoints and adapter under the same name. */
  fresh?: boolean;
  /** Every finding as it is made: the doctor's, the smoke run's, training's, the outputs'. */
  onFinding?: (f: Finding) => void;
  /** Filled in while the road runs: what a second Ctrl-C does before lorakit exits at once (ends the engine,
   * marks the run stopped, gives its lock up) and the sentence that says what is given up. */
  quit?: QuitHook;
}

export interface RoadResult {
  status: "completed" | "failed" | "stopped";
  /** The status in words: "completed with 1 error finding: ADAPTER_RELOAD_MISMATCH" (outcomeText). */
  outcome: string;
  runDir: string;
  adapterDir: string | null;
  reportPath: string;
  exactMatch: { before: number | null; after: number | null; n: number };
  error: LorakitError | null;
  runId: number;
  /** Error findings made during or after training (the run completed, but its result is not to be trusted). */
  errorFindings: { code: string; title: string; fix: string }[];
  /** Python that loads the adapter and generates (also in the adapter's README.md); null without an adapter. */
  usage: string | null;
  /** `--resume` of a run that had completed, at this step: nothing was done. */
  completedAt?: number;
}

/** The sentence a second Ctrl-C prints, after it has settled the run's records: see RoadOptions.quit. */
export interface QuitHook {
  quit?: () => string;
}
