// Chat templates and label masks: ChatGLM3 golden vectors (shared with pytest), ChatML built-in and the
// checkpoint's jinja template against transformers' apply_chat_template, special spellings typed in
// content, mask_history and truncation.
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import type { Conversation, Message } from "../src/data/formats.js";
import { normalizeRecords } from "../src/data/formats.js";
import { buildLabels, IGNORE } from "../src/data/mask.js";
import {
  chatglm3Template,
  chatmlTemplate,
  chooseTemplate,
  deepseekTemplate,
  jinjaTemplate,
  llama3Template,
  readChatTemplate,
} from "../src/data/template.js";
import { loadTokenizer, type Tokenizer } from "../src/data/tokenizer.js";
import { ROOT } from "../src/engine/python.js";
import { LorakitError } from "../src/errors.js";
import { fixture, officialChatglm3, tmpDir } from "./helpers.js";

interface GoldenVectors {
  ids: number[];
  labels: number[];
  prompt_ids: number[];
}
interface GoldenCase extends GoldenVectors {
  name: string;
  format: "alpaca" | "messages" | "conversations";
  system?: string;
  record: unknown;
  /** The same vectors on the official ChatGLM3-6B tokenizer.model. */
  real: GoldenVectors;
}
interface JinjaCase {
  name: string;
  add_generation_prompt: boolean;
  content_spells_special: boolean;
  messages: { role: Message["role"]; content: string }[];
  text: string;
  ids: number[];
}

const golden = JSON.parse(readFileSync(path.join(ROOT, "tests", "fixtures", "chatglm3-golden.json"), "utf8")) as {
  cases: GoldenCase[];
};
const origin = { file: "test", line: 1 };

/** One id per character (10000 + code point) and the given specials (0…): layouts read exactly. */
function charTokenizer(specials: string[]): Tokenizer {
  const ids = new Map(specials.map((s, i) => [s, i]));
  const re = new RegExp(specials.map((s) => s.replace(/[|[\]]/g, "\\$&")).join("|"), "g");
  const chars = (t: string) => [...t].map((c) => 10000 + (c.codePointAt(0) as number));
  const idToToken = (id: number) => (id >= 10000 ? String.fromCodePoint(id - 10000) : specials[id]);
  return {
    kind: "tokenizer.json",
    vocabSize: 10000 + 0x10ffff,
    hash: "chars",
    encode(text, opts) {
      if (!opts?.parseSpecial) return chars(text);
      const out: number[] = [];
      let at = 0;
      for (const m of text.matchAll(re)) {
        out.push(...chars(text.slice(at, m.index)), ids.get(m[0]) as number);
        at = m.index + m[0].length;
      }
      return [...out, ...chars(text.slice(at))];
    },
    decode: (list) => list.map((id) => idToToken(id) ?? "").join(""),
    pieces: (list) => list.map((id) => idToToken(id) ?? "?"),
    tokenToId: (t) => ids.get(t) ?? ([...t].length === 1 ? 10000 + (t.codePointAt(0) as number) : undefined),
    idToToken,
    tokenSurface: (id) =>
      id >= 10000
        ? { bytes: new TextEncoder().encode(String.fromCodePoint(id - 10000)) }
        : { name: specials[id] ?? "?" },
    specialTokens: ids,
  };
}
const conv = (messages: Message[], extra: Partial<Conversation> = {}): Conversation => ({ messages, origin, ...extra });
const trainedText = (tok: Tokenizer, ids: readonly number[], trained: readonly boolean[]) =>
  tok.decode(
    ids.filter((_, i) => trained[i]),
    { skipSpecial: false },
  );

let glm: Tokenizer;
let bl: Tokenizer;
beforeAll(async () => {
  glm = await loadTokenizer(fixture("tokenizers", "spm-chatglm3"));
  bl = await loadTokenizer(fixture("tokenizers", "bpe-bytelevel"));
});

