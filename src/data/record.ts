// A record read from a sample file: its origin (file, 1-based line, 0-based index in the file), one raw record
// parsed into a value or a located problem (`parseRecord`), and the list that names every problem at once.
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
export function errorFromList(errors: readonly LorakitError[], total = errors.length): LorakitError {
  if (total <= MAX_LISTED) return LorakitError.fromList(errors);
  const shown = errors.slice(0, MAX_LISTED);
  const rest = total - MAX_LISTED;
  const next = errors[MAX_LISTED];
  // Located at the first problem not listed, so that the summary too says where to look.
  const last = next
    ? new LorakitError(next.code, `… and ${rest} more problem(s) like these, the next one here`, {
        where: next.where,
        hint: "Fix the ones listed and run again to see the rest.",
      })
    : new LorakitError("DATA_MORE", `… and ${rest} more problem(s) like these`, {
        hint: "Fix the ones listed and run again to see the rest.",
      });
  return LorakitError.fromList([...shown, last]);
}

/** Problems gathered in a pass over many records: the first MAX_LISTED + 1 kept, all counted. */
export class ProblemList {
  readonly kept: LorakitError[] = [];
  count = 0;
  push(e: LorakitError): void {
    if (this.kept.length <= MAX_LISTED) this.kept.push(e);
    this.count++;
  }
  error(): LorakitError | undefined {
    return this.count > 0 ? errorFromList(this.kept, this.count) : undefined;
  }
}

const JSONL_HINT =
  "Each line of a JSONL file must be one complete JSON object; fix the line or set data.skip_bad_lines.";

/** 1-based line of character offset `at` in `text`. */
export function lineAt(text: string, at: number, from = 0, fromLine = 1): number {
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

export interface BadRecord {
  origin: Origin;
  reason: string;
  error: LorakitError;
}

/** One record's text (a JSONL line without its line end, or an array element) as a value or a problem. */
export function parseRecord(
  text: string,
  kind: "json" | "jsonl",
  file: string,
  line: number,
  sample: number,
): RawRecord | BadRecord {
  const origin = { file, line, sample };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    const why = reason(e);
    if (kind === "jsonl") {
      return {
        origin,
        reason: why,
        error: new LorakitError("DATA_BAD_JSON", `malformed JSON line: ${why}`, { where: origin, hint: JSONL_HINT }),
      };
    }
    const pos = parsePosition(e instanceof Error ? e.message : "");
    const errLine = pos === undefined ? line : lineAt(text, pos, 0, line);
    return {
      origin,
      reason: why,
      error: new LorakitError("DATA_BAD_JSON", `malformed JSON in array element ${sample}: ${why}`, {
        where: { file, line: errLine, sample },
        hint: "Fix the element (a missing comma or quote is the usual cause) or set data.skip_bad_lines to skip it.",
      }),
    };
  }
  if (!tooDeep(value)) return { value, origin };
  const why = `the sample nests arrays or objects more than ${MAX_DEPTH} levels deep`;
  return {
    origin,
    reason: why,
    error: new LorakitError("DATA_TOO_DEEP", why, {
      where: origin,
      hint: "A sample is a conversation of text: flatten the nested value, or set data.skip_bad_lines to skip it.",
    }),
  };
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

/** Files up to this size that read as bad JSON lines are checked for being one JSON object. */
const WHOLE_OBJECT_LIMIT = 256 << 20;

/** Throws the "one JSON object" error when a JSONL file with bad lines is one JSON object. */
export function checkWholeObject(file: string, bytes: number): void {
  if (bytes > WHOLE_OBJECT_LIMIT) return;
  let text = readFileSync(file).toString("utf8");
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  wholeObject(text, file);
}
