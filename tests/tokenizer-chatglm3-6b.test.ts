// The official ChatGLM3-6B tokenizer.model (../shared/models/chatglm3-6b/, never committed) against the
// `sentencepiece` library, run at test time by the fixture builder (engine/tests/fixtures/chatglm3_6b.py →
// tests/.fixtures/chatglm3-6b/expected.json): every piece of the 64,789-piece vocabulary, a large varied corpus
// and seeded random strings and id lists; ChatGLM3's nine appended specials; conversations rendered by the
// chatglm3 template against the independent implementation in engine/tests/test_chatglm3_golden.py.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { beforeEach, describe, expect, it } from "vitest";
import type { Conversation } from "../src/data/formats.js";
import { normalizeRecords } from "../src/data/formats.js";
import { buildLabels } from "../src/data/mask.js";
import { chatglm3Template } from "../src/data/template.js";
import { SentencePieceModel } from "../src/data/tokenizer/sentencepiece.js";
import { CHATGLM3_SPECIALS, loadTokenizer, type Tokenizer } from "../src/data/tokenizer.js";
import { ROOT } from "../src/engine/python.js";
import { fixture, officialChatglm3 } from "./helpers.js";
import { type Expected, referenceSuite } from "./tokenizer-reference.js";

/** The sha256 the THUDM/chatglm3-6b repository records for its tokenizer.model. */
const OFFICIAL_SHA256 = "e7dc4c393423b76e4373e5157ddc34803a0189ba96b21ddbb40269d31468a6f2";
const CORPUS = path.join(ROOT, "tests", "fixtures", "chatglm3-6b-corpus.json");

interface Official extends Expected {
  corpus_sha256: string;
  vocab: { pieces: string[]; decoded: string[]; decoded_ids: number[][]; surface_ids: number[][] };
  conversations: Array<{
    name: string;
    format: "alpaca" | "conversations";
    system?: string;
    record: unknown;
    ids: number[];
    labels: number[];
    prompt_ids: number[];
  }>;
}

let cached: Official | undefined;
/** The builder's expected.json, after checking the official files are there (a clear failure when not). */
function official(): Official {
  officialChatglm3();
  cached ??= JSON.parse(readFileSync(fixture("chatglm3-6b", "expected.json"), "utf8")) as Official;
  return cached;
}
const sha256 = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");
const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((x, i) => x === b[i]);
const listed = (bad: string[]) => (bad.length > 20 ? [...bad.slice(0, 20), `… ${bad.length - 20} more`] : bad);

let tok: Tokenizer;
// Each test: a missing official file fails every test with officialChatglm3()'s message (never a skip).
beforeEach(async () => {
  tok ??= await loadTokenizer(officialChatglm3());
});

describe("the official ChatGLM3-6B tokenizer.model", () => {
  it("is the file THUDM publishes, and the expected answers were computed from it and the current corpus", () => {
    const file = path.join(officialChatglm3(), "tokenizer.model");
    expect(sha256(file)).toBe(OFFICIAL_SHA256);
    // A stale fixture folder: run `python engine/tests/fixtures/build_all.py --out tests/.fixtures --force`.
    expect(official().sha256).toBe(OFFICIAL_SHA256);
    expect(official().corpus_sha256).toBe(sha256(CORPUS));
  });

  it("loads with ChatGLM3's facts: 64,789 pieces, U+FEFF at 31168, bytes at byte + 3, nine specials after", () => {
    expect(tok.kind).toBe("sentencepiece");
    expect(tok.vocabSize).toBe(64_798);
    // <unk> is ChatGLM3's pad (its tokenizer code says so; tokenizer_config.json names none).
    expect([tok.unkId, tok.bosId, tok.eosId, tok.padId]).toEqual([0, 1, 2, 0]);
    CHATGLM3_SPECIALS.forEach((t, i) => {
      expect(tok.tokenToId(t)).toBe(64_789 + i);
      expect(tok.idToToken(64_789 + i)).toBe(t);
    });
    expect(tok.idToToken(31_168)).toBe("\uFEFF");
    expect(tok.idToToken(44_227)).toBe("\uFEFF\uFEFF");
    for (const b of [0, 0x0a, 0xef, 0xff]) {
      expect(tok.idToToken(b + 3)).toBe(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
    }
    expect(tok.encode("你好")).toEqual([36_474, 54_591]);
  });

  it("every piece of the vocabulary: its text, decoded alone and re-encoded, is the library's", () => {
    const v = official().vocab;
    expect(v.pieces).toHaveLength(64_789);
    const bad: string[] = [];
    for (let id = 0; id < v.pieces.length; id++) {
      const piece = v.pieces[id] as string;
      if (tok.idToToken(id) !== piece) bad.push(`${id}: piece ${JSON.stringify(tok.idToToken(id))}`);
      const decoded = tok.decode([id]);
      if (decoded !== v.decoded[id]) bad.push(`${id}: decode ${JSON.stringify(decoded)}`);
      const ids = tok.encode(v.decoded[id] as string);
      if (!same(ids, v.decoded_ids[id] as number[])) bad.push(`${id}: encode(decoded) ${ids} ≠ ${v.decoded_ids[id]}`);
      const surface = tok.encode(piece.replaceAll("\u2581", " "));
      if (!same(surface, v.surface_ids[id] as number[])) bad.push(`${id}: encode(surface) ${surface}`);
    }
    expect(listed(bad)).toEqual([]);
  });

  it("with add_dummy_prefix off, text that starts with U+FEFF keeps it (the normalizer's own UTF-8 decode)", () => {
    const dir = fixture("chatglm3-6b", "no-dummy-prefix");
    officialChatglm3();
    const model = SentencePieceModel.fromBytes(readFileSync(path.join(dir, "tokenizer.model")), dir);
    const exp = JSON.parse(readFileSync(path.join(dir, "expected.json"), "utf8")) as {
      cases: Array<{ text: string; ids: number[]; decoded: string }>;
    };
    expect(exp.cases[0]).toEqual({ text: "\uFEFF", ids: [31_168], decoded: "\uFEFF" });
    const bad: string[] = [];
    for (const c of exp.cases) {
      const ids = model.encode(c.text);
      if (!same(ids, c.ids)) bad.push(`${JSON.stringify(c.text)}: ${ids} ≠ ${c.ids}`);
      if (model.decode(c.ids) !== c.decoded) bad.push(`${JSON.stringify(c.text)}: decoded differs`);
    }
    expect(listed(bad)).toEqual([]);
  });

  it("renders conversations with the chatglm3 template as the independent implementation does", () => {
    const origin = { file: "test", line: 1 };
    const template = chatglm3Template(tok);
    expect(template.stopIds).toEqual([2, 64_795, 64_797]); // eos, <|user|>, <|observation|>
    const cases = official().conversations;
    expect(cases.length).toBeGreaterThanOrEqual(5);
    for (const c of cases) {
      const [conv] = normalizeRecords([{ value: c.record, origin }], {
        format: c.format,
        ...(c.system ? { system: c.system } : {}),
      }).conversations;
      const rendered = buildLabels(template.render(conv as Conversation), { maxLength: 100_000 });
      expect(rendered.ids, c.name).toEqual(c.ids);
      expect(rendered.labels, c.name).toEqual(c.labels);
      expect(template.renderPrompt(conv as Conversation), c.name).toEqual(c.prompt_ids);
    }
  });
});

referenceSuite("chatglm3-6b (official tokenizer.model)", async () => tok, official);