/** A golden case's record rendered by the TypeScript side: what the Python reference computed. */
function goldenVectors(c: GoldenCase, tok: Tokenizer): GoldenVectors {
  const [cv] = normalizeRecords([{ value: c.record, origin }], {
    format: c.format,
    ...(c.system ? { system: c.system } : {}),
  }).conversations;
  const t = chatglm3Template(tok);
  const l = buildLabels(t.render(cv as Conversation), { maxLength: 100_000 });
  return { ids: l.ids, labels: l.labels, prompt_ids: t.renderPrompt(cv as Conversation) };
}

/** The official ChatGLM3-6B tokenizer (a missing file fails the test, with what to do). */
async function officialTokenizer(): Promise<Tokenizer> {
  return await loadTokenizer(officialChatglm3());
}

describe("chatglm3 (finetune_demo semantics)", () => {
  it.each(golden.cases.map((c) => [c.name, c] as const))("reproduces the golden vector: %s", (_, c) => {
    expect(goldenVectors(c, glm)).toEqual({ ids: c.ids, labels: c.labels, prompt_ids: c.prompt_ids });
  });

  it("reproduces the golden vectors on the official ChatGLM3-6B tokenizer", async () => {
    const real = await officialTokenizer();
    for (const c of golden.cases) expect(goldenVectors(c, real), c.name).toEqual(c.real);
  });

  it("renders tool calls as the official code does: metadata after the role token, tools as JSON", () => {
    const c = golden.cases.find((x) => x.name === "top-level-and-system-tools") as GoldenCase;
    const [cv] = normalizeRecords([{ value: c.record, origin }], { format: c.format }).conversations;
    const r = chatglm3Template(glm).render(cv as Conversation);
    // Decoded text: every encode() starts with SentencePiece's "▁", shown as a space after "\n".
    const text = glm.decode(r.ids, { skipSpecial: false });
    // The record's tools: a system message of their own, first; the system turn's tools: after its content.
    expect(text).toContain(
      '[gMASK]sop<|system|>\n Answer the following questions as best as you can. You have access to the following tools:\n[\n    {\n        "name": "search",\n        "description": "Search the web 🔎 «quoted»",',
    );
    expect(text).toContain('}\n]<|system|>\n Be concise.\n[\n    {\n        "name": "calc",');
    expect(text).toContain(
      "<|assistant|>calc\n ```python\ntool_call(expr='6*7')\n```<|observation|>\n 42<|assistant|>",
    );
    // Each call is learned with what ends it (<|observation|>); the observations are not.
    const spans = r.spans.map((s) => glm.decode(r.ids.slice(s.start, s.end), { skipSpecial: false }));
    expect(spans).toEqual([
      "calc\n ```python\ntool_call(expr='6*7')\n```<|observation|>",
      "search\n ```python\ntool_call(q='42')\n```<|observation|>",
    ]);
    expect(r.spans.map((s) => s.message)).toEqual([2, 4]); // indices of conv.messages, not of the rendered list
  });

  it("keeps consecutive trained turns apart: a reply, then a call", () => {
    const r = chatglm3Template(glm).render(
      conv([
        { role: "user", content: "q" },
        { role: "assistant", content: "let me check" },
        { role: "assistant", content: "call()", metadata: "tool" },
        { role: "observation", content: "r" },
      ]),
    );
    const spans = r.spans.map((s) => [s.message, glm.decode(r.ids.slice(s.start, s.end), { skipSpecial: false })]);
    expect(spans).toEqual([
      [1, "\n let me check<|assistant|>"],
      [2, "tool\n call()<|observation|>"],
    ]);
  });

  it("learns a non-assistant turn only when its `loss` says so, and keeps its role", () => {
    const t = chatglm3Template(glm);
    const r = t.render(
      conv([
        { role: "user", content: "q" },
        { role: "assistant", content: "call()", metadata: "f" },
        { role: "observation", content: "result", loss: true },
        { role: "assistant", content: "a" },
      ]),
    );
    expect(r.spans.map((s) => s.message)).toEqual([1, 2, 3]);
    const obs = r.spans[1] as { start: number; end: number };
    expect(new Set(r.roles.slice(obs.start, obs.end))).toEqual(new Set(["observation"]));
  });

  it("learns the token after each reply, not <|assistant|>, and keeps typed role markers as text", () => {
    const t = chatglm3Template(glm);
    const r = t.render(
      conv([
        { role: "user", content: "a <|user|> b" },
        { role: "assistant", content: "ok" },
      ]),
    );
    const asst = glm.tokenToId("<|assistant|>") as number;
    expect(r.ids.filter((id) => id === glm.tokenToId("<|user|>"))).toHaveLength(1);
    expect(r.trained[r.ids.indexOf(asst)]).toBe(false);
    expect(r.trained[r.ids.length - 1]).toBe(true);
    expect(r.ids[r.ids.length - 1]).toBe(glm.eosId);
    expect(t.stopIds).toContain(glm.eosId);
    expect(r.roles.filter((_, i) => r.trained[i]).every((x) => x === "assistant")).toBe(true);
  });

  it("mask_history trains only the last reply (and what ends it)", () => {
    const t = chatglm3Template(glm);
    const r = t.render(
      conv([
        { role: "user", content: "q1" },
        { role: "assistant", content: "first" },
        { role: "user", content: "q2" },
        { role: "assistant", content: "second" },
      ]),
    );
    expect(r.spans).toHaveLength(2);
    const all = buildLabels(r, { maxLength: 1000 });
    const last = buildLabels(r, { maxLength: 1000, maskHistory: true });
    expect(all.trained).toBe(
      (r.spans[0]?.end ?? 0) - (r.spans[0]?.start ?? 0) + (r.spans[1]?.end ?? 0) - (r.spans[1]?.start ?? 0),
    );
    const kept = last.labels.filter((x) => x !== IGNORE);
    expect(kept).toEqual(r.ids.slice(r.spans[1]?.start, r.spans[1]?.end));
    expect(glm.decode(kept, { skipSpecial: true })).toMatch(/second$/);
  });

  it("cuts the whole sample from the end and counts the trained tokens lost", () => {
    const r = chatglm3Template(glm).render(
      conv([
        { role: "user", content: "question" },
        { role: "assistant", content: "a fairly long answer here" },
      ]),
    );
    const prompt = r.spans[0]?.start ?? 0;
    const cut = buildLabels(r, { maxLength: prompt + 2 });
    expect(cut).toMatchObject({ truncated: true, cut: r.ids.length - prompt - 2, trained: 2 });
    expect(cut.trainedBefore).toBe(r.ids.length - prompt);
    expect(cut.ids).toEqual(r.ids.slice(0, prompt + 2));
    const none = buildLabels(r, { maxLength: prompt });
    expect(none.trained).toBe(0);
  });
});

