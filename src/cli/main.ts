// The lorakit command line: one file per command under src/cli/, each a `Command` (src/cli/command.ts),
// dispatched from here. Nothing imports this module but the entry point and the tests.
import { formatError, LorakitError, nearest } from "../errors.js";
import { type Command, parseCommandArgs, renderHelp, UsageError, usageLine } from "./command.js";
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
  const load = COMMANDS[name];
  if (!load) {
    const guess = nearest(name, Object.keys(COMMANDS));
    err(io, `error: unknown command '${name}'${guess ? ` — did you mean '${guess}'?` : ""}`);
    err(io, "run `lorakit help` for the list of commands");
    return 2;
  }
  const command = await load();
  const beforeTerminator = rest.includes("--") ? rest.slice(0, rest.indexOf("--")) : rest;
  if (beforeTerminator.includes("--help") || beforeTerminator.includes("-h")) {
    out(io, renderHelp(command, io.stdout.columns).trimEnd());
    return 0;
  }
  try {
    return await command.run(parseCommandArgs(command, rest), io);
  } catch (e) {
    if (e instanceof UsageError) {
      err(io, formatError(e));
      err(io, `usage: ${usageLine(command)}`);
      return 2;
    }
    if (e instanceof LorakitError && e.code === "INTERRUPTED") {
      err(io, `${e.message}${e.hint ? ` — ${e.hint}` : ""}`); // Ctrl-C: not an error of the run's
      return 130;
    }
    if (e instanceof LorakitError) {
      err(io, formatError(e));
      return 1;
    }
    throw e;
  }
}
