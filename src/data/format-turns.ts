// One record of each sample format checked and turned into messages: alpaca, OpenAI `messages`, ShareGPT
// `conversations` and ChatGLM3's `conversations` with its tool turns; every problem located (formats.ts).
import { LorakitError, nearest } from "../errors.js";
import {
  type Conversation,
  type DataFormat,
  type FormatName,
  type Message,
  type Role,
  trains,
} from "./conversation.js";
import type { Origin } from "./read.js";

const FORMAT_KEYS: Record<FormatName, string[]> = {
  alpaca: ["instruction", "input", "output", "system", "history"],
  messages: ["messages", "tools"],
  sharegpt: ["conversations", "system", "tools"],
  conversations: ["conversations", "tools"],
};
export const ALL_KEYS = [...new Set(Object.values(FORMAT_KEYS).flat())];
/** Keys with a meaning somewhere in a record: never suggested as a typo of another key. */
const KNOWN_KEYS = new Set([
  ...ALL_KEYS,
  ...["role", "content", "loss", "metadata", "from", "value", "name", "parameters", "observation", "tool_calls"],
]);

const SHAREGPT_ROLES: Record<string, Role> = {
  human: "user",
  user: "user",
  gpt: "assistant",
  assistant: "assistant",
  system: "system",
  function_call: "assistant",
  observation: "observation",
  tool: "observation",
};

/** ChatGLM3's default system prompt when a sample offers tools without a system message. */
export const CHATGLM3_TOOLS_SYSTEM =
  "Answer the following questions as best as you can. You have access to the following tools:";

export const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

export function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

