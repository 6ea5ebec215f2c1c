// What the fuzz suites (tests/fuzz-*.test.ts) share: how many runs and which seed, a time bound on every case,
// and the one property every reader keeps — an input is either handled, or refused with a located
// LorakitError (a code, the file, and where in it: line, byte offset, key or sample). Any other exception, a
// case that runs past its time bound, or an error that does not say where is a bug.
//
// CI runs each property a fixed, seeded number of times. By hand: FUZZ_RUNS=20 multiplies every count by 20,
// FUZZ_SEED=n starts elsewhere; a failure prints the seed and path that replay it (fast-check's `seed` and `path`).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import vm from "node:vm";
import fc from "fast-check";
import { afterAll } from "vitest";
import { LorakitError } from "../../src/errors.js";

/** Multiplier on every property's CI run count (FUZZ_RUNS, default 1). */
export const RUNS_FACTOR = Number(process.env.FUZZ_RUNS ?? "1");
export const SEED = Number(process.env.FUZZ_SEED ?? "20261130");
if (!(RUNS_FACTOR > 0) || !Number.isInteger(SEED)) throw new Error("FUZZ_RUNS must be > 0 and FUZZ_SEED an integer");

/** A case's time bound: far above what any case needs on a loaded 2-core machine, far below a hang. */
export const CASE_MS = Number(process.env.FUZZ_CASE_MS ?? "5000");

/** fast-check parameters: `ci` runs (times FUZZ_RUNS), the suite's seed. */
export function params<T>(ci: number, extra: fc.Parameters<T> = {}): fc.Parameters<T> {
  return { seed: SEED, numRuns: Math.max(1, Math.round(ci * RUNS_FACTOR)), ...extra };
}

/** The vitest timeout of a test that runs `ci` cases of at most `msPerCase` each (typical, not the bound). */
export const testTimeout = (ci: number, msPerCase: number) => 60_000 + Math.round(ci * RUNS_FACTOR * msPerCase);

/** A suite's scratch folder, removed when the suite ends. Each case starts with `newCase()`, which empties the
 * case folder, so that a long run (FUZZ_RUNS) never holds more than one case's files on disk. */
export function scratch(prefix: string) {
  const root = mkdtempSync(path.join(os.tmpdir(), prefix));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  const dir = path.join(root, "case");
  let n = 0;
  return {
    /** The current case's folder, emptied. */
    newCase(): string {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir);
      return dir;
    },
    /** A fresh path in the current case's folder (written when `content` is given). */
    file(ext: string, content?: string | Uint8Array): string {
      mkdirSync(dir, { recursive: true });
      const f = path.join(dir, `${n++}${ext}`);
      if (content !== undefined) writeFileSync(f, content);
      return f;
    },
  };
}

const context = vm.createContext({});
const callRun = new vm.Script("run()");

/** Runs `fn` synchronously, interrupted after `ms` (V8 stops any JavaScript running then, not only the script's). */
export function bounded<T>(fn: () => T, ms = CASE_MS): T {
  context.run = fn;
  try {
    return callRun.runInContext(context, { timeout: ms }) as T;
  } catch (e) {
    if ((e as { code?: string }).code === "ERR_SCRIPT_EXECUTION_TIMEOUT")
      throw new Error(`hang: the case ran for more than ${ms} ms`);
    throw e;
  } finally {
    context.run = undefined;
  }
}

export interface Located {
  /** The file every error must name (exactly), or a test on it. */
  file?: string | ((file: string) => boolean);
  /** Besides the file, each error must say where in it (line, offset, key or sample), except these codes. */
  at?: boolean;
  wholeFile?: readonly string[];
  /** Messages may quote a library's text (which may say "undefined"): only `[object Object]` is a bug then. */
  libraryText?: boolean;
}

