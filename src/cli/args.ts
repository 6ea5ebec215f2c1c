// Argument parsing shared by the commands: node's parseArgs, with errors in lorakit's shape.
import { type ParseArgsConfig, parseArgs } from "node:util";
import { usageError } from "../errors.js";

export function parse<T extends NonNullable<ParseArgsConfig["options"]>>(argv: string[], options: T, usage: string) {
  try {
    return parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (e) {
    throw usageError((e as Error).message, usage);
  }
}
