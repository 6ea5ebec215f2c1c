// Sample formats, normalized to one Conversation shape: alpaca (`instruction`/`input`/`output`, the
// Self-LLM huanhuan.json shape), OpenAI `messages`, ShareGPT `conversations` of `{from, value}`, and
// ChatGLM3's `conversations` of `{role, content, loss?}`. `auto` detects each record's format from its
// keys; one file must keep to one format. Every problem names file:line, the key path and the nearest
// valid key or value.
//
// ChatGLM3's tool format is read the same way in `messages` and in `conversations`: an assistant turn that
// calls a tool carries `metadata` (the tool's name), a system turn may carry `tools` (the definitions), the
// record may carry top-level `tools` (finetune_demo: a system turn of their own, first), `observation` (or
// OpenAI's `tool`) turns hold what the tool returned, and the first finetune_demo's `{"role": "tool", name,
// parameters, observation}` turn stands for a call and its observation. `loss` marks a turn learned or not;
// without it assistant turns are learned and all others are not.

// The conversation shape is in conversation.ts, each format's reading in format-turns.ts.
import { LorakitError, nearest } from "../errors.js";
import type { Conversation, DataFormat, FormatName } from "./conversation.js";
import { ALL_KEYS, Check, isObject, type NormalizeOptions, normalizeOne, typeName } from "./format-turns.js";
import { errorFromList, type Origin, type RawRecord } from "./read.js";

export {
  type Conversation,
  conversationKey,
  type DataFormat,
  type FormatName,
  type Message,
  ROLES,
  type Role,
  trains,
} from "./conversation.js";
export { CHATGLM3_TOOLS_SYSTEM, type NormalizeOptions, pyJson } from "./format-turns.js";

/** The format a record's keys say it is in, or undefined. */
export function detectFormat(value: unknown): FormatName | undefined {
  if (!isObject(value)) return undefined;
  if (Array.isArray(value.messages)) return "messages";
  if (Array.isArray(value.conversations)) {
    const first = value.conversations.find(isObject);
    if (first && ("from" in first || "value" in first)) return "sharegpt";
    return "conversations";
  }
  if ("instruction" in value || "output" in value) return "alpaca";
  return undefined;
}

export interface Normalized {
  conversations: Conversation[];
  /** Detected (or given) format per file. */
  formats: Record<string, FormatName>;
}

export interface NormalizedRecord {
  /** The record's format (given, or detected from its keys); absent when it is no object or undetectable. */
  format?: FormatName;
  conversation?: Conversation;
  errors: LorakitError[];
}

/** One record on its own: its format and conversation, or its problems (whether formats mix in a file is
 * `FileFormats`' to say, in file order). */
export function normalizeRecord(rec: RawRecord, opts: NormalizeOptions = {}): NormalizedRecord {
  const given = opts.format ?? "auto";
  if (!isObject(rec.value)) {
    return {
      errors: [
        new LorakitError("DATA_BAD_RECORD", `a sample must be a JSON object, found ${typeName(rec.value)}`, {
          where: rec.origin,
          hint: 'Write each sample as an object, e.g. {"instruction": …, "input": "", "output": …}.',
        }),
      ],
    };
  }
  let format: FormatName;
  if (given === "auto") {
    const found = detectFormat(rec.value);
    if (!found) {
      const keys = Object.keys(rec.value);
      const guesses = keys.map((k) => [k, nearest(k, ALL_KEYS)] as const).filter(([k, g]) => g && g !== k);
      return {
        errors: [
          new LorakitError(
            "DATA_UNKNOWN_FORMAT",
            `cannot tell the sample's format from its keys (${keys.join(", ") || "none"})`,
            {
              where: rec.origin,
              hint: guesses.length
                ? `Did you mean ${guesses.map(([k, g]) => `\`${g}\` for \`${k}\``).join(", ")}?`
                : "Use alpaca (instruction/input/output), messages, sharegpt or ChatGLM3 conversations; or set data.format.",
            },
          ),
        ],
      };
    }
    format = found;
  } else {
    format = given;
  }
  const check = new Check(rec.origin, rec.value);
  const conversation = normalizeOne(check, format, opts);
  return { format, ...(conversation ? { conversation } : {}), errors: check.errors };
}

/** The format of each file, from its first record: a later record in another format is refused. */
export class FileFormats {
  readonly formats: Record<string, FormatName> = {};
  private readonly first: Record<string, number> = {};

  constructor(private readonly given: DataFormat = "auto") {}

  /** Records the record's format; the error when it differs from its file's (the record is then left out). */
  check(origin: Origin, format: FormatName): LorakitError | undefined {
    const { file, line } = origin;
    if (this.given !== "auto") {
      this.formats[file] ??= format;
      return undefined;
    }
    const had = this.formats[file];
    if (had && had !== format) {
      return new LorakitError(
        "DATA_MIXED_FORMATS",
        `this sample is in ${format} format, but the file's first sample (line ${this.first[file]}) is ${had}`,
        {
          where: origin,
          hint: "Keep one format per file: convert this sample, or move it to its own file.",
        },
      );
    }
    if (!had) {
      this.formats[file] = format;
      this.first[file] = line;
    }
    return undefined;
  }
}

/** Normalize raw records; throws one LorakitError listing every problem found. */
export function normalizeRecords(records: readonly RawRecord[], opts: NormalizeOptions = {}): Normalized {
  const files = new FileFormats(opts.format ?? "auto");
  const conversations: Conversation[] = [];
  const errors: LorakitError[] = [];
  for (const rec of records) {
    const r = normalizeRecord(rec, opts);
    if (r.format) {
      const mixed = files.check(rec.origin, r.format);
      if (mixed) {
        errors.push(mixed);
        continue;
      }
    }
    if (r.conversation) conversations.push(r.conversation);
    errors.push(...r.errors);
  }
  if (errors.length > 0) throw errorFromList(errors);
  return { conversations, formats: files.formats };
}
