// The differential suite every tokenizer passes against its reference library's answers (an expected.json
// written by the fixture builders: engine/tests/fixtures/tokenizers.py for the tiny tokenizers,
// chatglm3_6b.py for the official ChatGLM3-6B file): ids, pieces, decoded text, special spellings, id lists.
import { beforeEach, describe, expect, it } from "vitest";
import type { Tokenizer } from "../src/data/tokenizer.js";
import { LorakitError } from "../src/errors.js";

export interface Case {
  text: string;
  ids: number[];
  pieces: string[];
  decoded: string;
  ids_special: number[];
  decoded_special?: string;
  decoded_special_skip?: string;
}

export interface Expected {
  kind: "sentencepiece" | "tokenizer.json";
  sha256: string;
  vocab_size: number;
  sp_size?: number;
  special_tokens: Record<string, number>;
  bos_id?: number;
  eos_id?: number;
  unk_id?: number;
  cases: Case[];
  /** Seeded random strings (fuzz_texts / random_strings in the builders). */
  fuzz_cases: Case[];
  decode_cases: Array<{ ids: number[]; decoded: string; decoded_skip: string }>;
}

const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((x, i) => x === b[i]);
/** Mismatches as lines, at most 20: one failing assertion that names the texts instead of thousands. */
const listed = (bad: string[]) => (bad.length > 20 ? [...bad.slice(0, 20), `… ${bad.length - 20} more`] : bad);

/** `load` and `exp` run inside each test, so that a missing input fails every test with its own message. */
export function referenceSuite(label: string, load: () => Promise<Tokenizer>, exp: () => Expected): void {
  describe(label, () => {
    let tok: Tokenizer;
    let e: Expected;
    let all: Case[];
    beforeEach(async () => {
      e = exp();
      all = [...e.cases, ...e.fuzz_cases];
      tok ??= await load();
    });

    it("has the reference vocabulary, special tokens and kind", () => {
      expect(tok.kind).toBe(e.kind);
      expect(tok.vocabSize).toBe(e.vocab_size);
      expect(Object.fromEntries(tok.specialTokens)).toEqual(e.special_tokens);
      for (const [t, id] of Object.entries(e.special_tokens)) {
        expect(tok.tokenToId(t)).toBe(id);
        expect(tok.idToToken(id)).toBe(t);
      }
      expect(tok.hash).toMatch(/^[0-9a-f]{64}$/);
    });

    it("encodes every corpus (and fuzz) text to the reference ids and pieces", () => {
      const bad: string[] = [];
      for (const c of all) {
        const ids = tok.encode(c.text);
        if (!same(ids, c.ids)) bad.push(`${JSON.stringify(c.text)}: ${ids} ≠ ${c.ids}`);
        else if (JSON.stringify(tok.pieces(ids)) !== JSON.stringify(c.pieces))
          bad.push(`${JSON.stringify(c.text)}: pieces ${JSON.stringify(tok.pieces(ids))}`);
      }
      expect(listed(bad)).toEqual([]);
    });

    it("decodes to the reference text; round-trips where the reference does", () => {
      const bad: string[] = [];
      for (const c of all) {
        const text = tok.decode(c.ids);
        if (text !== c.decoded) bad.push(`${JSON.stringify(c.text)}: decoded ${JSON.stringify(text)}`);
        else if (c.decoded === c.text && tok.decode(tok.encode(c.text)) !== c.text)
          bad.push(`${JSON.stringify(c.text)}: no round trip`);
      }
      expect(listed(bad)).toEqual([]);
    });

    it("with parseSpecial, maps special spellings to their ids like the reference", () => {
      const bad: string[] = [];
      for (const c of all) {
        const ids = tok.encode(c.text, { parseSpecial: true });
        if (!same(ids, c.ids_special)) bad.push(`${JSON.stringify(c.text)}: ${ids} ≠ ${c.ids_special}`);
        if (c.decoded_special !== undefined) expect(tok.decode(c.ids_special)).toBe(c.decoded_special);
        if (c.decoded_special_skip !== undefined) {
          expect(tok.decode(c.ids_special, { skipSpecial: true })).toBe(c.decoded_special_skip);
        }
      }
      expect(listed(bad)).toEqual([]);
    });

    it("never produces a special id from text without parseSpecial", () => {
      const special = new Set(tok.specialTokens.values());
      for (const c of all) {
        for (const t of tok.specialTokens.keys()) {
          if (!c.text.includes(t)) continue;
          expect(tok.encode(c.text).filter((id) => special.has(id))).toEqual([]);
        }
      }
    });

    it("decodes arbitrary id sequences (broken UTF-8, U+FEFF from bytes, specials) like the reference", () => {
      const bad: string[] = [];
      for (const d of e.decode_cases) {
        const text = tok.decode(d.ids);
        const skip = tok.decode(d.ids, { skipSpecial: true });
        if (text !== d.decoded) bad.push(`${JSON.stringify(d.ids)}: ${JSON.stringify(text)}`);
        if (skip !== d.decoded_skip) bad.push(`${JSON.stringify(d.ids)} (skip special): ${JSON.stringify(skip)}`);
      }
      expect(listed(bad)).toEqual([]);
    });

    it("rejects ids outside the vocabulary", () => {
      expect(() => tok.decode([tok.vocabSize])).toThrow(LorakitError);
      expect(() => tok.pieces([-1])).toThrow(/not in the vocabulary/);
    });
  });
}
