// Progress of data preparation as text (prepareDataset's `onProgress`): samples, bytes read of the total,
// samples/s, ETA. Plain lines at most every few seconds serve the train road's log; `lorakit data` redraws
// one line in a terminal (src/cli/data-progress.ts). A preparation shorter than the interval prints no line.
import { fmtBytes, formatDuration } from "../format.js";
import type { PrepareProgress } from "./prepare.js";

const n = (x: number) => Math.round(x).toLocaleString("en-US");

/** Turns progress reports into text; rates are taken from the start of the preparation pass. */
export class PrepareProgressText {
  private started: { t: number; bytes: number; records: number } | undefined;

  format(p: PrepareProgress): string {
    const of = `${fmtBytes(p.bytes)} of ${fmtBytes(p.totalBytes)}`;
    const pct = p.totalBytes > 0 ? ` (${((100 * p.bytes) / p.totalBytes).toFixed(0)}%)` : "";
    if (p.phase === "hash") return `data        hashing ${of}${pct}`;
    if (p.phase === "write")
      return `data        writing tokens.safetensors and manifest.json (${n(p.records)} samples)`;
    this.started ??= { t: p.elapsedS, bytes: p.bytes, records: p.records };
    const dt = p.elapsedS - this.started.t;
    const rate = dt > 0 ? (p.records - this.started.records) / dt : 0;
    const bytesRate = dt > 0 ? (p.bytes - this.started.bytes) / dt : 0;
    const eta = bytesRate > 0 ? formatDuration((p.totalBytes - p.bytes) / bytesRate) : "?";
    const threads = p.workers > 0 ? `, ${p.workers} workers` : "";
    return `data        preparing ${n(p.records)} samples, ${of}${pct}, ${n(rate)} samples/s, ETA ${eta}${threads}`;
  }
}

/** Plain lines through `log`, at most one every `everyS` seconds (the train road's default). */
export function plainPrepareProgress(log: (line: string) => void, everyS = 10): (p: PrepareProgress) => void {
  const text = new PrepareProgressText();
  let next = everyS;
  return (p) => {
    const line = text.format(p);
    if (p.elapsedS < next) return;
    next = p.elapsedS + everyS;
    log(line);
  };
}
