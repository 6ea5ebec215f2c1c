// The real CLI as a process (`node bin/lorakit.js`, built from this tree), where a person meets it: in a
// pseudo-terminal of 80 and 160 columns (tmux), read back from the screen and its scrollback; with Ctrl-C
// pressed in that terminal; and in a pipe whose reader goes away (`| head`).
import { spawnSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../src/engine/python.js";
import { fixture, tmpDir, writeCodeWords } from "./helpers.js";

const BIN = path.join(ROOT, "bin", "lorakit.js");

function requireTmux(): void {
  const r = spawnSync("tmux", ["-V"], { encoding: "utf8" });
  if (r.status !== 0) {
    throw new Error(
      "tmux is missing: these tests drive a real pseudo-terminal through it. `npm test` installs Debian's " +
        "tmux itself where it may (scripts/tmux.mjs); otherwise install it: `apt-get install -y tmux`.",
    );
  }
}

/** One tmux server per terminal, its own socket: nothing shared with a person's tmux or another test. */
class Terminal {
  private static n = 0;
  readonly socket = `lorakit-test-${process.pid}-${Terminal.n++}`;
  private readonly socketPath: string;

  constructor(command: string, opts: { cwd: string; columns: number; rows?: number }) {
    // The command's exit code is printed after it, then the pane is kept for reading.
    this.tmux(
      "-f",
      "/dev/null",
      "new-session",
      "-d",
      "-x",
      String(opts.columns),
      "-y",
      String(opts.rows ?? 40),
      "-s",
      "t",
      "-c",
      opts.cwd,
      `${command}; echo "__exit=$?"; sleep 600`,
    );
    this.tmux("set-option", "-t", "t", "history-limit", "20000");
    this.socketPath = this.tmux("display-message", "-p", "#{socket_path}").trim();
  }

  tmux(...args: string[]): string {
    const r = spawnSync("tmux", ["-L", this.socket, ...args], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`tmux ${args.join(" ")}: ${r.stderr}`);
    return r.stdout;
  }

  /** The visible screen (rows as the terminal shows them, wrapped rows separate). */
  screen(): string {
    return this.tmux("capture-pane", "-p", "-t", "t");
  }

  /** Everything written, scrollback included, with wrapped rows joined into their lines. */
  text(): string {
    return this.tmux("capture-pane", "-p", "-J", "-t", "t", "-S", "-", "-E", "-");
  }

  /** Everything written, scrollback included, one terminal row per line. */
  rows(): string[] {
    return this.tmux("capture-pane", "-p", "-t", "t", "-S", "-", "-E", "-").split("\n");
  }

  async waitFor(test: (screen: string) => boolean, what: string, timeoutMs = 180_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      if (test(this.screen())) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`timed out waiting for ${what}; screen:\n${this.screen()}`);
  }

  async exitCode(): Promise<number> {
    await this.waitFor((s) => /__exit=\d+/.test(s), "the command to end");
    return Number(/__exit=(\d+)/.exec(this.screen())?.[1]);
  }

  /** Processes under the pane's shell whose command line contains `needle`. */
  processes(needle: string): number[] {
    const shell = Number(this.tmux("display-message", "-p", "-t", "t", "#{pane_pid}").trim());
    const table = spawnSync("ps", ["-eo", "pid=,ppid=,args="], { encoding: "utf8" })
      .stdout.trim()
      .split("\n")
      .map((l) => /^\s*(\d+)\s+(\d+)\s+(.*)$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => ({ pid: Number(m[1]), ppid: Number(m[2]), args: m[3] as string }));
    const mine = new Set([shell]);
    for (let grew = true; grew; ) {
      grew = false;
      for (const p of table)
        if (mine.has(p.ppid) && !mine.has(p.pid)) {
          mine.add(p.pid);
          grew = true;
        }
    }
    return table.filter((p) => mine.has(p.pid) && p.args.includes(needle)).map((p) => p.pid);
  }

  close(): void {
    spawnSync("tmux", ["-L", this.socket, "kill-server"]);
    rmSync(this.socketPath, { force: true });
  }
}

