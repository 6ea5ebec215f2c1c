// Progress of data preparation (prepareDataset's `onProgress`): in a terminal one redrawn line —
// samples, bytes read of the total, samples/s, ETA — and plain lines every few seconds otherwise, like
// the training progress in progress.ts (whose formatDuration and formatBytes it borrows, nothing else).
// A preparation shorter than the interval prints no plain line at all: the summary line follows anyway.
import type { PrepareProgress } from "../data/prepare.js";
import type { Io } from "./io.js";
import { formatBytes, formatDuration } from "./progress.js";

const n = (x: number) => Math.round(x).toLocaleString("en-US");

/** Turns progress reports into text; rates are taken from the start of the preparation pass. */
export class PrepareProgressText {
  private started: { t: number; bytes: number; records: number } | undefined;

  format(p: PrepareProgress): string {
    const of = `${formatBytes(p.bytes)} of ${formatBytes(p.totalBytes)}`;
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

/** `lorakit data`: one redrawn line in a terminal, plain lines every `everyS` seconds otherwise. */
export class DataProgress {
  private readonly text = new PrepareProgressText();
  private readonly plain: (p: PrepareProgress) => void;
  private drawn = false;

  constructor(
    private readonly io: Io,
    everyS = 5,
  ) {
    this.plain = plainPrepareProgress((l) => io.stdout.write(`${l}\n`), everyS);
  }

  readonly update = (p: PrepareProgress): void => {
    if (!this.io.stdout.isTTY) {
      this.plain(p);
      return;
    }
    this.io.stdout.write(`\r\x1b[2K${this.text.format(p)}`);
    this.drawn = true;
  };

  /** Clears the line before the next output. */
  end(): void {
    if (this.drawn) this.io.stdout.write("\r\x1b[2K");
    this.drawn = false;
  }
}
