// Live progress of a training run: one redrawn line in a terminal (step/total, loss, lr,
// tokens/s, ETA, memory); plain lines every `log_every` steps when not a terminal.
import type { EventOf } from "../config/schema.js";
import { colors, type Io } from "./io.js";

export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "?";
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  if (h > 0) return `${h}h${String(m).padStart(2, "0")}m`;
  if (m > 0) return `${m}m${String(sec).padStart(2, "0")}s`;
  return `${sec}s`;
}

export function formatBytes(n: number | null): string {
  if (n === null) return "-";
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
  return `${(n / (1 << 20)).toFixed(0)} MiB`;
}

function fmtLoss(x: number | null): string {
  return x === null ? "NaN" : x.toFixed(4);
}

export class Progress {
  private readonly tty: boolean;
  private drawn = false;
  private readonly c;

  constructor(
    private readonly io: Io,
    private readonly logEvery: number,
  ) {
    this.tty = Boolean(io.stdout.isTTY);
    this.c = colors(io);
  }

  step(e: EventOf<"step">): void {
    const eta = e.step > 0 ? (e.elapsed_s / e.step) * (e.total_steps - e.step) : Number.NaN;
    const stats = `loss ${fmtLoss(e.loss)}  lr ${e.lr.toExponential(2)}  ${Math.round(e.tokens_per_s).toLocaleString("en-US")} tok/s  ETA ${formatDuration(eta)}  mem ${formatBytes(e.memory_bytes)}`;
    if (this.tty) {
      const width = 24;
      const filled = Math.round((e.step / e.total_steps) * width);
      const bar = `${"█".repeat(filled)}${"░".repeat(width - filled)}`;
      this.io.stdout.write(`\r\x1b[2K${this.c.cyan(`step ${e.step}/${e.total_steps}`)} ${bar} ${stats}`);
      this.drawn = true;
    } else if (e.step % this.logEvery === 0 || e.step === e.total_steps || e.step === 1) {
      this.io.stdout.write(`step ${e.step}/${e.total_steps}  ${stats}\n`);
    }
  }

  /** A line that must not be overwritten by the bar (eval, finding, checkpoint). */
  line(text: string): void {
    if (this.tty && this.drawn) this.io.stdout.write("\r\x1b[2K");
    this.io.stdout.write(`${text}\n`);
    this.drawn = false;
  }

  end(): void {
    if (this.tty && this.drawn) this.io.stdout.write("\n");
    this.drawn = false;
  }
}
