// The lorakit command line: one file per command under src/cli/, each a `Command` (src/cli/command.ts),
// dispatched from here. Nothing imports this module but the entry point and the tests.
import { Writable } from "node:stream";
import { formatError, LorakitError, nearest, usageError } from "../errors.js";
import { findingsOfError, stageOf } from "../findings/index.js";
import { type Command, parseCommandArgs, renderHelp, usageLine } from "./command.js";
import { toJson } from "./findings-view.js";
import { err, type Io, out } from "./io.js";

export { endOnClosedOutput } from "./interrupt.js";

// biome-ignore lint/suspicious/noExplicitAny: each command has its own option types
type AnyCommand = Command<any>;

const COMMANDS: Record<string, () => Promise<AnyCommand>> = {
  train: async () => (await import("./train.js")).command,
  demo: async () => (await import("./demo.js")).command,
  compare: async () => (await import("./compare.js")).command,
  tokenize: async () => (await import("./tokenize.js")).command,
  data: async () => (await import("./data.js")).command,
  protocol: async () => (await import("./protocol.js")).command,
  env: async () => (await import("./env.js")).command,
  doctor: async () => (await import("./doctor.js")).command,
};

export const VERSION = "0.1.0";

async function help(io: Io): Promise<void> {
  out(io, `lorakit ${VERSION} — LoRA fine-tuning of chat LLMs that tells you why a run went wrong\n`);
  out(io, "usage: lorakit <command> [options]\n\ncommands:");
  for (const [name, load] of Object.entries(COMMANDS)) {
    const c = await load();
    out(io, `  ${name.padEnd(10)} ${c.summary}`);
  }
  out(io, "\n`lorakit <command> --help` explains a command's options, with examples.");
}

/** `--json` among a command's arguments (before a `--`): every outcome is then one JSON document on stdout. */
export function wantsJson(args: readonly string[]): boolean {
  const end = args.indexOf("--");
  return (end < 0 ? args : args.slice(0, end)).includes("--json");
}

/** Runs one command line; returns the exit code (0 ok, 1 the work failed, 2 a wrong command line, 130 stopped). */
export async function main(argv: string[], io: Io): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "help" || name === "--help" || name === "-h") {
    const topic = name === "help" && rest[0] ? COMMANDS[rest[0]] : undefined;
    if (topic) {
      out(io, renderHelp(await topic(), io.stdout.columns).trimEnd());
      return 0;
    }
    await help(io);
    return name ? 0 : 2;
  }
  if (name === "--version" || name === "-V") {
    out(io, VERSION);
    return 0;
  }
  const json = wantsJson(rest);
  const load = COMMANDS[name];
  if (!load) {
    const guess = nearest(name, Object.keys(COMMANDS));
    const message = `unknown command '${name}'${guess ? ` — did you mean '${guess}'?` : ""}`;
    if (json)
      return answerError(io, name, usageError(message, "lorakit <command> [options]; `lorakit help` lists them"));
    err(io, `error: ${message}`);
    err(io, "run `lorakit help` for the list of commands");
    return 2;
  }
  const command = await load();
  const beforeTerminator = rest.includes("--") ? rest.slice(0, rest.indexOf("--")) : rest;
  if (beforeTerminator.includes("--help") || beforeTerminator.includes("-h")) {
    out(io, renderHelp(command, io.stdout.columns).trimEnd());
    return 0;
  }
  if (json) return runJson(command, name, rest, io);
  try {
    return await command.run(parseCommandArgs(command, rest), io);
  } catch (e) {
    if (!(e instanceof LorakitError)) throw e;
    if (e.code === "INTERRUPTED") {
      err(io, `${e.message}${e.hint ? ` — ${e.hint}` : ""}`); // Ctrl-C: not an error of the run's
    } else {
      err(io, formatError(e));
      if (e.code === "CLI_BAD_ARGS" && e.exitCode === 2) err(io, `usage: ${usageLine(command)}`);
    }
    return e.exitCode;
  }
}

/** The `{findings, summary}` document for an error that ended a command; returns its exit code. */
function answerError(io: Io, command: string, e: LorakitError): number {
  out(io, JSON.stringify(toJson(findingsOfError(e), { command }), null, 2));
  return e.exitCode;
}

/**
 * A command run with `--json`: its stdout is held back and printed only when it succeeds, so that an
 * error (a wrong command line, a LorakitError, a bug, Ctrl-C) answers with one `{findings, summary}`
 * document instead — never plain text, never two documents.
 */
export async function runJson(command: AnyCommand, name: string, args: string[], io: Io): Promise<number> {
  let held = "";
  let open = true;
  const stdout = Object.assign(
    new Writable({
      write(chunk, _enc, done) {
        if (open) held += String(chunk);
        done();
      },
    }),
    { isTTY: false },
  );
  const interrupt = new AbortController();
  const outer = io.signal;
  const onSigint = () => interrupt.abort();
  // Without a caller's signal (the real command line), Ctrl-C is caught here so it answers in JSON too.
  if (!outer) process.once("SIGINT", onSigint);
  else if (outer.aborted) interrupt.abort();
  else outer.addEventListener("abort", onSigint, { once: true });
  const stopped = new Promise<"interrupted">((resolve) => {
    if (interrupt.signal.aborted) resolve("interrupted");
    interrupt.signal.addEventListener("abort", () => resolve("interrupted"), { once: true });
  });
  try {
    // Stopped before it began: the command does not start at all.
    const ran = interrupt.signal.aborted
      ? stopped
      : command.run(parseCommandArgs(command, args), { ...io, stdout, signal: interrupt.signal });
    ran.catch(() => {}); // after Ctrl-C its outcome no longer matters
    const result = await Promise.race([ran, stopped]);
    open = false;
    if (result === "interrupted") {
      const code = answerError(
        io,
        name,
        new LorakitError("INTERRUPTED", `lorakit ${name} was stopped (Ctrl-C) before it finished`, {
          hint: "Run the same command again.",
          exitCode: 130,
        }),
      );
      // On the real command line the command's own work (an engine process, a model inspection) would
      // keep going unseen: leave once the answer is out.
      if (!outer) io.stdout.write("", () => process.exit(code));
      return code;
    }
    io.stdout.write(held);
    return result;
  } catch (e) {
    open = false;
    if (e instanceof LorakitError) return answerError(io, name, e);
    const bug = e instanceof Error ? e : new Error(String(e));
    const doc = toJson(
      [
        {
          code: "INTERNAL_ERROR",
          severity: "error",
          title: `lorakit ${name} failed unexpectedly: ${bug.message}`,
          evidence: { stack: bug.stack ?? String(bug) },
          fix: "This is a bug in lorakit: please report it with the command and this stack trace.",
          stage: stageOf("INTERNAL_ERROR"),
        },
      ],
      { command: name },
    );
    out(io, JSON.stringify(doc, null, 2));
    return 1;
  } finally {
    if (!outer) process.off("SIGINT", onSigint);
    else outer.removeEventListener("abort", onSigint);
  }
}
