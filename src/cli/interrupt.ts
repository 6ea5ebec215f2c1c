// Ending a command early, the two ways a person does: Ctrl-C, and closing the reader of its output
// (`lorakit data run.yaml | head -2`). A run in progress stops cleanly either way (the engine saves a
// checkpoint); anything else ends at once, without a stack trace.
import { err, type Io } from "./io.js";

/** Stops of the runs in progress (one per withInterrupt). */
const running = new Set<AbortController>();

/** Turns Ctrl-C into an AbortSignal for the duration of `fn`; a second Ctrl-C quits at once. `progress`'s bar
 * (and the ^C the terminal echoed on it) is cleared before the message, `stopping` (what happens now). Before
 * quitting, `quit` (when given) settles what is in progress and returns the sentence that says what is given up. */
export async function withInterrupt<T>(
  io: Io,
  fn: (signal: AbortSignal) => Promise<T>,
  progress?: { clear(): void },
  stopping = "stopping: a training step in progress ends and is saved as a checkpoint (Ctrl-C again to quit at once) …",
  quit?: () => string | undefined,
): Promise<T> {
  if (io.signal) return fn(io.signal);
  const ac = new AbortController();
  const onSig = () => {
    if (ac.signal.aborted) {
      let said: string | undefined;
      try {
        said = quit?.();
      } catch (e) {
        said = `quitting now (settling the run failed: ${(e as Error).message})`;
      }
      err(io, said ?? "quitting now");
      process.exit(130);
    }
    if (progress) progress.clear();
    else err(io);
    err(io, stopping);
    ac.abort();
  };
  process.on("SIGINT", onSig);
  running.add(ac);
  try {
    return await fn(ac.signal);
  } finally {
    running.delete(ac);
    process.off("SIGINT", onSig);
  }
}

/**
 * When the reader of `stream` goes away (EPIPE), the command ends quietly with exit code 0, as `rg` or `ls`
 * in a pipe to `head` do: what was wanted has been read. A training run in progress stops as on Ctrl-C (its
 * checkpoint is saved) and its further output is dropped.
 */
export function endOnClosedOutput(stream: NodeJS.WritableStream, exit: (code: number) => void = process.exit): void {
  let closed = false;
  stream.on("error", (e: NodeJS.ErrnoException) => {
    if (closed) return; // writes after the reader went away fail too: already handled
    if (e.code !== "EPIPE") throw e;
    closed = true;
    if (running.size === 0) {
      exit(0);
      return;
    }
    for (const ac of running) ac.abort();
  });
}