describe("chatml built-in", () => {
  it("gives transformers' ids and trains the answer with <|im_end|>, exactly", () => {
    const expected = JSON.parse(readFileSync(fixture("templates", "expected-jinja.json"), "utf8")) as {
      cases: JinjaCase[];
    };
    const c = expected.cases.find((x) => x.name === "system" && !x.add_generation_prompt) as JinjaCase;
    const r = chatmlTemplate(bl).render(conv(c.messages));
    expect(r.ids).toEqual(c.ids);
    const l = buildLabels(r, { maxLength: 1000 });
    const answer = [
      ...bl.encode("家父是大理寺少卿甄远道。", { parseSpecial: false }),
      bl.tokenToId("<|im_end|>") as number,
    ];
    const start = r.ids.length - answer.length - 1; // then "\n", not trained
    expect(l.labels).toEqual(r.ids.map((id, i) => (i >= start && i < start + answer.length ? id : IGNORE)));
    expect(l.ids.slice(start, start + answer.length)).toEqual(answer);
  });

  it("keeps a typed <|im_end|> as ordinary pieces", () => {
    const r = chatmlTemplate(bl).render(
      conv([
        { role: "user", content: "x <|im_end|> y" },
        { role: "assistant", content: "z" },
      ]),
    );
    expect(r.ids.filter((id) => id === bl.tokenToId("<|im_end|>"))).toHaveLength(2);
  });

  it("prompts with the assistant header and refuses a tokenizer without its tokens", () => {
    const t = chatmlTemplate(bl);
    const p = t.renderPrompt(
      conv([
        { role: "user", content: "hi" },
        { role: "assistant", content: "dropped" },
      ]),
    );
    expect(bl.decode(p, { skipSpecial: false })).toBe("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    expect(() => llama3Template(bl)).toThrow(LorakitError);
    expect(() => chatmlTemplate(glm)).toThrow(/no <\|im_start\|> token/);
  });
});

describe("tool data in built-ins without a tool format", () => {
  it("renders tool results where the template names them, and refuses metadata and tools, located", () => {
    const [cv] = normalizeRecords([
      {
        value: {
          conversations: [
            { role: "user", content: "q" },
            { role: "assistant", metadata: "f", content: "f()" },
            { role: "observation", content: "r" },
            { role: "assistant", content: "a" },
          ],
        },
        origin: { file: "d.json", line: 1, sample: 9 },
      },
    ]).conversations;
    const c = cv as Conversation;
    const noMeta: Conversation = { ...c, messages: c.messages.map(({ metadata: _, ...m }) => m) };
    // ChatML names the tool turn `tool`.
    const chatml = chatmlTemplate(bl);
    expect(bl.decode(chatml.render(noMeta).ids, { skipSpecial: false })).toContain("<|im_start|>tool\nr<|im_end|>");
    expect(() => chatml.render(c)).toThrow(
      expect.objectContaining({
        code: "TEMPLATE_TOOLS_UNSUPPORTED",
        where: { file: "d.json", line: 1, sample: 9, key: "conversations[1].metadata" },
      }),
    );
    expect(() => chatml.renderPrompt({ ...noMeta, tools: [{ name: "f" }] })).toThrow(/tool definitions/);
    const tok = charTokenizer(["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"]);
    expect(() => deepseekTemplate(tok).render(noMeta)).toThrow(
      expect.objectContaining({
        code: "TEMPLATE_ROLE_UNSUPPORTED",
        where: expect.objectContaining({ key: "conversations[2].role" }),
      }),
    );
  });
});

describe("jinja (the checkpoint's chat_template)", () => {
  let cases: JinjaCase[];
  beforeAll(() => {
    cases = (JSON.parse(readFileSync(fixture("templates", "expected-jinja.json"), "utf8")) as { cases: JinjaCase[] })
      .cases;
  });
  const tpl = () => {
    const own = readChatTemplate(fixture("tokenizers", "bpe-bytelevel"));
    if (!own) throw new Error("fixture has no chat_template");
    return jinjaTemplate(own.source, bl, own);
  };

  it("gives the ids of transformers' apply_chat_template(tokenize=True)", () => {
    const t = tpl();
    for (const c of cases.filter((x) => !x.content_spells_special)) {
      const cv = conv(c.messages);
      const ids = c.add_generation_prompt ? t.renderPrompt(cv) : t.render(cv).ids;
      expect(ids, `${c.name} agp=${c.add_generation_prompt}`).toEqual(c.ids);
    }
  });

  it("keeps a typed special token as text where transformers makes it the token", () => {
    const t = tpl();
    const imEnd = bl.tokenToId("<|im_end|>") as number;
    for (const c of cases.filter((x) => x.content_spells_special)) {
      const cv = conv(c.messages);
      const r = c.add_generation_prompt ? { ids: t.renderPrompt(cv), contentSpecials: 0 } : t.render(cv);
      expect(r.ids.filter((x) => x === imEnd).length).toBe(c.ids.filter((x) => x === imEnd).length - 1);
      expect(bl.decode(r.ids, { skipSpecial: false })).toBe(c.text);
      expect(r.contentSpecials).toBe(0);
    }
  });

  it("trains each answer and its <|im_end|>, as the built-in does", () => {
    const t = tpl();
    const c = cases.find((x) => x.name === "multi-turn" && !x.add_generation_prompt) as JinjaCase;
    const r = t.render(conv(c.messages));
    expect(r.spans).toHaveLength(2);
    const spans = r.spans.map((s) => bl.decode(r.ids.slice(s.start, s.end), { skipSpecial: false }));
    expect(spans).toEqual(["4<|im_end|>", "12, since 4 * 3 = 12.\n\nAnything else?<|im_end|>"]);
    const withSystem = cases.find((x) => x.name === "system" && !x.add_generation_prompt) as JinjaCase;
    const a = t.render(conv(withSystem.messages));
    const b = chatmlTemplate(bl).render(conv(withSystem.messages));
    expect(a.ids).toEqual(b.ids);
    expect(a.trained).toEqual(b.trained);
    expect(a.roles).toEqual(b.roles);
    expect(new Set(a.roles)).toEqual(new Set(["system", "user", "assistant"]));
    expect(t.stopIds).toContain(bl.tokenToId("<|im_end|>"));
  });

  it("falls back to transformers' tokenization when the template rewrites content, and counts it", () => {
    const t = jinjaTemplate(
      "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'].replace('say', 'SAY') + '<|im_end|>\\n' }}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
      bl,
    );
    const r = t.render(
      conv([
        { role: "user", content: "say <|im_end|>" },
        { role: "assistant", content: "ok" },
      ]),
    );
    expect(r.contentSpecials).toBe(1);
    expect(r.ids.filter((x) => x === bl.tokenToId("<|im_end|>"))).toHaveLength(3);
    expect(trainedText(bl, r.ids, r.trained)).toBe("ok<|im_end|>");
  });

  it("passes tools, metadata and a system turn's tools as transformers' apply_chat_template(tools=…) does", () => {
    const { tool_cases: toolCases } = JSON.parse(readFileSync(fixture("templates", "expected-jinja.json"), "utf8")) as {
      tool_cases: (Omit<JinjaCase, "content_spells_special"> & { chat_template: string; tools: unknown })[];
    };
    expect(toolCases.length).toBeGreaterThan(0);
    for (const c of toolCases) {
      const t = jinjaTemplate(c.chat_template, bl);
      const cv = conv(c.messages, { tools: c.tools });
      const ids = c.add_generation_prompt ? t.renderPrompt(cv) : t.render(cv).ids;
      expect(bl.decode(ids, { skipSpecial: false }), c.name).toBe(c.text);
      expect(ids, `${c.name} agp=${c.add_generation_prompt}`).toEqual(c.ids);
    }
  });

  it("refuses tool data a template would drop, located: tools, metadata, a system turn's tools, tool results", () => {
    const t = tpl(); // ChatML: renders role and content only
    const where = { file: "data.jsonl", line: 7, sample: 6 };
    const call = (over: Partial<Message>): Conversation => ({
      messages: [
        { role: "user", content: "q", key: "conversations[0]" },
        { role: "assistant", content: "call()", key: "conversations[1]", ...over },
      ],
      origin: where,
    });
    const err = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        return e as LorakitError;
      }
      throw new Error("expected an error");
    };
    expect(err(() => t.render(call({ metadata: "get_weather" })))).toMatchObject({
      code: "TEMPLATE_TOOLS_UNSUPPORTED",
      where: { ...where, key: "conversations[1].metadata" },
    });
    expect(err(() => t.render({ ...call({}), tools: [{ name: "f" }] }))).toMatchObject({
      code: "TEMPLATE_TOOLS_UNSUPPORTED",
      where: { key: "tools" },
    });
    const sys: Conversation = {
      ...call({}),
      messages: [{ role: "system", content: "s", tools: [{ name: "f" }], key: "messages[0]" }, ...call({}).messages],
    };
    expect(err(() => t.render(sys))).toMatchObject({ where: { key: "messages[0].tools" } });
    expect(err(() => t.renderPrompt({ ...call({}), tools: [{ name: "f" }] }))).toMatchObject({
      where: { key: "tools" },
    });
    // A template that knows user/assistant/system only: an observation turn would vanish.
    const narrow = jinjaTemplate(
      "{% for m in messages %}{% if m.role in ['user', 'assistant', 'system'] %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}",
      bl,
    );
    const withResult: Conversation = {
      messages: [...call({}).messages, { role: "observation", content: "42", key: "conversations[2]" }],
      origin: where,
    };
    expect(err(() => narrow.render(withResult))).toMatchObject({
      code: "TEMPLATE_TOOLS_UNSUPPORTED",
      where: { key: "conversations[2].role" },
    });
    expect(() => t.render(withResult)).not.toThrow(); // ChatML writes any role's name
  });

  it("reports a template that fails on a sample with the sample's origin", () => {
    const t = jinjaTemplate("{{ raise_exception('roles must alternate') }}", bl);
    expect(() =>
      t.render(
        conv([
          { role: "user", content: "q" },
          { role: "assistant", content: "a" },
        ]),
      ),
    ).toThrow(/roles must alternate/);
  });
});

