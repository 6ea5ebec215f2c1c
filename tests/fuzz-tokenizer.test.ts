// Fuzzing the tokenizer readers (harness: tests/fuzz/harness.ts). A SentencePiece `tokenizer.model` — random
// bytes, protobuf-shaped messages, and mutations of the real ChatGLM3-6B file and the tiny fixtures (bytes
// flipped, inserted, deleted, truncated; lengths and keys rewritten) — and a `tokenizer.json` (its text
// mutated, its JSON tree edited) either load or are refused with a located LorakitError; one that loads
// encodes and decodes any text. On the real ChatGLM3 file: decode(encode(s)) is s as normalized, for any s.
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";
import { HfJsonTokenizer, type TokenizerJson } from "../src/data/tokenizer/hf-json.js";
import { SentencePieceModel } from "../src/data/tokenizer/sentencepiece.js";
import { type Tokenizer as LoadedTokenizer, loadTokenizer } from "../src/data/tokenizer.js";
import {
  cat,
  editJson,
  handled,
  handledAsync,
  type Json,
  jsonEdits,
  mutate,
  mutations,
  nastyNumbers,
  nastyString,
  params,
  scratch,
  testTimeout,
  varintBytes,
} from "./fuzz/harness.js";
import { fixture, officialChatglm3 } from "./helpers.js";

const SPM_FIXTURES = ["spm-chatglm3", "spm-nfkc"] as const;
const JSON_FIXTURES = ["bpe-bytelevel", "bpe-metaspace"] as const;
const tokFile = (name: string, file: string) => fixture("tokenizers", name, file);
const disk = scratch("lorakit-fuzz-tok-");

/** Offsets of every varint that is a field key or a length, in the ModelProto and the messages it nests. */
function varintStarts(buf: Uint8Array): number[] {
  const out: number[] = [];
  const walk = (start: number, end: number, nested: boolean) => {
    let pos = start;
    const varint = () => {
      let v = 0;
      let shift = 0;
      for (;;) {
        if (pos >= end) throw new Error("truncated");
        const b = buf[pos++] as number;
        v += (b & 0x7f) * 2 ** shift;
        if ((b & 0x80) === 0) return v;
        shift += 7;
      }
    };
    while (pos < end) {
      out.push(pos);
      const key = varint();
      const wire = key & 7;
      if (wire === 0) varint();
      else if (wire === 1) pos += 8;
      else if (wire === 5) pos += 4;
      else if (wire === 2) {
        out.push(pos);
        const n = varint();
        // ModelProto fields 1 (pieces), 2 (trainer), 3 (normalizer), 5 (denormalizer) are messages.
        if (!nested && [1, 2, 3, 5].includes(Math.floor(key / 8))) walk(pos, pos + n, true);
        pos += n;
      } else return;
    }
  };
  walk(0, buf.length, false);
  return out;
}

/** `s` with each lone surrogate as U+FFFD, what UTF-8 encoding makes of it. */
const wellFormed = (s: string) => new TextDecoder("utf-8", { ignoreBOM: true }).decode(new TextEncoder().encode(s));

/** Ids an encode returned: integers of the vocabulary. */
function expectIds(ids: number[], size: number): void {
  for (const id of ids) if (!(Number.isInteger(id) && id >= 0 && id < size)) throw new Error(`encode gave id ${id}`);
}

/** A model that loaded must encode any text and decode any of its ids, within the time bound. */
function exercise(model: SentencePieceModel, file: string, texts: string[], ids: number[]): void {
  for (const t of texts) {
    const out = handled(() => model.encode(t), { file });
    if (!out.ok) throw new Error(`encode of a loaded model refused text: ${out.error.message}`);
    expectIds(out.value, model.size);
    const back = handled(() => model.decode(out.value), { file });
    if (!back.ok) throw new Error(`decode of its own ids refused: ${back.error.message}`);
  }
  const some = ids.map((i) => i % model.size);
  const dec = handled(() => model.decode(some), { file });
  if (!dec.ok) throw new Error(`decode of in-range ids refused: ${dec.error.message}`);
}

