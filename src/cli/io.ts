// Injectable I/O: every command takes argv and streams, so the CLI is tested in-process.
import path from "node:path";
import type { Readable, Writable } from "node:stream";
import { expandHome } from "../config/load.js";

export interface Io {
  stdout: Writable & { isTTY?: boolean; columns?: number };
  stderr: Writable & { isTTY?: boolean };
  stdin: Readable;
  env: NodeJS.ProcessEnv;
  cwd: string;
  /** Aborted on Ctrl-C; long commands stop cleanly when it fires. */
  signal?: AbortSignal;
}

export function out(io: Io, text = ""): void {
  io.stdout.write(`${text}\n`);
}

export function err(io: Io, text = ""): void {
  io.stderr.write(`${text}\n`);
}

/** Colour only for a terminal, and never when NO_COLOR is set. */
export function colors(io: Io, stream: "stdout" | "stderr" = "stdout") {
  const on = Boolean(io[stream].isTTY) && !io.env.NO_COLOR;
  const wrap = (code: number) => (s: string) => (on ? `\x1b[${code}m${s}\x1b[0m` : s);
  return { green: wrap(32), red: wrap(31), yellow: wrap(33), dim: wrap(2), bold: wrap(1), cyan: wrap(36), on };
}

/** A path given on the command line, absolute: `~` is the home folder, a relative path is from the cwd. */
export function userPath(io: Io, p: string): string {
  return path.resolve(io.cwd, expandHome(p, io.env));
}
