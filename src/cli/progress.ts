// Live progress of a training run, for a person. In a terminal: one bar line, redrawn in place and cut to the
// terminal's width (read at every draw, redrawn on 'resize'), above which a summary line per log interval
// (step, loss, lr, tok/s, elapsed, memory where measured) stays in the scrollback. Not a terminal: the
// summary lines alone. Lines that must stay (evals, checkpoints, findings) go through `line`.
import type { Event, EventOf } from "../config/schema.js";
import { fmtBytes, formatDuration } from "../format.js";
import { colors, type Io } from "./io.js";

const fmtLoss = (x: number | null) => (x === null ? "NaN" : x.toFixed(4));
const fmtRate = (x: number) => `${Math.round(x).toLocaleString("en-US")} tok/s`;

const MIN_BAR = 10;
const MAX_BAR = 30;

/**
 * The bar line for a terminal of `columns`: the step, a bar of 10–30 cells and the fields that fit, in order of
 * importance. Plain text, at most `columns - 1` characters (a line that reaches the last column wraps on some
 * terminals).
 */
export function barLine(e: EventOf<"step">, columns: number, memory: string | null): string {
  const room = Math.max(1, columns - 1);
  const eta = e.step > 0 ? (e.elapsed_s / e.step) * (e.total_steps - e.step) : Number.NaN;
  const fields = [`loss ${fmtLoss(e.loss)}`, `ETA ${formatDuration(eta)}`, fmtRate(e.tokens_per_s)];
  if (memory) fields.push(memory);
  fields.push(`lr ${e.lr.toExponential(1)}`);
  const render = (n: number, bar: number) => {
    const filled = Math.round((e.step / e.total_steps) * bar);
    const drawn =
      bar > 0
        ? ` [${"█".repeat(filled)}${"░".repeat(bar - filled)}] ${Math.floor((100 * e.step) / e.total_steps)}%`
        : "";
    return [`step ${e.step}/${e.total_steps}${drawn}`, ...fields.slice(0, n)].join("  ");
  };
  const fits = (n: number, bar: number) => [...render(n, bar)].length <= room;
  for (let n = fields.length; n >= 0; n--) {
    if (fits(n, MIN_BAR)) {
      const spare = room - [...render(n, MIN_BAR)].length;
      return render(n, Math.min(MAX_BAR, MIN_BAR + spare));
    }
  }
  let n = fields.length;
  while (n > 0 && !fits(n, 0)) n--;
  return [...render(n, 0)].slice(0, room).join("");
}

/** The line that stays for a log interval: step, loss, lr, tok/s, elapsed, and memory where measured. */
export function summaryLine(e: EventOf<"step">, memory: string | null): string {
  const total = String(e.total_steps);
  return [
    `step ${String(e.step).padStart(total.length)}/${total}`,
    `loss ${fmtLoss(e.loss)}`,
    `lr ${e.lr.toExponential(2)}`,
    fmtRate(e.tokens_per_s),
    `elapsed ${formatDuration(e.elapsed_s)}`,
    ...(memory ? [memory] : []),
  ].join("  ");
}

export class Progress {
  private readonly tty: boolean;
  private readonly c;
  /** The bar as drawn last (plain text), or null when none is on screen. */
  private drawn: string | null = null;
  private last: EventOf<"step"> | null = null;
  /** What the engine's memory figure measures: GPU memory allocated, or the process's resident set. */
  private memoryLabel = "mem";
  private readonly onResize = () => this.resized();

  constructor(
    private readonly io: Io,
    private readonly logEvery: number,
  ) {
    this.tty = Boolean(io.stdout.isTTY);
    this.c = colors(io);
    if (this.tty) io.stdout.on("resize", this.onResize);
  }

  private columns(): number {
    return this.io.stdout.columns && this.io.stdout.columns > 0 ? this.io.stdout.columns : 80;
  }

  start(e: EventOf<"start">): void {
    this.memoryLabel = e.device === "cuda" ? "gpu" : "rss";
  }

  private memory(e: EventOf<"step">): string | null {
    return e.memory_bytes === null ? null : `${this.memoryLabel} ${fmtBytes(e.memory_bytes)}`;
  }