describe("tokenizer.model: mutated, random and protobuf-shaped files", () => {
  for (const name of SPM_FIXTURES) {
    it(
      `${name} fixture: every mutation loads (and then encodes anything) or is refused, located`,
      () => {
        const file = tokFile(name, "tokenizer.model");
        const bytes = new Uint8Array(readFileSync(file));
        const hot = varintStarts(bytes);
        fc.assert(
          fc.property(
            mutations(hot.length),
            fc.array(nastyString(), { maxLength: 3 }),
            fc.array(fc.nat(), { maxLength: 8 }),
            (edits, texts, ids) => {
              const buf = mutate(bytes, edits, hot);
              const out = handled(() => SentencePieceModel.fromBytes(buf, file), { file, at: true });
              if (out.ok) exercise(out.value, file, texts, ids);
            },
          ),
          params(name === "spm-nfkc" ? 60 : 150),
        );
      },
      testTimeout(150, 20),
    );
  }

  it(
    "the official ChatGLM3-6B tokenizer.model: mutations load or are refused, located",
    () => {
      const file = path.join(officialChatglm3(), "tokenizer.model");
      const bytes = new Uint8Array(readFileSync(file));
      const hot = varintStarts(bytes);
      // The specs follow the 64,789 pieces: aim a third of the edits at the file's last 2 KiB.
      const tail = hot.filter((h) => h > bytes.length - 2048);
      const tailFirst = hot.length - tail.length;
      const edits = fc.oneof(
        mutations(hot.length),
        mutations(tail.length).map((es) =>
          es.map((e) =>
            e.kind === "varint"
              ? { ...e, hot: tailFirst + e.hot }
              : "at" in e
                ? { ...e, at: 1 - (1 - e.at) * (2048 / bytes.length) }
                : e,
          ),
        ),
      );
      fc.assert(
        fc.property(edits, fc.array(nastyString(), { maxLength: 2 }), (es, texts) => {
          const buf = mutate(bytes, es, hot);
          const out = handled(() => SentencePieceModel.fromBytes(buf, file), { file, at: true });
          if (out.ok) exercise(out.value, file, texts, [0, 5, 64788, 30000]);
        }),
        params(12),
      );
    },
    testTimeout(12, 1500),
  );

  it(
    "random bytes are refused, located",
    () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 256 }), (buf) => {
          handled(() => SentencePieceModel.fromBytes(buf, "/m/tokenizer.model"), {
            file: "/m/tokenizer.model",
            at: true,
          });
        }),
        params(300),
      );
    },
    testTimeout(300, 2),
  );

  it(
    "protobuf-shaped models (any vocabulary, any specs) load and then encode anything, or are refused, located",
    () => {
      const file = "/m/tokenizer.model";
      fc.assert(
        fc.property(
          modelProto(),
          fc.array(nastyString(), { maxLength: 4 }),
          fc.array(fc.nat(), { maxLength: 8 }),
          (buf, texts, ids) => {
            const out = handled(() => SentencePieceModel.fromBytes(buf, file), { file, at: true });
            if (out.ok) exercise(out.value, file, texts, ids);
          },
        ),
        params(300),
      );
    },
    testTimeout(300, 10),
  );
});

// ---------------------------------------------------------------- protobuf-shaped ModelProto

type Bytes = ArrayLike<number>;
const bytesOf = (s: string) => new TextEncoder().encode(s);
const field = (n: number, wire: number) => varintBytes(n * 8 + wire);
const lenField = (n: number, payload: Bytes) => cat(field(n, 2), varintBytes(payload.length), payload);
const varField = (n: number, v: number) => cat(field(n, 0), varintBytes(v));
const floatField = (n: number, x: number) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setFloat32(0, x, true);
  return cat(field(n, 5), b);
};

