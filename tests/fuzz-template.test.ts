// Fuzzing the template renderer (src/data/template.ts; harness: tests/fuzz/harness.ts): any conversation — any
// roles in any order, contents with special spellings, sentinels and lone surrogates, tools and metadata — through
// the built-ins and through checkpoints' jinja chat_templates (intact and mutated), renders or is refused with a
// located LorakitError. What renders is consistent (ids of the vocabulary, one flag and role per token, spans
// over exactly the trained tokens); the built-in chatglm3 on the official tokenizer decodes back to the
// conversation's text; the checkpoint's ChatML-like jinja template gives the built-in chatml's ids and labels.
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";
import { CHATGLM3_TOOLS_SYSTEM, type Conversation, type Message, ROLES, trains } from "../src/data/formats.js";
import { buildLabels } from "../src/data/mask.js";
import {
  type ChatTemplate,
  chatglm3Template,
  chatmlTemplate,
  chooseTemplate,
  jinjaTemplate,
  type Rendered,
  readChatTemplate,
} from "../src/data/template.js";
import { loadTokenizer, type Tokenizer } from "../src/data/tokenizer.js";
import {
  editJson,
  handled,
  type Json,
  jsonEdits,
  jsonValue,
  mutate,
  mutations,
  nastyString,
  params,
  scratch,
  testTimeout,
} from "./fuzz/harness.js";
import { fixture, officialChatglm3 } from "./helpers.js";

const DATA = "/data/train.jsonl";
const disk = scratch("lorakit-fuzz-template-");
const want = { file: DATA, at: true };
/** A jinja template's render errors quote the library's message. */
const wantJinja = { ...want, libraryText: true };

/** Any conversation: roles in any order, any content, the tool fields now and then. */
const conversation: fc.Arbitrary<Conversation> = fc
  .record({
    messages: fc.array(
      fc.record(
        {
          role: fc.constantFrom(...ROLES),
          content: nastyString(30),
          loss: fc.boolean(),
          metadata: fc.constantFrom("get_weather", "", "工具"),
          tools: fc.array(jsonValue, { maxLength: 2 }),
        },
        { requiredKeys: ["role", "content"] },
      ),
      { maxLength: 6 },
    ),
    tools: fc.option(fc.array(jsonValue, { minLength: 1, maxLength: 2 }), { nil: undefined }),
    line: fc.integer({ min: 1, max: 1000 }),
  })
  .map(({ messages, tools, line }) => ({
    messages: messages as Message[],
    ...(tools !== undefined ? { tools } : {}),
    origin: { file: DATA, line, sample: line - 1 },
  }));

/** Alternating system?/user/assistant turns without tools: what every chat template takes. */
const plainChat: fc.Arbitrary<Conversation> = fc
  .record({
    system: fc.option(nastyString(20), { nil: undefined }),
    pairs: fc.array(fc.tuple(nastyString(20), nastyString(20)), { minLength: 1, maxLength: 3 }),
    prompt: fc.boolean(),
  })
  .map(({ system, pairs, prompt }) => {
    const messages: Message[] = system !== undefined ? [{ role: "system", content: system }] : [];
    for (const [q, a] of pairs) messages.push({ role: "user", content: q }, { role: "assistant", content: a });
    if (prompt) messages.pop();
    return { messages, origin: { file: DATA, line: 1, sample: 0 } };
  });

/** Everything a render promises, whatever the template. */
function consistent(r: Rendered, tok: Tokenizer): void {
  expect(r.trained.length).toBe(r.ids.length);
  expect(r.roles.length).toBe(r.ids.length);
  for (const id of r.ids) if (!(Number.isInteger(id) && id >= 0 && id < tok.vocabSize)) throw new Error(`id ${id}`);
  const inSpans = new Array<boolean>(r.ids.length).fill(false);
  let last = 0;
  for (const s of r.spans) {
    expect(s.start).toBeGreaterThanOrEqual(last);
    expect(s.end).toBeGreaterThan(s.start);
    for (let i = s.start; i < s.end; i++) inSpans[i] = true;
    last = s.end;
  }
  expect(inSpans).toEqual(r.trained);
  const labels = buildLabels(r, { maxLength: 64 });
  expect(labels.ids.length).toBe(Math.min(64, r.ids.length));
}

/** Render and prompt `conv` with `t`: each either works and is consistent, or is refused, located. */
function renderBoth(t: ChatTemplate, tok: Tokenizer, conv: Conversation): Rendered | undefined {
  const w = t.name === "jinja" ? wantJinja : want;
  const r = handled(() => t.render(conv), w);
  if (r.ok) consistent(r.value, tok);
  const p = handled(() => t.renderPrompt(conv), w);
  if (p.ok) for (const id of p.value) if (!(Number.isInteger(id) && id >= 0 && id < tok.vocabSize)) throw new Error();
  return r.ok ? r.value : undefined;
}

