// Reading sample files: a JSON array or JSON Lines, UTF-8 (a BOM is stripped and counted), CRLF or LF.
// Every record keeps its origin: the file, the 1-based line (the JSONL line, or the line where an array
// element starts: every element of a minified one-line array is on line 1) and `sample`, the record's
// 0-based index in its file, which is what identifies a record. Malformed records are all reported at
// once; with `skipBadLines` they are skipped, and each skip is returned so that nothing is ever dropped
// silently.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { LorakitError } from "../errors.js";

export interface Origin {
  file: string;
  line: number;
  /** 0-based index of the record among the file's records (bad records skipped count too): its identity. */
  sample?: number;
}

export interface RawRecord {
  value: unknown;
  origin: Origin;
}

export interface SkippedLine extends Origin {
  reason: string;
}

export interface FileInfo {
  path: string;
  sha256: string;
  bytes: number;
  kind: "json" | "jsonl";
  records: number;
  bom: boolean;
}

export interface ReadResult {
  records: RawRecord[];
  skipped: SkippedLine[];
  files: FileInfo[];
  /** Files that started with a UTF-8 byte order mark (stripped). */
  bomFiles: number;
}

/** How many problems one error lists before it says "and N more". */
export const MAX_LISTED = 20;

/** One error carrying every problem (capped at MAX_LISTED, with the rest counted in the last message). */
export function errorFromList(errors: readonly LorakitError[]): LorakitError {
  if (errors.length <= MAX_LISTED) return LorakitError.fromList(errors);
  const shown = errors.slice(0, MAX_LISTED);
  const rest = errors.length - MAX_LISTED;
  const next = errors[MAX_LISTED] as LorakitError;
  // Located at the first problem not listed, so that the summary too says where to look.
  const last = new LorakitError(next.code, `… and ${rest} more problem(s) like these, the next one here`, {
    where: next.where,
    hint: "Fix the ones listed and run again to see the rest.",
  });
  return LorakitError.fromList([...shown, last]);
}

const JSONL_HINT =
  "Each line of a JSONL file must be one complete JSON object; fix the line or set data.skip_bad_lines.";

/** 1-based line of character offset `at` in `text`. */
function lineAt(text: string, at: number, from = 0, fromLine = 1): number {
  let line = fromLine;
  for (let i = from; i < at && i < text.length; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

/** The character offset JSON.parse's message points at, when it says. */
function parsePosition(message: string): number | undefined {
  const m = /position (\d+)/.exec(message);
  return m ? Number(m[1]) : undefined;
}

/** JSON.parse's reason without V8's echo of the input. */
function reason(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.replace(/, "[\s\S]*" is not valid JSON$/, "").replace(/ in JSON at position \d+.*$/, "");
}

function decode(bytes: Buffer, file: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    const text = new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes);
    const at = text.indexOf("\uFFFD");
    throw new LorakitError("DATA_BAD_ENCODING", "the file is not valid UTF-8", {
      where: { file, line: lineAt(text, Math.max(0, at)) },
      hint: "Save the file as UTF-8 (e.g. `iconv -f gbk -t utf-8 in.json > out.json`).",
    });
  }
}

/** Start and end offsets of each top-level element of a JSON array, found by bracket depth. */
function arrayElements(text: string, file: string): { start: number; end: number }[] {
  const spans: { start: number; end: number }[] = [];
  let i = text.indexOf("[");
  const fail = (at: number, why: string) =>
    new LorakitError("DATA_BAD_JSON", `malformed JSON array: ${why}`, {
      where: { file, line: lineAt(text, at) },
      hint: "The file must be one JSON array of objects (or JSON Lines: one object per line).",
    });
  let depth = 0;
  let start = -1;
  i++;
  for (; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      if (start < 0) start = i;
      i++;
      while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
      if (i >= text.length) throw fail(start, "a string is never closed");
      continue;
    }
    if (c === " " || c === "\n" || c === "\r" || c === "\t") continue;
    if (depth === 0 && (c === "," || c === "]")) {
      if (start >= 0) spans.push({ start, end: i });
      else if (c === "," || spans.length > 0) throw fail(i, "an empty element (two commas, or a trailing comma)");
      start = -1;
      if (c === "]") {
        const tail = text.slice(i + 1).trim();
        if (tail) throw fail(i + 1 + text.slice(i + 1).indexOf(tail[0] as string), "text after the closing ]");
        return spans;
      }
      continue;
    }
    if (start < 0) start = i;
    if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") depth--;
    if (depth < 0) throw fail(i, `an unmatched '${c}'`);
  }
  throw fail(start >= 0 ? start : text.length, "the array is never closed with ]");
}

interface Parsed {
  records: RawRecord[];
  bad: { origin: Origin; reason: string; error: LorakitError }[];
}

/** How deep a sample may nest arrays and objects. JSON.parse takes any depth, but JSON.stringify and every
 * recursive walk after it (keys, tool dumps, templates) overflow the stack a few thousand levels down. */
export const MAX_DEPTH = 100;