/** Python's repr for the JSON values of a tool call's parameters (ChatGLM3 writes `tool_call(k=repr(v))`). */
function pyRepr(v: unknown): string {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number") return String(v);
  if (typeof v === "string") {
    const q = v.includes("'") && !v.includes('"') ? '"' : "'";
    const body = v
      .replace(/\\/g, "\\\\")
      .replace(/\n/g, "\\n")
      .replace(/\r/g, "\\r")
      .replace(/\t/g, "\\t")
      .replace(q === "'" ? /'/g : /"/g, `\\${q}`);
    return `${q}${body}${q}`;
  }
  if (Array.isArray(v)) return `[${v.map(pyRepr).join(", ")}]`;
  if (isObject(v))
    return `{${Object.entries(v)
      .map(([k, x]) => `${pyRepr(k)}: ${pyRepr(x)}`)
      .join(", ")}}`;
  return String(v);
}

/** Python's `json.dumps(v, ensure_ascii=False)`: separators ", " and ": " (ChatGLM3 dumps observations so). */
export function pyJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(pyJson).join(", ")}]`;
  if (isObject(v))
    return `{${Object.entries(v)
      .map(([k, x]) => `${JSON.stringify(k)}: ${pyJson(x)}`)
      .join(", ")}}`;
  return JSON.stringify(v ?? null);
}

/** Collects the problems of one record. */
export class Check {
  readonly errors: LorakitError[] = [];
  /** The key path each message came from (for errors found after normalizing). */
  readonly keyOf = new Map<Message, string>();
  constructor(
    readonly origin: Origin,
    readonly record: Record<string, unknown>,
  ) {}

  fail(code: string, key: string | undefined, message: string, hint: string): void {
    this.errors.push(new LorakitError(code, message, { where: { ...this.origin, key }, hint }));
  }

  missing(key: string, where: Record<string, unknown>, path: string, fmt: string): void {
    const guess = Object.keys(where).find((k) => !KNOWN_KEYS.has(k) && nearest(k, [key]) === key);
    const full = path ? `${path}.${key}` : key;
    this.fail(
      "DATA_MISSING_FIELD",
      full,
      `${fmt} sample lacks \`${full}\``,
      guess !== undefined
        ? `Found \`${guess}\` — did you mean \`${key}\`? Rename the key.`
        : `Add \`${key}\` (keys found: ${Object.keys(where).join(", ") || "none"}).`,
    );
  }

  /** A string field; `required` reports absence, otherwise undefined/null pass as undefined. */
  str(where: Record<string, unknown>, key: string, path: string, fmt: string, required: boolean): string | undefined {
    const v = where[key];
    if (v === undefined || (v === null && !required)) {
      if (required) this.missing(key, where, path, fmt);
      return undefined;
    }
    if (typeof v !== "string") {
      const full = path ? `${path}.${key}` : key;
      this.fail(
        "DATA_BAD_TYPE",
        full,
        `\`${full}\` must be a string, found ${typeName(v)}`,
        "Write the value as a JSON string.",
      );
      return undefined;
    }
    return v;
  }

  role(value: unknown, key: string, allowed: Record<string, Role>): Role | undefined {
    if (typeof value !== "string") {
      if (value === undefined)
        this.fail(
          "DATA_MISSING_FIELD",
          key,
          `\`${key}\` is missing`,
          `Give each turn a role: one of ${Object.keys(allowed).join(", ")}.`,
        );
      else
        this.fail(
          "DATA_BAD_TYPE",
          key,
          `\`${key}\` must be a string, found ${typeName(value)}`,
          `Use one of ${Object.keys(allowed).join(", ")}.`,
        );
      return undefined;
    }
    const role = allowed[value];
    if (role) return role;
    const guess = nearest(value, Object.keys(allowed));
    this.fail(
      "DATA_BAD_ROLE",
      key,
      `unknown role "${value}" at \`${key}\``,
      `${guess ? `Did you mean "${guess}"? ` : ""}Roles allowed here: ${Object.keys(allowed).join(", ")}.`,
    );
    return undefined;
  }

  list(key: string, fmt: string): unknown[] | undefined {
    const v = this.record[key];
    if (v === undefined) {
      this.missing(key, this.record, "", fmt);
      return undefined;
    }
    if (!Array.isArray(v)) {
      this.fail(
        "DATA_BAD_TYPE",
        key,
        `\`${key}\` must be a list of turns, found ${typeName(v)}`,
        "Write the turns as a JSON array.",
      );
      return undefined;
    }
    if (v.length === 0)
      this.fail(
        "DATA_NO_ASSISTANT",
        key,
        `\`${key}\` is empty`,
        "Give the sample at least a user turn and an assistant answer.",
      );
    return v;
  }

  turn(v: unknown, key: string): Record<string, unknown> | undefined {
    if (isObject(v)) return v;
    this.fail(
      "DATA_BAD_TYPE",
      key,
      `\`${key}\` must be an object, found ${typeName(v)}`,
      "Each turn is an object with a role and its content.",
    );
    return undefined;
  }

  loss(turn: Record<string, unknown>, key: string): boolean | undefined {
    const v = turn.loss;
    if (v === undefined || v === null) return undefined;
    if (typeof v === "boolean") return v;
    this.fail(
      "DATA_BAD_TYPE",
      `${key}.loss`,
      `\`${key}.loss\` must be true or false, found ${typeName(v)}`,
      "Use a JSON boolean.",
    );
    return undefined;
  }
}

/** Roles of `messages` and ChatGLM3 `conversations` turns (OpenAI's `tool` is ChatGLM3's `observation`). */
const TURN_ROLES: Record<string, Role> = {
  system: "system",
  user: "user",
  assistant: "assistant",
  tool: "tool",
  observation: "observation",
};

