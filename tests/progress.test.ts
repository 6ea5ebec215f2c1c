// The progress display's lines, in-process: the bar fits any width, and without a terminal the output is
// plain summary lines, one per log interval (the terminal itself is in cli-process.test.ts).
import { PassThrough } from "node:stream";
import { describe, expect, it } from "vitest";
import type { Io } from "../src/cli/io.js";
import { barLine, eventPrinter, summaryLine } from "../src/cli/progress.js";
import type { EventOf } from "../src/config/schema.js";

function stepEvent(step: number, total: number, over: Partial<EventOf<"step">> = {}): EventOf<"step"> {
  return {
    type: "step",
    step,
    total_steps: total,
    epoch: step / total,
    loss: 2.3456,
    lr: 2e-4,
    grad_norm: 1,
    tokens: 100,
    tokens_per_s: 12_345.6,
    elapsed_s: 3 * step,
    memory_bytes: 3 * 2 ** 30,
    ...over,
  };
}

describe("the bar line", () => {
  it("is never wider than the terminal less one column, from 1 to 300 columns", () => {
    const events = [stepEvent(1, 3), stepEvent(12_345, 99_999, { tokens_per_s: 9e6, memory_bytes: 2 ** 40 })];
    for (const e of events)
      for (let columns = 1; columns <= 300; columns++) {
        for (const memory of [null, "gpu 1024.0 GiB"]) {
          const line = barLine(e, columns, memory);
          expect([...line].length, `${columns}: ${line}`).toBeLessThanOrEqual(Math.max(1, columns - 1));
        }
      }
  });

  it("keeps the step, the bar, loss and ETA at 80 columns, and shows everything at 160", () => {
    const e = stepEvent(120, 300);
    const narrow = barLine(e, 80, "rss 512 MiB");
    expect(narrow).toMatch(/^step 120\/300 \[█+░+\] 40% {2}loss 2\.3456 {2}ETA 9m00s/);
    const wide = barLine(e, 160, "rss 512 MiB");
    expect(wide).toContain("12,346 tok/s");
    expect(wide).toContain("rss 512 MiB");
    expect(wide).toContain("lr 2.0e-4");
    expect(wide).toMatch(/\[[█░]{30}\]/);
  });

  it("shows memory only where it is measured", () => {
    const e = stepEvent(5, 10, { memory_bytes: null });
    expect(summaryLine(e, null)).not.toMatch(/mem|rss|gpu/);
    expect(barLine(e, 200, null)).not.toMatch(/mem|rss|gpu/);
  });
});

describe("without a terminal", () => {
  it("one plain summary line per log interval and at the end; no bar, no control characters", () => {
    const stdout = new PassThrough();
    let text = "";
    stdout.on("data", (d) => {
      text += d;
    });
    const io: Io = { stdout, stderr: new PassThrough(), stdin: new PassThrough(), env: {}, cwd: "/" };
    const { onEvent } = eventPrinter(io, 4);
    onEvent({
      type: "start",
      device: "cpu",
      device_name: "cpu",
      dtype: "float32",
      total_steps: 10,
      start_step: 0,
      trainable_params: 10,
      total_params: 100,
      lora_modules: 2,
    });
    for (let s = 1; s <= 10; s++) onEvent(stepEvent(s, 10));
    onEvent({ type: "eval", step: 10, loss: 2, tokens: 5 });
    expect(text).not.toMatch(/[\r\x1b█░]/);
    const lines = text.trimEnd().split("\n");
    expect(lines.filter((l) => l.startsWith("step"))).toEqual([
      "step  4/10  loss 2.3456  lr 2.00e-4  12,346 tok/s  elapsed 12s  rss 3.0 GiB",
      "step  8/10  loss 2.3456  lr 2.00e-4  12,346 tok/s  elapsed 24s  rss 3.0 GiB",
      "step 10/10  loss 2.3456  lr 2.00e-4  12,346 tok/s  elapsed 30s  rss 3.0 GiB",
    ]);
    expect(lines.at(-1)).toBe("eval        step 10: loss 2.0000");
  });
});