/** Pieces a SentencePiece BPE model holds: characters, ▁-words, user-defined and control tokens, <0xNN> bytes. */
const pieceText = fc.oneof(
  nastyString(4),
  fc.constantFrom("<unk>", "<s>", "</s>", "<pad>", "\u2581", "\u2581\u2581", "a", "b", "ab", "\u2581a", "a\u2581"),
  fc.integer({ min: 0, max: 255 }).map((b) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`),
);

const piece = fc
  .record({
    text: pieceText,
    score: fc.oneof(fc.float({ noDefaultInfinity: false }), fc.constantFrom(0, -1, 1e30, Number.NaN)),
    type: fc.oneof(fc.integer({ min: 1, max: 6 }), nastyNumbers),
    omitType: fc.boolean(),
  })
  .map((p) => cat(lenField(1, bytesOf(p.text)), floatField(2, p.score), p.omitType ? [] : varField(3, p.type)));

const trainer = fc
  .record({
    modelType: fc.oneof(fc.constant(2), fc.integer({ min: 0, max: 5 }), nastyNumbers),
    byteFallback: fc.boolean(),
    suffix: fc.oneof(fc.constant(0), fc.constant(1)),
    strings: fc.array(fc.tuple(fc.constantFrom(44, 45, 46, 47, 48), pieceText), { maxLength: 3 }),
  })
  .map((t) =>
    cat(
      varField(3, t.modelType),
      varField(35, t.byteFallback ? 1 : 0),
      varField(24, t.suffix),
      ...t.strings.map(([n, s]) => lenField(n, bytesOf(s))),
    ),
  );

/** The spm-nfkc fixture's precompiled charsmap (its normalizer's field 2), to damage. */
let charsmap: Uint8Array | undefined;
function nfkcCharsmap(): Uint8Array {
  if (!charsmap) {
    const buf = new Uint8Array(readFileSync(tokFile("spm-nfkc", "tokenizer.model")));
    let best = new Uint8Array(0);
    for (const s of varintStarts(buf)) {
      if (buf[s] !== 0x12) continue; // key: field 2, wire 2
      let pos = s + 1;
      let n = 0;
      let shift = 0;
      for (;;) {
        const b = buf[pos++] as number;
        n += (b & 0x7f) * 2 ** shift;
        if ((b & 0x80) === 0) break;
        shift += 7;
      }
      if (n > best.length && pos + n <= buf.length) best = buf.subarray(pos, pos + n);
    }
    charsmap = best;
  }
  return charsmap;
}

const normalizer = fc
  .record({
    name: fc.constantFrom("identity", "nfkc", "nmt_nfkc", ""),
    charsmap: fc.oneof(
      fc.constant<Bytes | undefined>(undefined),
      fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 64 }),
      mutations(0, 3).map((edits) => mutate(nfkcCharsmap(), edits)),
    ),
    dummy: fc.boolean(),
    extra: fc.boolean(),
    escape: fc.boolean(),
  })
  .map((n) =>
    cat(
      lenField(1, bytesOf(n.name)),
      n.charsmap ? lenField(2, n.charsmap) : [],
      varField(3, n.dummy ? 1 : 0),
      varField(4, n.extra ? 1 : 0),
      varField(5, n.escape ? 1 : 0),
    ),
  );

const pieceOf = (text: string, type: number) =>
  lenField(1, cat(lenField(1, bytesOf(text)), floatField(2, 0), varField(3, type)));
const HEAD = cat(pieceOf("<unk>", 2), pieceOf("<s>", 3), pieceOf("</s>", 3));
const BYTE_PIECES = cat(
  ...Array.from({ length: 256 }, (_, b) => pieceOf(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`, 6)),
);

