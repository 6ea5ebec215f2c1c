// `lorakit data`'s progress while preparing: one redrawn line in a terminal, plain lines every few seconds
// otherwise (the text is the data stage's, src/data/progress-text.ts).
import { type PrepareProgress, PrepareProgressText, plainPrepareProgress } from "../data/index.js";
import type { Io } from "./io.js";

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