/** What is wrong with how `e` reports itself, or undefined when it is a well-located LorakitError. */
export function locationProblem(e: unknown, want: Located): string | undefined {
  if (!(e instanceof LorakitError)) {
    const err = e as Error;
    return `threw ${err?.constructor?.name ?? typeof e}, not a LorakitError: ${err?.stack ?? String(e)}`;
  }
  for (const x of e.all()) {
    const tag = `${x.code} "${x.message}" at ${JSON.stringify(x.where)}`;
    if (!/^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$/.test(x.code)) return `bad code: ${tag}`;
    const garbled = want.libraryText ? /\[object Object\]/ : /\[object Object\]|\bundefined\b|\bNaN\b/;
    if (!x.message || garbled.test(x.message)) return `bad message: ${tag}`;
    const file = x.where?.file;
    if (want.file !== undefined) {
      if (file === undefined) return `names no file: ${tag}`;
      if (typeof want.file === "string" ? file !== want.file : !want.file(file)) return `names the wrong file: ${tag}`;
    }
    if (want.at && !want.wholeFile?.includes(x.code)) {
      const w = x.where ?? {};
      if (w.line === undefined && w.offset === undefined && w.key === undefined && w.sample === undefined)
        return `says not where in the file: ${tag}`;
      if (w.line !== undefined && !(Number.isInteger(w.line) && w.line >= 1)) return `bad line: ${tag}`;
      if (w.offset !== undefined && !(Number.isInteger(w.offset) && w.offset >= 0)) return `bad offset: ${tag}`;
    }
  }
  return undefined;
}

export type Outcome<T> = { ok: true; value: T } | { ok: false; error: LorakitError };

/** Runs `fn` within the time bound; a result, or a well-located LorakitError; anything else fails the case. */
export function handled<T>(fn: () => T, want: Located, ms = CASE_MS): Outcome<T> {
  try {
    return { ok: true, value: bounded(fn, ms) };
  } catch (e) {
    if (e instanceof Error && e.message.startsWith("hang:")) throw e;
    const problem = locationProblem(e, want);
    if (problem) throw new Error(problem);
    return { ok: false, error: e as LorakitError };
  }
}

/** `handled` for async work: the promise must settle within `ms` (only its synchronous stretches are interrupted). */
export async function handledAsync<T>(fn: () => Promise<T>, want: Located, ms = CASE_MS): Promise<Outcome<T>> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`hang: the case did not settle within ${ms} ms`)), ms);
  });
  try {
    return { ok: true, value: await Promise.race([bounded(fn, ms), late]) };
  } catch (e) {
    if (e instanceof Error && e.message.startsWith("hang:")) throw e;
    const problem = locationProblem(e, want);
    if (problem) throw new Error(problem);
    return { ok: false, error: e as LorakitError };
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------- byte mutations

/** One edit of a byte string; positions are fractions of the current length, so any edit applies to any input. */
export type Mutation =
  | { kind: "flip"; at: number; bit: number }
  | { kind: "set"; at: number; byte: number }
  | { kind: "insert"; at: number; bytes: number[] }
  | { kind: "delete"; at: number; len: number }
  | { kind: "truncate"; at: number }
  | { kind: "copy"; from: number; at: number; len: number }
  /** Replace the varint that starts at `hot[i]` (a length or a key) with `value`'s varint encoding. */
  | { kind: "varint"; hot: number; value: number };

/** Varint values that break readers: zero, one, around powers of two, past 2^32 and 2^53, and the 10-byte maximum. */
export const nastyNumbers = fc.oneof(
  fc.constantFrom(0, 1, 2, 7, 8, 127, 128, 255, 256, 0x7fffffff, 0x80000000, 0xffffffff, 2 ** 32, 2 ** 53 - 1, 2 ** 63),
  fc.nat(),
  fc.integer({ min: 0, max: 300 }),
);

const at = fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true });

/** Byte edits; `hot` is how many structural positions (varint starts) the input has, for the `varint` kind. */
export function mutations(hot = 0, maxEdits = 4): fc.Arbitrary<Mutation[]> {
  const kinds: fc.Arbitrary<Mutation>[] = [
    fc.record({ kind: fc.constant("flip" as const), at, bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({ kind: fc.constant("set" as const), at, byte: fc.integer({ min: 0, max: 255 }) }),
    fc.record({
      kind: fc.constant("insert" as const),
      at,
      bytes: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 1, maxLength: 16 }),
    }),
    fc.record({ kind: fc.constant("delete" as const), at, len: fc.integer({ min: 1, max: 64 }) }),
    fc.record({ kind: fc.constant("truncate" as const), at }),
    fc.record({ kind: fc.constant("copy" as const), from: at, at, len: fc.integer({ min: 1, max: 256 }) }),
  ];
  if (hot > 0)
    kinds.push(
      fc.record({ kind: fc.constant("varint" as const), hot: fc.nat({ max: hot - 1 }), value: nastyNumbers }),
      fc.record({ kind: fc.constant("varint" as const), hot: fc.nat({ max: hot - 1 }), value: nastyNumbers }),
    );
  return fc.array(fc.oneof(...kinds), { minLength: 1, maxLength: maxEdits });
}