function alpaca(c: Check, system: string | undefined): Message[] {
  const r = c.record;
  const messages: Message[] = [];
  const instruction = c.str(r, "instruction", "", "alpaca", true);
  const input = c.str(r, "input", "", "alpaca", false);
  const output = c.str(r, "output", "", "alpaca", true);
  const own = c.str(r, "system", "", "alpaca", false);
  const sys = own ?? system;
  if (sys) messages.push({ role: "system", content: sys, ...(own !== undefined ? { key: "system" } : {}) });
  const history = r.history;
  if (history !== undefined && history !== null) {
    if (!Array.isArray(history)) {
      c.fail(
        "DATA_BAD_TYPE",
        "history",
        `\`history\` must be a list of [question, answer] pairs, found ${typeName(history)}`,
        'Write it as [["q", "a"], ...].',
      );
    } else {
      history.forEach((pair, i) => {
        if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== "string" || typeof pair[1] !== "string") {
          c.fail(
            "DATA_BAD_TYPE",
            `history[${i}]`,
            `\`history[${i}]\` must be a [question, answer] pair of strings`,
            'Write it as ["question", "answer"].',
          );
          return;
        }
        const a: Message = { role: "assistant", content: pair[1], key: `history[${i}][1]` };
        c.keyOf.set(a, `history[${i}][1]`);
        messages.push({ role: "user", content: pair[0], key: `history[${i}][0]` }, a);
      });
    }
  }
  if (instruction !== undefined && output !== undefined) {
    const user = [instruction, input ?? ""].filter((s) => s.length > 0).join("\n");
    if (!user.trim())
      c.fail(
        "DATA_EMPTY_PROMPT",
        "instruction",
        "`instruction` and `input` are both empty",
        "Give the sample a question or task in `instruction`.",
      );
    const a: Message = { role: "assistant", content: output, key: "output" };
    c.keyOf.set(a, "output");
    messages.push({ role: "user", content: user, key: "instruction" }, a);
  }
  return messages;
}

function toolsOf(c: Check, v: unknown, key: string): unknown {
  if (typeof v !== "string") return v;
  try {
    return JSON.parse(v);
  } catch {
    c.fail(
      "DATA_BAD_TYPE",
      key,
      `\`${key}\` is a string that is not JSON`,
      "Give the tools as a JSON list (or a string holding one).",
    );
    return undefined;
  }
}

/** The first finetune_demo's tool turn: the call (an assistant message with metadata) and its observation. */
function oldToolTurn(c: Check, turn: Record<string, unknown>, key: string, fmt: string): Message[] {
  const loss = c.loss(turn, key);
  const name = c.str(turn, "name", key, fmt, true);
  const params = turn.parameters;
  if (!isObject(params)) {
    c.fail(
      "DATA_BAD_TYPE",
      `${key}.parameters`,
      `\`${key}.parameters\` must be an object of arguments, found ${typeName(params)}`,
      'Write the arguments as {"name": value}.',
    );
    return [];
  }
  if (name === undefined) return [];
  const args = Object.entries(params)
    .map(([k, v]) => `${k}=${pyRepr(v)}`)
    .join(", ");
  const call: Message = {
    role: "assistant",
    content: `\`\`\`python\ntool_call(${args})\n\`\`\``,
    metadata: name,
    key,
  };
  if (loss !== undefined) call.loss = loss;
  c.keyOf.set(call, `${key}.parameters`);
  const obs = turn.observation;
  // The observation is never learned (the `loss` flag is the call's).
  return [call, { role: "observation", content: typeof obs === "string" ? obs : pyJson(obs), key }];
}

/**
 * The turns of OpenAI `messages` or ChatGLM3 `conversations`: role, content, loss, and the tool format
 * (metadata, a system turn's tools, observation turns, the old `tool` turn).
 */
