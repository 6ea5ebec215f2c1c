// The lorakit command line: one file per command under src/cli/, dispatched from here.
import { formatError, LorakitError } from "../errors.js";
import { err, type Io, out } from "./io.js";

export type Command = { summary: string; usage: string; run: (argv: string[], io: Io) => Promise<number> };

const COMMANDS: Record<string, () => Promise<Command>> = {
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
  out(io, "\n`lorakit <command> --help` shows a command's options.");
}

export async function main(argv: string[], io: Io): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "help" || name === "--help" || name === "-h") {
    await help(io);
    return name ? 0 : 2;
  }
  if (name === "--version" || name === "-V") {
    out(io, VERSION);
    return 0;
  }
  const load = COMMANDS[name];
  if (!load) {
    const { nearest } = await import("../errors.js");
    const guess = nearest(name, Object.keys(COMMANDS));
    err(io, `error: unknown command '${name}'${guess ? ` — did you mean '${guess}'?` : ""}`);
    err(io, "run `lorakit help` for the list of commands");
    return 2;
  }
  const command = await load();
  if (rest.includes("--help") || rest.includes("-h")) {
    out(io, `${command.summary}\n\nusage: ${command.usage}`);
    return 0;
  }
  try {
    return await command.run(rest, io);
  } catch (e) {
    if (e instanceof LorakitError) {
      err(io, formatError(e));
      return 1;
    }
    throw e;
  }
}