export function varintBytes(value: number): number[] {
  const out: number[] = [];
  let v = value;
  do {
    const low = v % 128;
    v = Math.floor(v / 128);
    out.push(v > 0 ? low | 0x80 : low);
  } while (v > 0 && out.length < 10);
  return out;
}

/** The bytes of `parts`, one after the other. */
export function cat(...parts: ArrayLike<number>[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Applies the edits in order; `hotAt` lists the original input's varint starts (used before other edits shift them). */
export function mutate(input: Uint8Array, edits: readonly Mutation[], hotAt: readonly number[] = []): Uint8Array {
  let b: Uint8Array = input.slice();
  const pos = (f: number, n = b.length) => Math.min(n, Math.floor(f * (n + 1)));
  // Varint edits first, at the original positions (in descending order, so earlier ones stay valid).
  const varints = edits.filter((e) => e.kind === "varint").sort((x, y) => (hotAt[y.hot] ?? 0) - (hotAt[x.hot] ?? 0));
  for (const e of varints) {
    const start = hotAt[e.hot];
    if (start === undefined || start >= b.length) continue;
    let end = start;
    while (end < b.length && end - start < 10 && ((b[end] as number) & 0x80) !== 0) end++;
    b = cat(b.subarray(0, start), varintBytes(e.value), b.subarray(end + 1));
  }
  for (const e of edits) {
    if (e.kind === "varint") continue;
    if (b.length === 0 && e.kind !== "insert") continue;
    const i = Math.min(pos(e.at), b.length - (e.kind === "insert" ? 0 : 1));
    if (e.kind === "flip") b[i] = (b[i] as number) ^ (1 << e.bit);
    else if (e.kind === "set") b[i] = e.byte;
    else if (e.kind === "insert") b = cat(b.subarray(0, i), e.bytes, b.subarray(i));
    else if (e.kind === "delete") b = cat(b.subarray(0, i), b.subarray(i + e.len));
    else if (e.kind === "truncate") b = b.slice(0, i);
    else if (e.kind === "copy") {
      const from = Math.min(pos(e.from), b.length - 1);
      b = cat(b.subarray(0, i), b.slice(from, from + e.len), b.subarray(i));
    }
  }
  return b;
}

// ---------------------------------------------------------------- JSON value mutations

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** JSON values of every kind, nested a little, strings with the characters that break parsers and templates. */
export const jsonValue: fc.Arbitrary<Json> = fc.letrec<{ v: Json }>((tie) => ({
  v: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.oneof(fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.constantFrom(0, -1, 1e308, 2 ** 53)),
    nastyString(),
    fc.array(tie("v"), { maxLength: 4 }),
    fc.dictionary(fc.oneof(nastyString(), fc.constantFrom("role", "content", "__proto__", "constructor")), tie("v"), {
      maxKeys: 4,
    }),
  ),
})).v;

/** Text: unicode of every plane (lone surrogates included), control characters and markup that means something. */
export function nastyString(maxLength = 24): fc.Arbitrary<string> {
  const unit = fc.oneof(
    { weight: 4, arbitrary: fc.string({ unit: "grapheme", maxLength: 4 }) },
    { weight: 2, arbitrary: fc.string({ unit: "binary", maxLength: 3 }) },
    { weight: 1, arbitrary: fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)) },
    {
      weight: 2,
      arbitrary: fc.constantFrom(
        "\n",
        "\r\n",
        "\t",
        " ",
        "  ",
        "\u0000",
        "\uFEFF",
        "\u2581",
        "\u3000",
        "你好",
        "嬛嬛",
        "\\",
        '"',
        "{",
        "}",
        "[",
        "]",
        ",",
        "{{",
        "}}",
        "{%",
        "%}",
        "<|im_end|>",
        "<|im_start|>",
        "<|user|>",
        "<|assistant|>",
        "<|observation|>",
        "[gMASK]",
        "sop",
        "</s>",
        "<s>",
        "<unk>",
        "<0x41>",
        "\u{F0000}0\u{F0001}",
        "💡",
        "👨‍👩‍👧",
      ),
    },
  );
  return fc.array(unit, { maxLength }).map((parts) => parts.join(""));
}