/** A ModelProto: pieces (often <unk> <s> </s> first, sometimes all 256 byte pieces), a trainer and normalizer spec. */
function modelProto(): fc.Arbitrary<Uint8Array> {
  return fc
    .record({
      head: fc.boolean(),
      bytes: fc.boolean(),
      pieces: fc.array(piece, { maxLength: 40 }),
      trainer: fc.option(trainer, { nil: undefined }),
      normalizer: fc.option(normalizer, { nil: undefined }),
      denormalizer: fc.option(normalizer, { nil: undefined }),
      junk: fc.array(
        fc.tuple(fc.integer({ min: 4, max: 40 }), fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 8 })),
        { maxLength: 2 },
      ),
    })
    .map((m) =>
      cat(
        m.head ? HEAD : [],
        m.bytes ? BYTE_PIECES : [],
        ...m.pieces.map((p) => lenField(1, p)),
        m.trainer ? lenField(2, m.trainer) : [],
        m.normalizer ? lenField(3, m.normalizer) : [],
        m.denormalizer ? lenField(5, m.denormalizer) : [],
        ...m.junk.map(([n, payload]) => lenField(n, payload)),
      ),
    );
}

// ---------------------------------------------------------------- the real ChatGLM3 file: round trips

describe("the official ChatGLM3-6B tokenizer: decode(encode(s)) is s as normalized", () => {
  let tok: LoadedTokenizer;
  let model: SentencePieceModel;
  beforeAll(async () => {
    tok = await loadTokenizer(officialChatglm3());
    model = (tok as unknown as { model: SentencePieceModel }).model;
  });

  /** What SentencePiece's decode gives back for `s`: its normalized form with ▁ as spaces, less the dummy prefix. */
  const normalized = (s: string) => model.normalize(s).replaceAll("\u2581", " ").replace(/^ /, "");

  it(
    "for any unicode text (lone surrogates become U+FFFD, as UTF-8 writes them)",
    () => {
      const text = fc.oneof(
        nastyString(64),
        fc.string({ unit: "binary", maxLength: 64 }),
        fc.string({ maxLength: 64 }),
      );
      fc.assert(
        fc.property(text, (s) => {
          const ids = tok.encode(s);
          const back = tok.decode(ids);
          expect(back).toBe(normalized(s));
          // ChatGLM3's normalizer is the identity: without ▁ in the text, the text comes back as it was.
          if (!s.includes("\u2581")) expect(back).toBe(wellFormed(s));
          // Special spellings typed as text stay text: no id beyond the SentencePiece vocabulary.
          expect(ids.every((id) => id < model.size)).toBe(true);
        }),
        params(400),
      );
    },
    testTimeout(400, 5),
  );

  it(
    "with special tokens parsed: each spelling is its id, the text between keeps its round trip",
    () => {
      const specials = ["[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "eop"];
      // <unk>, <s>, </s> typed as text would become control ids, which decode leaves out (as SentencePiece does).
      const reserved = [...model.reservedPieces().keys()];
      fc.assert(
        fc.property(fc.array(fc.oneof(nastyString(24), fc.constantFrom(...specials)), { maxLength: 8 }), (parts) => {
          const s = parts.join("");
          fc.pre(!reserved.some((r) => s.includes(r)));
          expect(tok.decode(tok.encode(s, { parseSpecial: true }))).toBe(wellFormed(s).replaceAll("\u2581", " "));
        }),
        params(200),
      );
    },
    testTimeout(200, 5),
  );
});

// ---------------------------------------------------------------- tokenizer.json

describe("tokenizer.json: mutated text and edited JSON", () => {
  for (const name of JSON_FIXTURES) {
    const file = tokFile(name, "tokenizer.json");

    it(
      `${name}: an edited JSON tree loads (and then encodes anything) or is refused, located`,
      () => {
        const doc = JSON.parse(readFileSync(file, "utf8")) as Json;
        fc.assert(
          fc.property(jsonEdits(3), fc.array(nastyString(), { maxLength: 3 }), (edits, texts) => {
            const json = editJson(doc, edits) as unknown as TokenizerJson;
            const want = { file, at: true, libraryText: true };
            const out = handled(() => new HfJsonTokenizer(json, "hash", {}, file), want);
            if (!out.ok) return;
            for (const t of texts) {
              for (const parseSpecial of [false, true]) {
                const ids = handled(() => out.value.encode(t, { parseSpecial }), want);
                if (!ids.ok) continue;
                // What it encodes, it decodes: ids of its vocabulary.
                expectIds(ids.value, out.value.vocabSize);
                const text = handled(() => out.value.decode(ids.value), want);
                if (!text.ok) throw new Error(`decode refused its own ids ${ids.value}: ${text.error.message}`);
              }
            }
          }),
          params(120),
        );
      },
      testTimeout(120, 30),
    );

    it(
      `${name}: the same tokenizer.json, laid out otherwise (indent, CRLF, BOM, key order), encodes the same`,
      async () => {
        const doc = JSON.parse(readFileSync(file, "utf8")) as Record<string, Json>;
        const reference = await loadTokenizer(path.dirname(file));
        const texts = fc.array(nastyString(), { minLength: 1, maxLength: 3 });
        await fc.assert(
          fc.asyncProperty(
            fc.constantFrom<number | string>(0, 1, 2, 4, "\t"),
            fc.boolean(),
            fc.boolean(),
            fc.boolean(),
            texts,
            async (indent, crlf, bom, reverse, ts) => {
              const order = (o: Record<string, Json>) =>
                Object.fromEntries(reverse ? Object.entries(o).reverse() : Object.entries(o));
              const laid = order({ ...doc, model: order(doc.model as Record<string, Json>) });
              let text = JSON.stringify(laid, null, indent);
              if (crlf) text = text.replaceAll("\n", "\r\n");
              const d = disk.newCase();
              writeFileSync(path.join(d, "tokenizer.json"), `${bom ? "\uFEFF" : ""}${text}`);
              writeFileSync(
                path.join(d, "tokenizer_config.json"),
                readFileSync(tokFile(name, "tokenizer_config.json")),
              );
              const tok = await loadTokenizer(d);
              for (const t of ts)
                for (const parseSpecial of [false, true])
                  expect(tok.encode(t, { parseSpecial })).toEqual(reference.encode(t, { parseSpecial }));
            },
          ),
          params(30),
        );
      },
      testTimeout(30, 100),
    );

    it(
      `${name}: mutated bytes of tokenizer.json and tokenizer_config.json load or are refused, located`,
      async () => {
        const json = new Uint8Array(readFileSync(file));
        const config = new Uint8Array(readFileSync(tokFile(name, "tokenizer_config.json")));
        await fc.assert(
          fc.asyncProperty(mutations(0, 3), fc.boolean(), async (edits, onConfig) => {
            const d = disk.newCase();
            writeFileSync(path.join(d, "tokenizer.json"), onConfig ? json : mutate(json, edits));
            writeFileSync(path.join(d, "tokenizer_config.json"), onConfig ? mutate(config, edits) : config);
            const at = (f: string) => f.startsWith(d);
            const out = await handledAsync(() => loadTokenizer(d), { file: at, at: true });
            if (out.ok) handled(() => out.value.encode("你好 hello <|im_end|>", { parseSpecial: true }), { file: at });
          }),
          params(40),
        );
      },
      testTimeout(40, 100),
    );
  }

  it(
    "spm-chatglm3: an edited tokenizer_config.json (added tokens, bos/eos names) loads or is refused, located",
    async () => {
      const model = readFileSync(tokFile("spm-chatglm3", "tokenizer.model"));
      const config = JSON.parse(readFileSync(tokFile("spm-chatglm3", "tokenizer_config.json"), "utf8")) as Json;
      await fc.assert(
        fc.asyncProperty(jsonEdits(3), async (edits) => {
          const d = disk.newCase();
          writeFileSync(path.join(d, "tokenizer.model"), model);
          writeFileSync(path.join(d, "tokenizer_config.json"), JSON.stringify(editJson(config, edits)));
          const at = (f: string) => f.startsWith(d);
          const out = await handledAsync(() => loadTokenizer(d), { file: at, at: true });
          if (out.ok) {
            const ids = handled(() => out.value.encode("[gMASK]sop<|user|> 你好", { parseSpecial: true }), {
              file: at,
            });
            if (ids.ok) handled(() => out.value.decode(ids.value), { file: at });
          }
        }),
        params(80),
      );
    },
    testTimeout(80, 30),
  );
});

// ---------------------------------------------------------------- found by fuzzing (pinned examples)

describe("found by fuzzing", () => {
  const json = (name: string) =>
    JSON.parse(readFileSync(tokFile(name, "tokenizer.json"), "utf8")) as TokenizerJson & Record<string, unknown>;
  const refusal = (fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      return e as { code?: string; where?: { file?: string; line?: number; offset?: number; key?: string } };
    }
    throw new Error("expected a refusal");
  };

  it("a tokenizer.json vocabulary id that is not an integer is refused (it encoded as `undefined`)", () => {
    const file = tokFile("bpe-bytelevel", "tokenizer.json");
    const j = json("bpe-bytelevel");
    const vocab = j.model.vocab as Record<string, unknown>;
    const token = Object.keys(vocab)[193] as string;
    vocab[token] = null;
    expect(refusal(() => new HfJsonTokenizer(j, "h", {}, file))).toMatchObject({
      code: "TOKENIZER_BAD_JSON",
      where: { file, key: `model.vocab[${JSON.stringify(token)}]` },
    });
    const k = json("bpe-bytelevel");
    (k.added_tokens as { id: unknown }[])[0] = { ...(k.added_tokens as object[])[0], id: 2 ** 40 };
    expect(refusal(() => new HfJsonTokenizer(k, "h", {}, file))).toMatchObject({
      where: { key: "added_tokens[0].id" },
    });
  });

  it("a vocabulary that is not one, or an unk_token it lacks, is refused (unknown text encoded as `undefined`)", () => {
    const file = tokFile("bpe-metaspace", "tokenizer.json");
    const j = json("bpe-metaspace");
    j.model.vocab = "天"; // found by FUZZ_RUNS=20: the library built a model that gave `undefined` for "\n"
    expect(refusal(() => new HfJsonTokenizer(j, "h", {}, file))).toMatchObject({
      code: "TOKENIZER_BAD_JSON",
      where: { file, key: "model.vocab" },
    });
    const k = json("bpe-metaspace");
    k.model.unk_token = "<nope>";
    k.model.byte_fallback = false;
    const tok = new HfJsonTokenizer(k, "h", {}, file);
    expect(tok.encode("hello")).not.toContain(undefined);
    expect(refusal(() => tok.encode("天 ☃"))).toMatchObject({
      code: "TOKENIZER_BAD_JSON",
      where: { file, key: "model.vocab" },
    });
  });

  it("a setting the library checks only when it encodes is refused with its section (it threw TypeError)", () => {
    const file = tokFile("bpe-metaspace", "tokenizer.json");
    const j = json("bpe-metaspace");
    // Found by FUZZ_RUNS=20: the whole document grafted as TemplateProcessing's `single`.
    (j.post_processor as Record<string, unknown>).single = json("bpe-metaspace");
    const tok = new HfJsonTokenizer(j, "h", {}, file);
    expect(refusal(() => tok.encode("\u0000"))).toMatchObject({
      code: "TOKENIZER_UNSUPPORTED",
      where: { file, key: "post_processor" },
    });
  });

  it("a decoder that cannot run is refused when the file loads, not when samples are shown after training", () => {
    const file = tokFile("bpe-metaspace", "tokenizer.json");
    const j = json("bpe-metaspace");
    // Found by FUZZ_RUNS=20 FUZZ_SEED=7: a null in the decoder Sequence; encode worked, decode threw TypeError.
    ((j.decoder as Record<string, unknown>).decoders as unknown[]).push(null);
    expect(refusal(() => new HfJsonTokenizer(j, "h", {}, file))).toMatchObject({
      code: "TOKENIZER_UNSUPPORTED",
      where: { file, key: "decoder" },
    });
  });

  it("a component whose `type` is not a name is refused with its key, not as 'Unknown Decoder type: [object Object]'", () => {
    const file = tokFile("bpe-metaspace", "tokenizer.json");
    const j = json("bpe-metaspace");
    (j.decoder as Record<string, unknown>).type = {};
    const e = refusal(() => new HfJsonTokenizer(j, "h", {}, file)) as Error & { code: string; where: object };
    expect(e.code).toBe("TOKENIZER_BAD_JSON");
    expect(e.where).toEqual({ file, key: "decoder.type" });
    expect(e.message).not.toContain("[object Object]");
  });

  it("what the library cannot build is refused with the section that fails", () => {
    const file = tokFile("bpe-metaspace", "tokenizer.json");
    const j = json("bpe-metaspace");
    (j.decoder as Record<string, unknown>).type = "NoSuchDecoder";
    expect(refusal(() => new HfJsonTokenizer(j, "h", {}, file))).toMatchObject({
      code: "TOKENIZER_UNSUPPORTED",
      where: { file, key: "decoder" },
    });
    expect(refusal(() => new HfJsonTokenizer({} as TokenizerJson, "h", {}, file))).toMatchObject({
      where: { file, key: "model" },
    });
  });

  it("a tokenizer.json that is not JSON is refused with its line", async () => {
    const dir = disk.newCase();
    writeFileSync(path.join(dir, "tokenizer.json"), '{\n  "model": {\n    "type": "BPE",,\n');
    await expect(loadTokenizer(dir)).rejects.toMatchObject({
      code: "TOKENIZER_BAD_JSON",
      where: { file: path.join(dir, "tokenizer.json"), line: 3 },
    });
  });

  it("a damaged tokenizer.model is refused with the byte offset and the field", () => {
    const file = tokFile("spm-chatglm3", "tokenizer.model");
    const bytes = new Uint8Array(readFileSync(file));
    // The first piece's length varint, cut: "sub-message runs past its parent" at byte 1, in pieces[0].
    expect(refusal(() => SentencePieceModel.fromBytes(bytes.subarray(0, 5), file))).toMatchObject({
      code: "TOKENIZER_BAD_MODEL",
      where: { file, offset: 1, key: "pieces[0]" },
    });
    // A wire type 6 key (the copy of the first byte shifted the message) is reported where it stands.
    const shifted = mutate(bytes, [{ kind: "copy", from: 0, at: 0, len: 1 }]);
    expect(refusal(() => SentencePieceModel.fromBytes(shifted, file)).where?.offset).toBeTypeOf("number");
    expect(refusal(() => SentencePieceModel.fromBytes(new Uint8Array(0), file))).toMatchObject({
      where: { file, offset: 0, key: "pieces" },
    });
  });

  it("a broken vocabulary is refused with the piece it is about", () => {
    const file = "/m/tokenizer.model";
    const bpe = lenField(2, varField(3, 2)); // trainer_spec.model_type = BPE
    expect(refusal(() => SentencePieceModel.fromBytes(cat(HEAD, pieceOf("", 1), bpe), file))).toMatchObject({
      code: "TOKENIZER_UNSUPPORTED",
      where: { file, key: "pieces[3]" },
    });
    expect(refusal(() => SentencePieceModel.fromBytes(cat(HEAD, pieceOf("<s>", 3), bpe), file))).toMatchObject({
      where: { key: "pieces[3]" },
    });
    expect(refusal(() => SentencePieceModel.fromBytes(cat(pieceOf("a", 1), bpe), file))).toMatchObject({
      where: { key: "pieces" },
    });
    expect(refusal(() => SentencePieceModel.fromBytes(HEAD, file))).toMatchObject({
      where: { key: "trainer_spec.model_type" },
    });
  });
});