/** A run of 64 short steps on the tiny Llama, a summary line every 16. */
function writeLongRun(dir: string): void {
  writeCodeWords(dir);
  const cfg = {
    model: fixture("models", "tiny-llama"),
    data: { train: "train.json", eval_split: 0.2, system: "You are terse.", max_length: 96 },
    lora: { r: 4, alpha: 8, dropout: 0.1 },
    train: { epochs: 8, batch_size: 2, grad_accum: 1, lr: 5e-3, log_every: 16, save_every: 32, eval_every: 32 },
    samples: { count: 2, max_new_tokens: 4 },
  };
  writeFileSync(path.join(dir, "run.yaml"), JSON.stringify(cfg, null, 1));
}

// bin/lorakit.js runs dist/: built from this tree first, so that the tests see the code under test.
beforeAll(() => {
  const b = spawnSync(path.join(ROOT, "node_modules", ".bin", "tsc"), ["-p", "tsconfig.build.json"], {
    cwd: ROOT,
    encoding: "utf8",
  });
  if (b.status !== 0) throw new Error(`npm run build failed:\n${b.stdout}${b.stderr}`);
});

/** A whole training run on a shared 2-core machine: more than vitest's default 120 s at times. */
const RUN_TIMEOUT = 400_000;

const BAR = /[█░]/;
const SUMMARY = /^step +(\d+)\/64 {2}loss \d/;

/** What a finished run left in the terminal: no bar or piece of one, one summary line per log interval. */
function expectCleanScrollback(rows: string[], columns: number): void {
  const text = rows.join("\n");
  expect(
    rows.filter((r) => BAR.test(r)),
    `bar fragments left behind:\n${text}`,
  ).toEqual([]);
  expect(text).not.toContain("mem -");
  const summaries = rows.filter((r) => SUMMARY.test(r));
  expect(
    summaries.map((r) => Number(SUMMARY.exec(r)?.[1])),
    text,
  ).toEqual([16, 32, 48, 64]);
  for (const s of summaries) {
    expect(s.length).toBeLessThan(columns);
    // elapsed as formatDuration writes it (5s, 1m01s, 1h05m); memory as measured
    expect(s).toMatch(/lr \d\.\d\de-\d {2}[\d,]+ tok\/s {2}elapsed (\d+h\d\dm|\d+m\d\ds|\d+s) {2}rss \d+ MiB$/);
  }
}

