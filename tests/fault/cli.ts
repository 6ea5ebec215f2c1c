// The lorakit CLI as a real process for the fault tests: built from this tree's sources into one file (so that
// no other test's `npm run build` changes it under a running process), started with the test preload
// (tests/fault/preload.mjs: kill -9 at an exact point) and the engine's fault fixture on PYTHONPATH
// (engine/tests/fixtures/fault: kill -9 or hold inside the engine); its output read as it comes.
import { type ChildProcess, spawn } from "node:child_process";
import path from "node:path";
import { ENGINE_DIR, ROOT } from "../../src/engine/python.js";
import { bundleForNode } from "../bundle.js";

export const PRELOAD = path.join(ROOT, "tests", "fault", "preload.mjs");
export const ENGINE_FAULT = path.join(ENGINE_DIR, "tests", "fixtures", "fault");

/**
 * bin/lorakit.js over the sources, bundled to tests/.fixtures/<name>.mjs: two folders below the repository
 * root, as dist/cli/main.js is, so that the modules that find the repository from their own URL find it.
 */
export async function buildCli(name: string): Promise<string> {
  return bundleForNode(
    {
      contents: [
        'import { endOnClosedOutput, main } from "./src/cli/main.ts";',
        "endOnClosedOutput(process.stdout);",
        "process.exitCode = await main(process.argv.slice(2), {",
        "  stdout: process.stdout, stderr: process.stderr, stdin: process.stdin, env: process.env, cwd: process.cwd(),",
        "});",
      ].join("\n"),
      resolveDir: ROOT,
      loader: "ts",
      sourcefile: "lorakit-test-cli.ts",
    },
    path.join(ROOT, "tests", ".fixtures", `${name}.mjs`),
  );
}

export interface Ended {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class Lorakit {
  readonly child: ChildProcess;
  stdout = "";
  stderr = "";
  readonly ended: Promise<Ended>;
  private waiters: (() => void)[] = [];

  constructor(cli: string, args: string[], opts: { cwd: string; env?: Record<string, string> }) {
    this.child = spawn(process.execPath, ["--import", PRELOAD, cli, ...args], {
      cwd: opts.cwd,
      env: { ...process.env, PYTHONPATH: ENGINE_FAULT, NO_COLOR: "1", ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const wake = () => {
      for (const w of this.waiters.splice(0)) w();
    };
    this.child.stdout?.on("data", (d) => {
      this.stdout += d;
      wake();
    });
    this.child.stderr?.on("data", (d) => {
      this.stderr += d;
      wake();
    });
    this.ended = new Promise((resolve) => {
      this.child.on("close", (code, signal) => {
        resolve({ code, signal });
        wake();
      });
    });
  }

  get pid(): number {
    return this.child.pid as number;
  }

  get output(): string {
    return `${this.stdout}${this.stderr}`;
  }

  /** Resolves once the output matches `re`; rejects when the process ends first. */
  async waitFor(re: RegExp, what: string): Promise<RegExpExecArray> {
    let done = false;
    void this.ended.then(() => {
      done = true;
    });
    for (;;) {
      const m = re.exec(this.output);
      if (m) return m;
      if (done || this.child.exitCode !== null || this.child.signalCode !== null) {
        await this.ended;
        const again = re.exec(this.output);
        if (again) return again;
        throw new Error(`lorakit ended before ${what}:\n${this.output}`);
      }
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }
}

/** Runs lorakit to its end. */
export async function runLorakit(
  cli: string,
  args: string[],
  opts: { cwd: string; env?: Record<string, string> },
): Promise<Ended & { stdout: string; stderr: string; output: string }> {
  const p = new Lorakit(cli, args, opts);
  const end = await p.ended;
  return { ...end, stdout: p.stdout, stderr: p.stderr, output: p.output };
}