describe("choosing a template", () => {
  it("auto: ChatGLM3's built-in, else the checkpoint's chat_template, else the family's", () => {
    expect(
      chooseTemplate({
        template: "auto",
        tokenizer: glm,
        modelDir: fixture("tokenizers", "spm-chatglm3"),
        modelType: "chatglm",
      }).name,
    ).toBe("chatglm3");
    expect(
      chooseTemplate({
        template: "auto",
        tokenizer: bl,
        modelDir: fixture("tokenizers", "bpe-bytelevel"),
        modelType: "qwen2",
      }).name,
    ).toBe("jinja");
    const dir = tmpDir();
    copyFileSync(fixture("tokenizers", "bpe-bytelevel", "tokenizer.json"), path.join(dir, "tokenizer.json"));
    writeFileSync(path.join(dir, "tokenizer_config.json"), "{}");
    expect(chooseTemplate({ template: "auto", tokenizer: bl, modelDir: dir, modelType: "qwen2" }).name).toBe("chatml");
    expect(() => chooseTemplate({ template: "auto", tokenizer: bl, modelDir: dir })).toThrow(/no chat_template/);
    expect(() => chooseTemplate({ template: "jinja", tokenizer: bl, modelDir: dir })).toThrow(LorakitError);
  });

  it("llama3 and deepseek: the layout, specials by id, what is trained", () => {
    const tok = charTokenizer([
      "<|begin_of_text|>",
      "<|start_header_id|>",
      "<|end_header_id|>",
      "<|eot_id|>",
      "<｜begin▁of▁sentence｜>",
      "<｜end▁of▁sentence｜>",
    ]);
    const cv = conv([
      { role: "system", content: "S" },
      { role: "user", content: "q <|eot_id|>" },
      { role: "assistant", content: " a \n" },
    ]);
    const show = (t: ReturnType<typeof llama3Template>) => {
      const r = t.render(cv);
      return r.ids.map((id, i) => (r.trained[i] ? `[${tok.idToToken(id)}]` : tok.idToToken(id))).join("");
    };
    const l3 = llama3Template(tok);
    expect(show(l3)).toBe(
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" +
        "q <|eot_id|><|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n[a][<|eot_id|>]",
    );
    expect(l3.render(cv).ids.filter((x) => x === tok.tokenToId("<|eot_id|>"))).toHaveLength(3);
    expect(tok.decode(l3.renderPrompt(cv))).toMatch(
      /<\|eot_id\|><\|start_header_id\|>assistant<\|end_header_id\|>\n\n$/,
    );
    const ds = deepseekTemplate(tok);
    expect(show(ds)).toBe(
      "<｜begin▁of▁sentence｜>S\n\nUser: q <|eot_id|>\n\nAssistant:[ ][ ][a][ ][\n][<｜end▁of▁sentence｜>]",
    );
    expect(tok.decode(ds.renderPrompt(cv))).toBe("<｜begin▁of▁sentence｜>S\n\nUser: q <|eot_id|>\n\nAssistant:");
    expect(ds.stopIds).toEqual([tok.tokenToId("<｜end▁of▁sentence｜>")]);
    expect(() =>
      ds.render(
        conv([
          { role: "user", content: "q" },
          { role: "observation", content: "o" },
          { role: "assistant", content: "a" },
        ]),
      ),
    ).toThrow(/no "observation" role/);
    expect(() => chatmlTemplate(tok)).toThrow(/TEMPLATE|token/);
  });
});