/** Whether `value` nests deeper than MAX_DEPTH (walked without recursion, stopping at the limit). */
function tooDeep(value: unknown): boolean {
  const stack: [unknown, number][] = [[value, 1]];
  for (let item = stack.pop(); item; item = stack.pop()) {
    const [v, depth] = item;
    if (v === null || typeof v !== "object") continue;
    if (depth > MAX_DEPTH) return true;
    for (const x of Array.isArray(v) ? v : Object.values(v))
      if (x !== null && typeof x === "object") stack.push([x, depth + 1]);
  }
  return false;
}

/** A parsed record, or a bad one when it nests too deep. */
function add(out: Parsed, value: unknown, origin: Origin & { sample: number }): void {
  if (!tooDeep(value)) {
    out.records.push({ value, origin });
    return;
  }
  const why = `the sample nests arrays or objects more than ${MAX_DEPTH} levels deep`;
  out.bad.push({
    origin,
    reason: why,
    error: new LorakitError("DATA_TOO_DEEP", why, {
      where: origin,
      hint: "A sample is a conversation of text: flatten the nested value, or set data.skip_bad_lines to skip it.",
    }),
  });
}

function parseJsonArray(text: string, file: string): Parsed {
  const out: Parsed = { records: [], bad: [] };
  let line = 1;
  let at = 0;
  for (const { start, end } of arrayElements(text, file)) {
    line = lineAt(text, start, at, line);
    at = start;
    const chunk = text.slice(start, end);
    const sample = out.records.length + out.bad.length;
    let value: unknown;
    try {
      value = JSON.parse(chunk);
    } catch (e) {
      const pos = parsePosition(e instanceof Error ? e.message : "");
      const errLine = pos === undefined ? line : lineAt(text, start + pos, start, line);
      const why = reason(e);
      out.bad.push({
        origin: { file, line, sample },
        reason: why,
        error: new LorakitError("DATA_BAD_JSON", `malformed JSON in array element ${sample}: ${why}`, {
          where: { file, line: errLine, sample },
          hint: "Fix the element (a missing comma or quote is the usual cause) or set data.skip_bad_lines to skip it.",
        }),
      });
      continue;
    }
    add(out, value, { file, line, sample });
  }
  return out;
}

function parseJsonLines(text: string, file: string): Parsed {
  const out: Parsed = { records: [], bad: [] };
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const raw = (lines[i] as string).replace(/\r$/, "");
    if (!raw.trim()) continue;
    const origin = { file, line: i + 1, sample: out.records.length + out.bad.length };
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (e) {
      const why = reason(e);
      out.bad.push({
        origin,
        reason: why,
        error: new LorakitError("DATA_BAD_JSON", `malformed JSON line: ${why}`, { where: origin, hint: JSONL_HINT }),
      });
      continue;
    }
    add(out, value, origin);
  }
  return out;
}

/** A file that is one pretty-printed JSON object reads as bad JSON lines; say what it really is. */
function wholeObject(text: string, file: string): void {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return;
  }
  const lists =
    value && typeof value === "object"
      ? Object.keys(value).filter((k) => Array.isArray((value as Record<string, unknown>)[k]))
      : [];
  throw new LorakitError("DATA_BAD_JSON", "the file is one JSON object, not an array of samples nor JSON Lines", {
    where: { file, line: 1 },
    hint: lists.length
      ? `Save the list under \`${lists[0]}\` as the file's top-level array (or one object per line).`
      : "Write the samples as a top-level JSON array, or one JSON object per line (JSONL).",
  });
}

export interface ReadOptions {
  skipBadLines?: boolean;
}

/** Read one or more sample files. Throws one LorakitError listing every malformed record unless skipBadLines. */
export function readSamples(files: readonly string[], opts: ReadOptions = {}): ReadResult {
  const result: ReadResult = { records: [], skipped: [], files: [], bomFiles: 0 };
  const errors: LorakitError[] = [];
  for (const file of files) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(file);
    } catch (e) {
      throw new LorakitError("DATA_NOT_FOUND", `cannot read the data file: ${(e as Error).message}`, {
        where: { file },
        hint: "Check data.train / data.eval; relative paths resolve against the config file.",
      });
    }
    let text = decode(bytes, file);
    const bom = text.charCodeAt(0) === 0xfeff;
    if (bom) {
      text = text.slice(1);
      result.bomFiles++;
    }
    const first = /\S/.exec(text);
    const kind = first?.[0] === "[" ? "json" : "jsonl";
    const parsed = kind === "json" ? parseJsonArray(text, file) : parseJsonLines(text, file);
    if (kind === "jsonl" && parsed.bad.length > 0) wholeObject(text, file);
    if (parsed.records.length === 0 && parsed.bad.length === 0) {
      errors.push(
        new LorakitError("DATA_EMPTY_FILE", "the data file holds no records", {
          where: { file },
          hint: "Point data.train at a JSON array or a JSONL file with at least one sample.",
        }),
      );
    }
    if (opts.skipBadLines) for (const b of parsed.bad) result.skipped.push({ ...b.origin, reason: b.reason });
    else errors.push(...parsed.bad.map((b) => b.error));
    result.records.push(...parsed.records);
    result.files.push({
      path: file,
      sha256: createHash("sha256").update(bytes).digest("hex"),
      bytes: bytes.length,
      kind,
      records: parsed.records.length,
      bom,
    });
  }
  if (errors.length > 0) throw errorFromList(errors);
  return result;
}