  step(e: EventOf<"step">): void {
    this.last = e;
    if (e.step % this.logEvery === 0 || e.step === e.total_steps) this.line(summaryLine(e, this.memory(e)));
    else this.draw();
  }

  /** A line that stays in the scrollback (eval, finding, checkpoint, a log interval's summary); the bar is
   * drawn again under it. */
  line(text: string): void {
    this.erase();
    this.io.stdout.write(`${text}\n`);
    this.draw();
  }

  /** Removes the bar until the next step (which draws it again). */
  clear(): void {
    this.erase();
  }

  /** Removes the bar; the summary lines stay. */
  end(): void {
    this.erase();
    this.last = null;
    if (this.tty) this.io.stdout.off("resize", this.onResize);
  }

  private draw(): void {
    if (!this.tty || !this.last) return;
    const text = barLine(this.last, this.columns(), this.memory(this.last));
    const head = `step ${this.last.step}/${this.last.total_steps}`;
    this.io.stdout.write(`\r\x1b[2K${this.c.cyan(head)}${text.slice(head.length)}`);
    this.drawn = text;
  }

  private erase(rows = 1): void {
    if (!this.tty || this.drawn === null) return;
    this.io.stdout.write(`\r\x1b[2K${"\x1b[1A\x1b[2K".repeat(rows - 1)}`);
    this.drawn = null;
  }

  /** After a resize the terminal may have re-wrapped the bar over several rows (tmux, VTE, iTerm2 and kitty
   * reflow the cursor's line): those rows are cleared before the bar is drawn at the new width. */
  private resized(): void {
    if (this.drawn === null) return;
    this.erase(Math.max(1, Math.ceil([...this.drawn].length / this.columns())));
    this.draw();
  }
}

/** What a run reached, for the line that ends it: the last step and the last checkpoint saved. */
export interface RunTrace {
  step: number;
  total: number | null;
  checkpoint: { step: number; path: string } | null;
}

/** The end of a stopped run: where it stopped, what it saved, how to go on. */
export function stoppedLine(trace: RunTrace, continueWith: string): string {
  const at = trace.total ? `at step ${trace.step} of ${trace.total}` : "before training started";
  const saved = trace.checkpoint
    ? `checkpoint of step ${trace.checkpoint.step} saved in ${trace.checkpoint.path}`
    : "nothing was saved";
  return `stopped ${at}; ${saved}; continue with: ${continueWith}`;
}

/** Prints engine events for a person: the progress display, evals, findings, checkpoints. */
export function eventPrinter(
  io: Io,
  logEvery: number,
): { onEvent: (e: Event) => void; progress: Progress; trace: RunTrace } {
  const progress = new Progress(io, logEvery);
  const trace: RunTrace = { step: 0, total: null, checkpoint: null };
  const c = colors(io);
  const onEvent = (e: Event) => {
    switch (e.type) {
      case "start":
        trace.step = e.start_step;
        trace.total = e.total_steps;
        progress.start(e);
        progress.line(
          `engine      ${e.device_name} (${e.dtype}), LoRA on ${e.lora_modules} modules, ${e.trainable_params.toLocaleString("en-US")} trainable of ${e.total_params.toLocaleString("en-US")} parameters (${((100 * e.trainable_params) / Math.max(1, e.total_params)).toFixed(3)}%)${e.start_step ? `, resuming at step ${e.start_step}` : ""}`,
        );
        break;
      case "step":
        trace.step = e.step;
        progress.step(e);
        break;
      case "eval":
        progress.line(`eval        step ${e.step}: loss ${e.loss === null ? "NaN" : e.loss.toFixed(4)}`);
        break;
      case "checkpoint":
        trace.checkpoint = { step: e.step, path: e.path };
        progress.line(c.dim(`checkpoint  step ${e.step} → ${e.path}`));
        break;
      case "finding":
        break; // printed through the road's onFinding, with the doctor's and the outputs' findings
      case "log":
        if (e.level !== "debug") progress.line(c.dim(e.message));
        break;
      case "done":
        progress.end();
        break;
      default:
        break;
    }
  };
  return { onEvent, progress, trace };
}
