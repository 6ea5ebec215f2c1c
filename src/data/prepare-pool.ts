// Where batches run: on the main thread, or spread over worker threads (one per core). Either way a
// batch's result comes back as a promise; the caller awaits them in the order it sent them, so the
// output is in file order whatever finishes first.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import { type BatchResult, type BatchSettings, processBatch } from "./prepare-batch.js";
import type { WorkerInit, WorkerReply } from "./prepare-worker.js";
import type { RecordBatch } from "./read.js";
import type { ChatTemplate } from "./template.js";

export interface BatchRunner {
  /** Threads that run batches (0: the main thread does). */
  readonly workers: number;
  run(batch: RecordBatch, wantPrompts: boolean): Promise<BatchResult>;
  close(): Promise<void>;
}

export function inThread(settings: BatchSettings, template: ChatTemplate): BatchRunner {
  return {
    workers: 0,
    run: async (batch, wantPrompts) => processBatch(batch, settings, template, wantPrompts),
    close: async () => {},
  };
}

/** The compiled worker beside this module (absent when running from the TypeScript sources). */
export const defaultWorkerScript = (): URL => new URL("./prepare-worker.js", import.meta.url);

interface Pending {
  resolve: (r: BatchResult) => void;
  reject: (e: Error) => void;
  worker: number;
}

/**
 * `n` workers, each loading the tokenizer and template once. Undefined when the worker script is not
 * there or a worker cannot start (the caller then runs batches on the main thread).
 */
export async function workerPool(
  n: number,
  script: URL | string,
  init: Omit<WorkerInit, "type">,
): Promise<BatchRunner | undefined> {
  const file = script instanceof URL ? fileURLToPath(script) : script;
  if (n < 1 || !existsSync(file)) return undefined;
  const workers: Worker[] = [];
  const load: number[] = [];
  const pending = new Map<number, Pending>();
  let seq = 0;
  let failure: Error | undefined;
  const fail = (e: Error) => {
    failure ??= e;
    for (const p of pending.values()) p.reject(e);
    pending.clear();
  };
  const close = async () => {
    await Promise.all(workers.map((w) => w.terminate()));
  };
  try {
    await Promise.all(
      Array.from({ length: n }, (_, i) => {
        const w = new Worker(file);
        workers.push(w);
        load.push(0);
        return new Promise<void>((resolve, reject) => {
          const onReady = (m: WorkerReply) => {
            w.off("message", onReady);
            if (m.type === "ready") resolve();
            else reject(new Error(m.type === "error" ? m.message : "unexpected reply"));
          };
          w.on("message", onReady);
          w.once("error", reject);
          w.postMessage({ type: "init", ...init } satisfies WorkerInit);
        }).then(() => {
          w.on("message", (m: WorkerReply) => {
            if (m.type === "ready") return;
            const p = m.seq === undefined ? undefined : pending.get(m.seq);
            if (m.type === "error") {
              fail(new Error(`a preparation worker failed: ${m.message}`));
              return;
            }
            if (!p) return;
            pending.delete(m.seq);
            load[i] = (load[i] as number) - 1;
            p.resolve(m.result);
          });
          w.on("error", (e) => fail(e));
          w.on("exit", (code) => {
            if (code !== 0) fail(new Error(`a preparation worker exited with code ${code}`));
          });
        });
      }),
    );
  } catch {
    await close();
    return undefined;
  }
  return {
    workers: n,
    run(batch, wantPrompts) {
      if (failure) return Promise.reject(failure);
      let best = 0;
      for (let i = 1; i < n; i++) if ((load[i] as number) < (load[best] as number)) best = i;
      load[best] = (load[best] as number) + 1;
      const id = seq++;
      return new Promise<BatchResult>((resolve, reject) => {
        pending.set(id, { resolve, reject, worker: best });
        (workers[best] as Worker).postMessage({ type: "job", seq: id, batch, wantPrompts }, [
          batch.bytes.buffer as ArrayBuffer,
          batch.spans.buffer as ArrayBuffer,
        ]);
      });
    },
    close,
  };
}