type Path = (string | number)[];

function paths(v: Json, prefix: Path = [], out: Path[] = []): Path[] {
  out.push(prefix);
  if (Array.isArray(v)) for (const [i, x] of v.entries()) paths(x, [...prefix, i], out);
  else if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) paths(x, [...prefix, k], out);
  return out;
}

/** One structural edit of a JSON document: a value replaced, a key deleted or renamed, an element duplicated. */
export type JsonEdit =
  | { kind: "replace"; pick: number; value: Json }
  | { kind: "delete"; pick: number }
  | { kind: "rename"; pick: number; key: string }
  | { kind: "duplicate"; pick: number }
  | { kind: "graft"; pick: number; from: number }
  /** A value nested `depth` levels deep (arrays or objects), written by `expandDeep` after serializing. */
  | { kind: "deep"; pick: number; depth: number; objects: boolean };

const DEEP = /"\\u0001deep:(\d+):([ao])\\u0001"/g;

/** Replaces the markers `deep` edits leave in serialized JSON with the nested text itself (never built as a value:
 * the harness's own JSON.stringify would overflow the stack on it). */
export function expandDeep(json: string): string {
  return json.replace(DEEP, (_, n: string, k: string) =>
    k === "a" ? "[".repeat(Number(n)) + "]".repeat(Number(n)) : `${'{"a":'.repeat(Number(n))}1${"}".repeat(Number(n))}`,
  );
}

export const jsonEdits = (maxEdits = 3): fc.Arbitrary<JsonEdit[]> =>
  fc.array(
    fc.oneof(
      { weight: 4, arbitrary: fc.record({ kind: fc.constant("replace" as const), pick: fc.nat(), value: jsonValue }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant("delete" as const), pick: fc.nat() }) },
      {
        weight: 1,
        arbitrary: fc.record({
          kind: fc.constant("rename" as const),
          pick: fc.nat(),
          key: fc.oneof(nastyString(8), fc.constantFrom("Role", "contents", "value", "from", "tools")),
        }),
      },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant("duplicate" as const), pick: fc.nat() }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant("graft" as const), pick: fc.nat(), from: fc.nat() }) },
      {
        weight: 1,
        arbitrary: fc.record({
          kind: fc.constant("deep" as const),
          pick: fc.nat(),
          depth: fc.constantFrom(200, 2_000, 20_000),
          objects: fc.boolean(),
        }),
      },
    ),
    { minLength: 1, maxLength: maxEdits },
  );

const clone = (v: Json): Json => (v === undefined ? v : JSON.parse(JSON.stringify(v)));

/** Applies structural edits to a copy of `doc`; `pick` chooses among the document's paths (root included). */
export function editJson(doc: Json, edits: readonly JsonEdit[]): Json {
  let root = clone(doc);
  for (const e of edits) {
    const all = paths(root);
    const p = all[e.pick % all.length] as Path;
    const get = (q: Path) => q.reduce<Json>((v, k) => (v as Record<string | number, Json>)[k] as Json, root);
    const parent = p.length > 0 ? (get(p.slice(0, -1)) as Record<string | number, Json> | Json[]) : undefined;
    const key = p[p.length - 1] as string | number;
    const set = (v: Json) => {
      if (!parent) root = v;
      else (parent as Record<string | number, Json>)[key] = v;
    };
    if (e.kind === "replace") set(clone(e.value));
    else if (e.kind === "deep") set(`\u0001deep:${e.depth}:${e.objects ? "o" : "a"}\u0001`);
    else if (e.kind === "graft") set(clone(get(all[e.from % all.length] as Path)));
    else if (!parent) continue;
    else if (e.kind === "delete") {
      if (Array.isArray(parent)) parent.splice(key as number, 1);
      else delete parent[key as string];
    } else if (e.kind === "duplicate") {
      if (Array.isArray(parent)) parent.splice(key as number, 0, clone(parent[key as number] as Json));
      else (parent as Record<string, Json>)[`${key}_copy`] = clone(parent[key as string] as Json);
    } else if (e.kind === "rename" && !Array.isArray(parent)) {
      const v = parent[key as string] as Json;
      delete parent[key as string];
      parent[e.key] = v;
    }
  }
  return root;
}
