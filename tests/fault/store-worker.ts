// A separate process for the concurrency tests (tests/runs-store.test.ts), bundled and started several times at
// once. `store <db> <run> <steps> <start-ms>`: from the agreed instant on, one run written step by step through
// the real RunStore, reopened now and then. `lock <run-dir> <start-ms>`: take the run's lock, hold it a moment.
// It prints one line: `ok`, `won`, or the error's code and message.
import { RunLock } from "../../src/runs/lock.js";
import { RunStore } from "../../src/runs/store.js";

const [mode, target, ...rest] = process.argv.slice(2);

function waitUntil(at: number): void {
  while (Date.now() < at) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Math.min(5, at - Date.now()));
}

try {
  if (mode === "store") {
    const [name, steps, start] = rest as [string, string, string];
    waitUntil(Number(start));
    let store = new RunStore(target as string);
    let run = store.openRun(name, JSON.stringify({ name }), { resume: false });
    for (let step = 1; step <= Number(steps); step++) {
      store.record(run.id, {
        type: "step",
        step,
        total_steps: Number(steps),
        epoch: 0,
        loss: 1 / step,
        lr: 1e-4,
        grad_norm: 1,
        tokens: 10,
        tokens_per_s: 100,
        elapsed_s: step,
        memory_bytes: null,
      });
      if (step % 25 === 0) {
        store.addSample(run.id, { phase: "after", idx: step, prompt: "p", output: "o", reference: null, stopped: 1 });
        store.close(); // another process's view of a store opened again and again
        store = new RunStore(target as string);
        run = store.openRun(name, "{}", { resume: true });
      }
    }
    store.finish(run.id, "completed");
    store.close();
    console.log("ok");
  } else if (mode === "lock") {
    waitUntil(Number(rest[0]));
    const lock = RunLock.acquire(target as string, "run", { command: "store-worker lock", log: () => {} });
    console.log("won");
    waitUntil(Date.now() + 500);
    lock.release();
  }
} catch (e) {
  const err = e as { code?: string; message?: string };
  console.log(`${err.code ?? "ERROR"} ${err.message}`);
}