let glm: Tokenizer;
let bl: Tokenizer;
let chatmlJinja: { source: string; bosToken?: string; eosToken?: string };
let toolsJinja: string;
beforeAll(async () => {
  glm = await loadTokenizer(fixture("tokenizers", "spm-chatglm3"));
  bl = await loadTokenizer(fixture("tokenizers", "bpe-bytelevel"));
  chatmlJinja = readChatTemplate(fixture("tokenizers", "bpe-bytelevel")) as typeof chatmlJinja;
  toolsJinja = (
    JSON.parse(readFileSync(fixture("templates", "expected-jinja.json"), "utf8")) as {
      tool_cases: { chat_template: string }[];
    }
  ).tool_cases[0]?.chat_template as string;
});

describe("built-in templates: any conversation renders consistently or is refused, located", () => {
  it(
    "chatglm3 and chatml",
    () => {
      const templates: [ChatTemplate, Tokenizer][] = [
        [chatglm3Template(glm), glm],
        [chatmlTemplate(bl), bl],
      ];
      fc.assert(
        fc.property(conversation, (conv) => {
          for (const [t, tok] of templates) renderBoth(t, tok, conv);
        }),
        params(300),
      );
    },
    testTimeout(300, 10),
  );

  it(
    "chatglm3 on the official tokenizer: the ids decode to the conversation's text, trained tokens end each answer",
    async () => {
      const tok = await loadTokenizer(officialChatglm3());
      const t = chatglm3Template(tok);
      // Each message is `<|role|>` + encode(metadata + "\n") + encode(content): decoding the run joins the two
      // encodings, so the content's dummy prefix comes back as one space; eos is a control piece and vanishes.
      const text = (s: string) => new TextDecoder("utf-8", { ignoreBOM: true }).decode(new TextEncoder().encode(s));
      const shown = (m: Message) =>
        `<|${m.role === "tool" ? "observation" : m.role}|>${text(`${m.metadata ?? ""}\n`)}${m.content ? ` ${text(m.content)}` : ""}`;
      fc.assert(
        fc.property(conversation, (conv) => {
          const r = renderBoth(t, tok, conv);
          if (!r) return;
          const msgs = conv.messages.map((m) =>
            m.tools === undefined ? m : { ...m, content: `${m.content}\n${JSON.stringify(m.tools, null, 4)}` },
          );
          if (conv.tools !== undefined)
            msgs.unshift({
              role: "system",
              content: `${CHATGLM3_TOOLS_SYSTEM}\n${JSON.stringify(conv.tools, null, 4)}`,
            });
          expect(tok.decode(r.ids)).toBe(`[gMASK]sop${msgs.map(shown).join("").replaceAll("\u2581", " ")}`);
          // One span per trained message with content or a token after it, each ending on the next role or eos.
          const eos = tok.eosId as number;
          for (const s of r.spans) {
            const end = r.ids[s.end - 1] as number;
            expect(end === eos || Object.values(t.specialTokens).includes(end)).toBe(true);
          }
          expect(r.spans.length).toBe(conv.messages.filter(trains).length);
        }),
        params(150),
      );
    },
    testTimeout(150, 20),
  );
});

