// What a command is: its options (each with a description), its arguments and examples, in one definition
// that both parses argv and writes `--help`, so the two cannot drift. Commands import this module, never
// main.ts or one another.
import { parseArgs } from "node:util";
import { LorakitError, nearest } from "../errors.js";
import type { Io } from "./io.js";

export interface OptionSpec {
  type: "boolean" | "string";
  /** A string option given several times (`--sample 1 --sample 4`). */
  multiple?: boolean;
  /** The value's name in the help, e.g. FILE, N, DIR (string options). */
  value?: string;
  /** Without it the command cannot run (shown without brackets in the usage line). */
  required?: boolean;
  description: string;
}

export type OptionSpecs = Record<string, OptionSpec>;

/** The parsed values of `O`: booleans, strings, or string lists for `multiple` options. */
export type Values<O extends OptionSpecs> = {
  [K in keyof O]?: O[K]["type"] extends "boolean" ? boolean : O[K]["multiple"] extends true ? string[] : string;
};

export interface Command<O extends OptionSpecs = OptionSpecs> {
  name: string;
  /** One line for `lorakit help`. */
  summary: string;
  /** The positional arguments as the usage line shows them, e.g. `<run.yaml>`. */
  args?: string;
  /** How many positional arguments are accepted: [at least, at most]. */
  positionals?: [number, number];
  /** A paragraph under the usage line: what the command does, in order. */
  description?: string;
  options: O;
  /** [command line, what it does]. */
  examples: [string, string][];
  run(parsed: { values: Values<O>; positionals: string[] }, io: Io): Promise<number>;
}

/** Identity, for inference: option names and types flow into `run`'s `values`. */
export function defineCommand<const O extends OptionSpecs>(c: Command<O>): Command<O> {
  return c;
}

/** A wrong command line: printed with the usage line, exit code 2 (1 means the work failed). */
export function badArgs(message: string, opts: { hint: string; more?: LorakitError[] }): LorakitError {
  return new LorakitError("CLI_BAD_ARGS", message, { ...opts, exitCode: 2 });
}

function optionSynopsis(name: string, o: OptionSpec): string {
  const s = o.type === "string" ? `--${name} ${o.value ?? "VALUE"}` : `--${name}`;
  return o.required ? s : `[${s}]${o.multiple ? "..." : ""}`;
}

export function usageLine(c: Command): string {
  const opts = Object.entries(c.options).map(([n, o]) => optionSynopsis(n, o));
  return ["lorakit", c.name, ...(c.args ? [c.args] : []), ...opts].join(" ");
}

/** Parses argv against the command's options; every problem at once, each with the nearest valid option. */
export function parseCommandArgs<O extends OptionSpecs>(
  c: Command<O>,
  argv: string[],
): { values: Values<O>; positionals: string[] } {
  const config = Object.fromEntries(
    Object.entries(c.options).map(([n, o]) => [n, { type: o.type, ...(o.multiple ? { multiple: true } : {}) }]),
  );
  // Not strict: node's own messages name no alternative; the tokens let us say what was meant.
  const { values, positionals, tokens } = parseArgs({
    args: argv,
    options: config,
    allowPositionals: true,
    strict: false,
    tokens: true,
  });
  const names = Object.keys(c.options);
  const problems: LorakitError[] = [];
  const more = `\`lorakit ${c.name} --help\` explains each option`;
  for (const t of tokens) {
    if (t.kind !== "option") continue;
    const o = c.options[t.name];
    if (!o) {
      const guess = nearest(t.name, names);
      problems.push(
        badArgs(`unknown option '${t.rawName}'`, {
          hint: guess
            ? `did you mean '--${guess}'? (${more})`
            : `${c.name} takes: ${names.map((n) => `--${n}`).join(", ") || "no options"}`,
        }),
      );
    } else if (o.type === "boolean" && t.value !== undefined) {
      problems.push(
        badArgs(`option '--${t.name}' takes no value (got '${t.value}')`, {
          hint: `write --${t.name} alone`,
        }),
      );
    } else if (o.type === "string" && (t.value === undefined || (!t.inlineValue && t.value.startsWith("--")))) {
      problems.push(
        badArgs(`option '--${t.name}' needs a value (${o.value ?? "VALUE"})`, {
          hint: `e.g. --${t.name} ${o.value ?? "VALUE"}; a value that starts with '-' is written --${t.name}=VALUE`,
        }),
      );
    }
  }
  for (const [n, o] of Object.entries(c.options)) {
    if (o.required && values[n] === undefined) {
      problems.push(badArgs(`--${n} ${o.value ?? "VALUE"} is required`, { hint: o.description }));
    }
  }
  const [least, most] = c.positionals ?? [0, 0];
  if (positionals.length < least) {
    problems.push(
      badArgs(`missing ${c.args ?? "arguments"}`, {
        hint: `e.g. ${c.examples[0]?.[0] ?? usageLine(c)}`,
      }),
    );
  } else if (positionals.length > most) {
    const extra = positionals.slice(most);
    problems.push(
      badArgs(`unexpected argument${extra.length > 1 ? "s" : ""} ${extra.map((a) => `'${a}'`).join(" ")}`, {
        hint: most === 0 ? `${c.name} takes no arguments` : `${c.name} takes ${c.args}`,
      }),
    );
  }
  if (problems.length > 0) {
    const [first, ...rest] = problems as [LorakitError, ...LorakitError[]];
    throw badArgs(first.message, { hint: first.hint, more: rest });
  }
  return { values: values as Values<O>, positionals };
}

/** Words of `text` in lines of at most `width` characters, joined by a newline and `indent`. */
export function wrap(text: string, width: number, indent = ""): string {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines.join(`\n${indent}`);
}

/** The whole `--help` of a command: usage, what it does, every option explained, examples. */
export function renderHelp(c: Command, columns = 80): string {
  const width = Math.max(40, Math.min(columns, 100) - 1);
  const entries: [string, string][] = [
    ...Object.entries(c.options).map(
      ([n, o]) =>
        [
          `--${n}${o.type === "string" ? ` ${o.value ?? "VALUE"}` : ""}`,
          `${o.description}${o.multiple ? " (may be given several times)" : ""}`,
        ] as [string, string],
    ),
    ["-h, --help", "show this help"],
  ];
  const col = Math.min(24, Math.max(...entries.map(([k]) => k.length)) + 4);
  const option = ([k, d]: [string, string]) => {
    const head = `  ${k}`.padEnd(col);
    const body = wrap(d, width - col, " ".repeat(col));
    return head.length > col ? `  ${k}\n${" ".repeat(col)}${body}` : `${head}${body}`;
  };
  const parts = [
    `lorakit ${c.name} — ${c.summary}`,
    `usage: ${wrap(usageLine(c), width - 7, " ".repeat(7))}`,
    ...(c.description ? [wrap(c.description, width)] : []),
    `options:\n${entries.map(option).join("\n")}`,
    `examples:\n${c.examples.map(([cmd, what]) => `  # ${wrap(what, width - 4, "  # ")}\n  ${cmd}`).join("\n")}`,
  ];
  return `${parts.join("\n\n")}\n`;
}