function roleTurns(c: Check, listKey: "messages" | "conversations"): Message[] {
  const fmt = listKey;
  const turns = c.list(listKey, fmt) ?? [];
  const out: Message[] = [];
  turns.forEach((t, i) => {
    const key = `${listKey}[${i}]`;
    const turn = c.turn(t, key);
    if (!turn) return;
    const role = c.role(turn.role, `${key}.role`, TURN_ROLES);
    if (turn.tool_calls !== undefined && turn.tool_calls !== null) {
      c.fail(
        "DATA_UNSUPPORTED",
        `${key}.tool_calls`,
        "OpenAI `tool_calls` are not supported yet",
        "Write each call as an assistant turn with `metadata` = the tool's name and the call as its content, then an `observation` turn with the result.",
      );
      return;
    }
    if (!role) return;
    if (role === "tool" && ("parameters" in turn || "observation" in turn)) {
      out.push(...oldToolTurn(c, turn, key, fmt));
      return;
    }
    const content = c.str(turn, "content", key, fmt, true);
    const metadata = c.str(turn, "metadata", key, fmt, false);
    const loss = c.loss(turn, key);
    let tools: unknown;
    if (turn.tools !== undefined && turn.tools !== null) {
      if (role === "system") tools = toolsOf(c, turn.tools, `${key}.tools`);
      else
        c.fail(
          "DATA_BAD_KEY",
          `${key}.tools`,
          `\`${key}.tools\` is on a ${role} turn: tool definitions belong to a system turn`,
          "Move `tools` to the system turn (or to the record's top level).",
        );
    }
    if (content === undefined) return;
    const m: Message = { role, content, key };
    if (loss !== undefined) m.loss = loss;
    if (metadata) m.metadata = metadata;
    if (tools !== undefined) m.tools = tools;
    c.keyOf.set(m, `${key}.content`);
    out.push(m);
  });
  return out;
}

function sharegpt(c: Check, system: string | undefined): Message[] {
  const turns = c.list("conversations", "sharegpt") ?? [];
  const out: Message[] = [];
  const own = c.str(c.record, "system", "", "sharegpt", false);
  const sys = own ?? system;
  if (sys && !turns.some((t) => isObject(t) && t.from === "system"))
    out.push({ role: "system", content: sys, ...(own !== undefined ? { key: "system" } : {}) });
  turns.forEach((t, i) => {
    const key = `conversations[${i}]`;
    const turn = c.turn(t, key);
    if (!turn) return;
    const role = c.role(turn.from, `${key}.from`, SHAREGPT_ROLES);
    const content = c.str(turn, "value", key, "sharegpt", true);
    if (!role || content === undefined) return;
    const m: Message = { role, content, key };
    c.keyOf.set(m, `${key}.value`);
    out.push(m);
  });
  return out;
}

/** The one Conversation a record holds (its problems pushed onto `errors`). */
export function normalizeOne(c: Check, format: FormatName, opts: NormalizeOptions): Conversation | undefined {
  const system = opts.system;
  let messages: Message[];
  switch (format) {
    case "alpaca":
      messages = alpaca(c, system);
      break;
    case "messages":
    case "conversations":
      messages = roleTurns(c, format);
      break;
    case "sharegpt":
      messages = sharegpt(c, system);
      break;
  }
  const top = c.record.tools;
  const tools = format !== "alpaca" && top !== undefined && top !== null ? toolsOf(c, top, "tools") : undefined;
  if (format !== "alpaca" && format !== "sharegpt" && system && !messages.some((m) => m.role === "system"))
    messages.unshift({ role: "system", content: system });
  if (c.errors.length > 0) return undefined;
  const listKey = format === "alpaca" ? "output" : format === "messages" ? "messages" : "conversations";
  for (const m of messages) {
    // A tool call may have no text after its metadata (the call is the name); an answer may not be empty.
    if (m.role === "assistant" && trains(m) && !m.content.trim() && !m.metadata) {
      c.fail(
        "DATA_EMPTY_RESPONSE",
        c.keyOf.get(m),
        "the assistant's answer is empty",
        "Write the answer the model should learn, or remove the sample (an empty answer teaches the model to say nothing).",
      );
    }
  }
  if (!opts.prompt && !messages.some(trains)) {
    c.fail(
      "DATA_NO_ASSISTANT",
      listKey,
      "the sample has no assistant turn to learn from",
      "Add an assistant answer (or remove `loss: false` from one).",
    );
  }
  if (c.errors.length > 0) return undefined;
  return { messages, ...(tools !== undefined ? { tools } : {}), origin: c.origin };
}

export interface NormalizeOptions {
  format?: DataFormat;
  /** Default system prompt for samples that carry none. */
  system?: string;
  /** Conversations to prompt with, not to train on: no turn needs to be learned (`lorakit tokenize --chat`). */
  prompt?: boolean;
}
