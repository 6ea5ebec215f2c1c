// Real-world sample shapes for the data fuzzers: the Self-LLM huanhuan.json alpaca records, ShareGPT dumps,
// OpenAI `messages` with tools, ChatGLM3 `conversations` (tools, metadata, observations, `loss`); and the ways
// people save them — a pretty or one-line JSON array, JSON Lines with LF or CRLF, with or without a BOM.
import fc from "fast-check";
import { type Json, nastyString } from "./harness.js";

/** Text people train on: Chinese dialogue, English, code, emoji, and the odd character that breaks things. */
export const text = (max = 40) =>
  fc.oneof(
    { weight: 3, arbitrary: fc.string({ unit: "grapheme", minLength: 1, maxLength: max }) },
    {
      weight: 3,
      arbitrary: fc.constantFrom(
        "小姐，别的秀女都在求中选，唯有咱们小姐想被撂牌子，菩萨一定记得真真儿的——",
        "嘘——都说许愿说破是不灵的。",
        "你是谁？",
        "家父是大理寺少卿甄远道。",
        "What is 2+2?",
        "4",
        "```python\nprint('hi')\n```",
        "Rain writes on the window in a language of glass.",
        "line one\nline two\r\nline three",
        "  leading and trailing spaces  ",
      ),
    },
    { weight: 2, arbitrary: nastyString(max).filter((s) => s.trim().length > 0) },
  );

const tool = fc.record({
  name: fc.constantFrom("get_weather", "search", "calc"),
  description: text(20),
  parameters: fc.constant({ type: "object", properties: { city: { type: "string" } }, required: ["city"] }),
});

/** A conversation's turns: an optional system turn, then user/assistant pairs (the last answer non-empty). */
const dialogue = fc.record({
  system: fc.option(text(30), { nil: undefined }),
  pairs: fc.array(fc.tuple(text(), text()), { minLength: 1, maxLength: 4 }),
});

export const alpaca: fc.Arbitrary<Json> = fc
  .record({
    instruction: text(),
    input: fc.oneof(fc.constant(""), text()),
    output: text(),
    system: fc.option(text(), { nil: undefined }),
    history: fc.option(fc.array(fc.tuple(text(), text()), { maxLength: 2 }), { nil: undefined }),
  })
  .map((r) => {
    const out: Record<string, Json> = { instruction: r.instruction, input: r.input, output: r.output };
    if (r.system !== undefined) out.system = r.system;
    if (r.history !== undefined) out.history = r.history;
    return out;
  });

export const sharegpt: fc.Arbitrary<Json> = dialogue.map((d) => {
  const out: Record<string, Json> = {
    conversations: d.pairs.flatMap(([q, a]) => [
      { from: "human", value: q },
      { from: "gpt", value: a },
    ]),
  };
  if (d.system !== undefined) out.system = d.system;
  return out;
});

export const messages: fc.Arbitrary<Json> = fc
  .record({ d: dialogue, tools: fc.option(fc.array(tool, { minLength: 1, maxLength: 2 }), { nil: undefined }) })
  .map(({ d, tools }) => {
    const turns: Json[] = d.system !== undefined ? [{ role: "system", content: d.system }] : [];
    d.pairs.forEach(([q, a], i) => {
      turns.push({ role: "user", content: q });
      if (tools && i === 0) {
        turns.push({ role: "assistant", content: `tool_call(city='${q.slice(0, 4)}')`, metadata: "get_weather" });
        turns.push({ role: "tool", content: '{"sky": "sunny"}' });
      }
      turns.push({ role: "assistant", content: a });
    });
    const out: Record<string, Json> = { messages: turns };
    if (tools) out.tools = tools as unknown as Json;
    return out;
  });

export const chatglm3: fc.Arbitrary<Json> = fc
  .record({
    d: dialogue,
    tools: fc.option(fc.array(tool, { minLength: 1, maxLength: 2 }), { nil: undefined }),
    losses: fc.array(fc.option(fc.boolean(), { nil: undefined }), { maxLength: 8 }),
  })
  .map(({ d, tools, losses }) => {
    const turns: Record<string, Json>[] = [];
    if (d.system !== undefined || tools)
      turns.push({
        role: "system",
        content: d.system ?? "You can call tools.",
        ...(tools ? { tools: tools as unknown as Json } : {}),
      });
    d.pairs.forEach(([q, a], i) => {
      turns.push({ role: "user", content: q });
      if (tools && i === 0) {
        turns.push({ role: "assistant", metadata: "get_weather", content: "```python\ntool_call(city='北京')\n```" });
        turns.push({ role: "observation", content: '{"sky": "sunny"}' });
      }
      const turn: Record<string, Json> = { role: "assistant", content: a };
      const loss = losses[i];
      // Only earlier answers may opt out: the last one is always learned, so the record keeps a trained turn.
      if (loss !== undefined && (loss || i < d.pairs.length - 1)) turn.loss = loss;
      turns.push(turn);
    });
    return { conversations: turns };
  });

export const FORMATS = { alpaca, sharegpt, messages, conversations: chatglm3 } as const;

/** Records of one format (one file keeps to one format). */
export const recordsOfOneFormat = fc
  .constantFrom(...(Object.keys(FORMATS) as (keyof typeof FORMATS)[]))
  .chain((format) => fc.array(FORMATS[format], { minLength: 1, maxLength: 6 }).map((records) => ({ format, records })));

/** How a file of samples is written. */
export interface Layout {
  kind: "array" | "one-line-array" | "jsonl";
  indent: number | "\t";
  crlf: boolean;
  bom: boolean;
  blankLines: boolean;
  trailingNewline: boolean;
}

export const layout: fc.Arbitrary<Layout> = fc.record({
  kind: fc.constantFrom("array", "one-line-array", "jsonl"),
  indent: fc.constantFrom<number | "\t">(1, 2, 4, "\t"),
  crlf: fc.boolean(),
  bom: fc.boolean(),
  blankLines: fc.boolean(),
  trailingNewline: fc.boolean(),
});

/** The file's text, and for JSON Lines the 1-based line of each record. */
export function serialize(records: readonly Json[], l: Layout): { text: string; lines?: number[] } {
  const nl = l.crlf ? "\r\n" : "\n";
  let body: string;
  let lines: number[] | undefined;
  if (l.kind === "jsonl") {
    const out: string[] = [];
    lines = [];
    for (const r of records) {
      if (l.blankLines) out.push(l.crlf ? " \t" : "");
      out.push(JSON.stringify(r));
      lines.push(out.length);
    }
    body = out.join(nl);
  } else if (l.kind === "one-line-array") {
    body = JSON.stringify(records);
    lines = records.map(() => 1);
  } else {
    body = JSON.stringify(records, null, l.indent).replaceAll("\n", nl);
  }
  return { text: `${l.bom ? "\uFEFF" : ""}${body}${l.trailingNewline ? nl : ""}`, lines };
}
