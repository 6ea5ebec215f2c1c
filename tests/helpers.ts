// Shared by the TypeScript tests: in-process CLI runs with captured streams, temp dirs, fixtures.
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import type { Io } from "../src/cli/io.js";
import { main } from "../src/cli/main.js";
import { ROOT } from "../src/engine/python.js";

export const FIXTURES = path.join(ROOT, "tests", ".fixtures");
export const fixture = (...p: string[]) => path.join(FIXTURES, ...p);

export function tmpDir(prefix = "lorakit-test-"): string {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function runCli(
  argv: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; signal?: AbortSignal } = {},
): Promise<CliResult> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let o = "";
  let e = "";
  stdout.on("data", (d) => {
    o += d;
  });
  stderr.on("data", (d) => {
    e += d;
  });
  const io: Io = {
    stdout,
    stderr,
    stdin: new PassThrough(),
    env: { ...process.env, ...opts.env },
    cwd: opts.cwd ?? process.cwd(),
    signal: opts.signal,
  };
  const code = await main(argv, io);
  return { code, stdout: o, stderr: e };
}
