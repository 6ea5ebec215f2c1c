// A preparation worker (a worker_threads thread): loads the checkpoint's tokenizer and the chat template
// itself, checks they are the ones the main thread uses (same tokenizer hash, same template text), then
// runs batches (prepare-batch.ts) as they come and posts each result back with its sequence number.
import { parentPort } from "node:worker_threads";
import { type BatchResult, type BatchSettings, processBatch } from "./prepare-batch.js";
import type { RecordBatch } from "./read.js";
import { type ChatTemplate, chooseTemplate, type TemplateOption } from "./template.js";
import { loadTokenizer } from "./tokenizer.js";

export interface WorkerInit {
  type: "init";
  settings: BatchSettings;
  modelDir: string;
  modelType?: string;
  template: TemplateOption;
  tokenizerHash: string;
  templateSource: string;
}

export interface WorkerJob {
  type: "job";
  seq: number;
  batch: RecordBatch;
  wantPrompts: boolean;
}

export type WorkerReply =
  | { type: "ready" }
  | { type: "result"; seq: number; result: BatchResult }
  | { type: "error"; seq?: number; message: string };

const port = parentPort;
if (port) {
  let settings: BatchSettings | undefined;
  let template: ChatTemplate | undefined;
  const reply = (m: WorkerReply, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);
  port.on("message", async (m: WorkerInit | WorkerJob) => {
    try {
      if (m.type === "init") {
        const tokenizer = await loadTokenizer(m.modelDir);
        if (tokenizer.hash !== m.tokenizerHash) throw new Error("the tokenizer files changed while preparing");
        template = chooseTemplate({
          template: m.template,
          tokenizer,
          modelDir: m.modelDir,
          ...(m.modelType !== undefined ? { modelType: m.modelType } : {}),
        });
        if (template.source !== m.templateSource) throw new Error("the chat template changed while preparing");
        settings = m.settings;
        reply({ type: "ready" });
        return;
      }
      if (!settings || !template) throw new Error("a job before init");
      const result = processBatch(m.batch, settings, template, m.wantPrompts);
      reply({ type: "result", seq: m.seq, result }, [
        result.ids.buffer as ArrayBuffer,
        result.labels.buffer as ArrayBuffer,
      ]);
    } catch (e) {
      reply({ type: "error", ...(m.type === "job" ? { seq: m.seq } : {}), message: (e as Error).stack ?? String(e) });
    }
  });
}