describe("the CLI in a terminal", () => {
  beforeAll(requireTmux);

  for (const columns of [80, 160]) {
    it(
      `${columns} columns: the bar fits, a summary line per log interval stays, nothing wraps`,
      async () => {
        const dir = tmpDir();
        writeLongRun(dir);
        const term = new Terminal(`node ${BIN} train run.yaml --no-smoke`, { cwd: dir, columns });
        try {
          await term.waitFor((s) => BAR.test(s), "the progress bar");
          const bar = term
            .screen()
            .split("\n")
            .filter((r) => BAR.test(r));
          expect(bar).toHaveLength(1); // one row: it fits
          expect(bar[0]).toMatch(/^step \d+\/64 \[[█░]{10,30}\] \d+% {2}loss /);
          expect(bar[0]?.length).toBeLessThan(columns);
          expect(await term.exitCode()).toBe(0);
          expectCleanScrollback(term.rows(), columns);
        } finally {
          term.close();
        }
      },
      RUN_TIMEOUT,
    );
  }

  it(
    "a terminal narrowed from 160 to 80 columns during the run: the bar follows, no piece of the wide one stays",
    async () => {
      const dir = tmpDir();
      writeLongRun(dir);
      const term = new Terminal(`node ${BIN} train run.yaml --no-smoke`, { cwd: dir, columns: 160 });
      try {
        await term.waitFor((s) => /\] \d+% {2}loss .* lr \d/.test(s), "the wide bar, lr shown");
        term.tmux("resize-window", "-t", "t", "-x", "80");
        await term.waitFor(
          (s) => s.split("\n").some((r) => BAR.test(r) && r.length < 80 && !/ lr \d/.test(r)),
          "the bar redrawn at 80 columns",
        );
        expect(await term.exitCode()).toBe(0);
        expectCleanScrollback(term.rows(), 80);
      } finally {
        term.close();
      }
    },
    RUN_TIMEOUT,
  );

  it(
    "Ctrl-C during the checks says stopped, not that the model check failed",
    async () => {
      const dir = tmpDir();
      writeLongRun(dir);
      const term = new Terminal(`node ${BIN} train run.yaml`, { cwd: dir, columns: 120 });
      try {
        const until = Date.now() + 180_000;
        while (term.processes("lorakit_engine.inspect_model").length === 0) {
          if (Date.now() > until || /__exit=/.test(term.screen()))
            throw new Error(`no model check seen:\n${term.screen()}`);
          await new Promise((r) => setTimeout(r, 50));
        }
        term.tmux("send-keys", "-t", "t", "C-c");
        expect(await term.exitCode()).toBe(130);
        const text = term.rows().join("\n");
        expect(text).toContain("stopped (Ctrl-C) during the checks");
        expect(text).not.toContain("MODEL_INSPECT_FAILED");
        expect(text).not.toContain("check the model folder");
      } finally {
        term.close();
      }
    },
    RUN_TIMEOUT,
  );

  it(
    "Ctrl-C during training stops, and says which step it reached and what it saved",
    async () => {
      const dir = tmpDir();
      writeLongRun(dir);
      const term = new Terminal(`node ${BIN} train run.yaml --no-smoke`, { cwd: dir, columns: 120 });
      try {
        await term.waitFor((s) => BAR.test(s), "the progress bar");
        term.tmux("send-keys", "-t", "t", "C-c");
        expect(await term.exitCode()).toBe(130);
        const text = term.text();
        const m =
          /stopped at step (\d+) of 64; checkpoint of step (\d+) saved in (\S+); continue with: lorakit train run\.yaml --resume/.exec(
            text,
          );
        expect(m, text).not.toBeNull();
        expect(m?.[2]).toBe(m?.[1]); // the step it stopped at is the step saved
        expect(m?.[3]).toBe(path.join(dir, "runs", "run", "checkpoints", `step-${m?.[1]}`));
        expect(text).not.toMatch(BAR);
      } finally {
        term.close();
      }
    },
    RUN_TIMEOUT,
  );
});

describe("the CLI in a pipe whose reader goes away", () => {
  /** Runs `lorakit <args> | head -n <n>` in bash: lorakit's exit status, its stderr, what head printed. */
  function piped(args: string[], n: number, cwd: string) {
    const quoted = args.map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" ");
    const r = spawnSync(
      "bash",
      ["-c", `node ${BIN} ${quoted} 2>"$ERR" | head -n ${n}; echo "__status=\${PIPESTATUS[0]}"`],
      { cwd, encoding: "utf8", env: { ...process.env, ERR: path.join(cwd, "stderr.txt") } },
    );
    const status = Number(/__status=(\d+)/.exec(r.stdout)?.[1]);
    const stderr = spawnSync("cat", [path.join(cwd, "stderr.txt")], { encoding: "utf8" }).stdout;
    return { status, stderr, lines: r.stdout.split("\n").filter((l) => l && !l.startsWith("__status")) };
  }

  it("`lorakit tokenize … | head -2` ends quietly with exit 0", () => {
    const dir = tmpDir();
    const r = piped(["tokenize", "--model", fixture("models", "tiny-llama"), "hello world ".repeat(2000)], 2, dir);
    expect(r.lines).toHaveLength(2);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
  });

  it("`lorakit data … | head -2` ends quietly with exit 0", () => {
    const dir = tmpDir();
    // More output than a pipe holds (64 KiB), so that lorakit is still writing when head has gone.
    const long = (i: number) => Array.from({ length: 300 }, (_, k) => `word${(i * 7 + k) % 97}`).join(" ");
    const records = Array.from({ length: 20 }, (_, i) => ({ instruction: `Repeat ${i}.`, input: "", output: long(i) }));
    writeFileSync(path.join(dir, "train.json"), JSON.stringify(records));
    writeFileSync(
      path.join(dir, "run.yaml"),
      JSON.stringify({ model: fixture("models", "tiny-llama"), data: { train: "train.json", max_length: 4096 } }),
    );
    const r = piped(["data", "run.yaml", "--show", "20"], 2, dir);
    expect(r.lines).toHaveLength(2);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
  });
});
