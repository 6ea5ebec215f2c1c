// Shared by the TypeScript tests: in-process CLI runs with captured streams, temp dirs, fixtures.
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import type { Io } from "../src/cli/io.js";
import { main } from "../src/cli/main.js";
import { ROOT } from "../src/engine/python.js";
import { LorakitError } from "../src/errors.js";

export const FIXTURES = path.join(ROOT, "tests", ".fixtures");
export const fixture = (...p: string[]) => path.join(FIXTURES, ...p);

/** The official ChatGLM3-6B tokenizer files, beside the repository: model data, never committed; present in CI. */
export const CHATGLM3_6B = path.resolve(ROOT, "..", "shared", "models", "chatglm3-6b");
const CHATGLM3_6B_FILES = ["tokenizer.model", "tokenizer_config.json", "config.json"];

/** CHATGLM3_6B, after checking that its files and the fixtures built from them are there; otherwise an error
 * that says what is missing and what to do (the tests that need them fail: they never skip). */
export function officialChatglm3(): string {
  const missing = CHATGLM3_6B_FILES.map((f) => path.join(CHATGLM3_6B, f)).filter((f) => !existsSync(f));
  if (missing.length > 0) {
    throw new Error(
      `the official ChatGLM3-6B tokenizer files are missing: ${missing.join(", ")}. ` +
        "Put tokenizer.model, tokenizer_config.json and config.json of THUDM/chatglm3-6b in ../shared/models/chatglm3-6b/ " +
        "beside the repository (CI has them); the fixture builder then makes tests/.fixtures/chatglm3-6b.",
    );
  }
  const built = fixture("chatglm3-6b", "expected.json");
  if (!existsSync(built)) {
    throw new Error(
      `${built} was not built although ${CHATGLM3_6B} is there: ` +
        "run `python engine/tests/fixtures/build_all.py --out tests/.fixtures --force` with the engine's Python",
    );
  }
  return CHATGLM3_6B;
}

export function tmpDir(prefix = "lorakit-test-"): string {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** `dir/train.json`: 24 alpaca records, six code words to memorise (the training tests' small task). */
export function writeCodeWords(dir: string): void {
  const words = ["apple", "river", "stone", "cloud", "ember", "frost"];
  const records = Array.from({ length: 24 }, (_, i) => ({
    instruction: `What is the code word number ${i % 6}?`,
    input: "",
    output: `The code word is ${words[i % 6]}.`,
  }));
  writeFileSync(path.join(dir, "train.json"), JSON.stringify(records, null, 1));
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

/** The LorakitError `fn` throws; anything else thrown is rethrown, and no error at all fails the test. */
export function caught(fn: () => unknown): LorakitError {
  try {
    fn();
  } catch (e) {
    if (e instanceof LorakitError) return e;
    throw e;
  }
  throw new Error("expected a LorakitError");
}