describe("checkpoints' jinja templates", () => {
  it(
    "the ChatML-like chat_template gives the built-in chatml's ids, labels and roles",
    () => {
      const jinja = jinjaTemplate(chatmlJinja.source, bl, chatmlJinja);
      const builtin = chatmlTemplate(bl);
      fc.assert(
        fc.property(plainChat, (conv) => {
          // The checkpoint's template adds a default system turn; the built-in does not.
          fc.pre(conv.messages[0]?.role === "system");
          const a = handled(() => jinja.render(conv), wantJinja);
          const b = handled(() => builtin.render(conv), want);
          if (!a.ok || !b.ok) {
            expect(a.ok).toBe(b.ok);
            return;
          }
          // Content that spells a special token: the jinja path keeps it text, like the built-in.
          expect(a.value.ids).toEqual(b.value.ids);
          expect(a.value.trained).toEqual(b.value.trained);
          expect(a.value.roles).toEqual(b.value.roles);
          expect(jinja.renderPrompt(conv)).toEqual(builtin.renderPrompt(conv));
        }),
        params(200, { maxSkipsPerRun: 10 }),
      );
    },
    testTimeout(200, 20),
  );

  it(
    "any conversation through the checkpoints' templates (ChatML-like, with tools) renders consistently or is refused, located",
    () => {
      const templates = [jinjaTemplate(chatmlJinja.source, bl, chatmlJinja), jinjaTemplate(toolsJinja, bl)];
      fc.assert(
        fc.property(conversation, (conv) => {
          for (const t of templates) renderBoth(t, bl, conv);
        }),
        params(200),
      );
    },
    testTimeout(200, 30),
  );

  it(
    "mutated chat_template sources are refused, located, or render consistently",
    () => {
      const file = "/model/tokenizer_config.json";
      fc.assert(
        fc.property(fc.constantFrom(0, 1), mutations(0, 3), plainChat, (which, edits, conv) => {
          const source = [chatmlJinja.source, toolsJinja][which] as string;
          const mutated = new TextDecoder().decode(mutate(new TextEncoder().encode(source), edits));
          const t = handled(() => jinjaTemplate(mutated, bl, { origin: { file, key: "chat_template" } }), {
            file,
            at: true,
            libraryText: true,
          });
          if (t.ok) renderBoth(t.value, bl, conv);
        }),
        params(300),
      );
    },
    testTimeout(300, 20),
  );

  it(
    "an edited tokenizer_config.json (chat_template, bos/eos) gives a template or a located refusal",
    () => {
      const config = JSON.parse(readFileSync(fixture("tokenizers", "bpe-bytelevel", "tokenizer_config.json"), "utf8"));
      config.chat_template = [
        { name: "default", template: config.chat_template },
        { name: "tool_use", template: toolsJinja },
      ];
      fc.assert(
        fc.property(jsonEdits(3), fc.constantFrom("auto", "jinja"), plainChat, (edits, template, conv) => {
          const d = disk.newCase();
          copyFileSync(fixture("tokenizers", "bpe-bytelevel", "tokenizer.json"), path.join(d, "tokenizer.json"));
          writeFileSync(path.join(d, "tokenizer_config.json"), JSON.stringify(editJson(config as Json, edits)));
          const t = handled(() => chooseTemplate({ template, tokenizer: bl, modelDir: d, modelType: "qwen2" }), {
            file: (f) => f.startsWith(d),
            at: true,
            libraryText: true,
          });
          if (t.ok) renderBoth(t.value, bl, conv);
        }),
        params(150),
      );
    },
    testTimeout(150, 20),
  );
});

describe("found by fuzzing", () => {
  const at = { file: DATA, line: 1, sample: 0 };

  it("a trained turn with empty content trains its own end of turn, not the turns before it (jinja)", () => {
    const t = jinjaTemplate(chatmlJinja.source, bl, chatmlJinja);
    const r = t.render({
      messages: [
        { role: "system", content: "", loss: true },
        { role: "system", content: "", loss: true },
      ],
      origin: at,
    });
    // Before: the second span started at token 0 and trained both turns' template text.
    expect(r.spans.map((s) => bl.decode(r.ids.slice(s.start, s.end)))).toEqual(["<|im_end|>", "<|im_end|>"]);
    expect(r.spans[1]?.start).toBeGreaterThan(r.spans[0]?.end as number);
  });

  it("a tokenizer_config.json that is not an object, or whose chat_template list holds no template, is refused located", () => {
    const d = disk.newCase();
    const cfg = path.join(d, "tokenizer_config.json");
    for (const [text, where] of [
      ["null", { file: cfg, line: 1 }],
      ["[1]", { file: cfg, line: 1 }],
      ['{"chat_template": [null]}', { file: cfg, key: "chat_template[0].template" }],
      ['{"chat_template": [{"name": "default", "template": 7}]}', { file: cfg, key: "chat_template[0].template" }],
      ['{"chat_template": {"a": 1}}', { file: cfg, key: "chat_template" }],
      ['{\n  "chat_template": "x",\n  oops\n}', { file: cfg, line: 3 }],
    ] as const) {
      writeFileSync(cfg, text);
      expect(() => readChatTemplate(d), text).toThrow(expect.objectContaining({ code: "MODEL_BAD_FILE", where }));
    }
  });

  it("a tokenizer_config.json with a byte-order mark is read, as loadTokenizer reads it", () => {
    const d = disk.newCase();
    writeFileSync(path.join(d, "tokenizer_config.json"), `\uFEFF${JSON.stringify({ chat_template: "{{ x }}" })}`);
    expect(readChatTemplate(d)?.source).toBe("{{ x }}");
  });

  it("a chat_template that cannot be parsed names the file and key it came from", () => {
    const d = disk.newCase();
    copyFileSync(fixture("tokenizers", "bpe-bytelevel", "tokenizer.json"), path.join(d, "tokenizer.json"));
    writeFileSync(path.join(d, "tokenizer_config.json"), JSON.stringify({ chat_template: "{% for m in messages %}" }));
    expect(() => chooseTemplate({ template: "jinja", tokenizer: bl, modelDir: d })).toThrow(
      expect.objectContaining({
        code: "TEMPLATE_PARSE",
        where: { file: path.join(d, "tokenizer_config.json"), key: "chat_template" },
      }),
    );
  });
});
