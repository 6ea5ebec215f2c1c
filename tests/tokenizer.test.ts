// Tokenizers against the reference libraries: every text of the golden corpus, encoded by the fixture
// tokenizers with sentencepiece / Rust tokenizers (engine/tests/fixtures/tokenizers.py → expected.json),
// must give the same ids, pieces and decoded text here; plus special-token handling, round trips and errors.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { SentencePieceModel } from "../src/data/tokenizer/sentencepiece.js";
import { CHATGLM3_SPECIALS, loadTokenizer, type Tokenizer } from "../src/data/tokenizer.js";
import { LorakitError } from "../src/errors.js";
import { type Expected, referenceSuite } from "./tokenizer-reference.js";

const ROOT = path.resolve(import.meta.dirname, "..");
const FIXTURES = path.join(ROOT, "tests", ".fixtures", "tokenizers");
const CORPUS = path.join(ROOT, "tests", "fixtures", "tokenizer-corpus.json");

const expected = JSON.parse(readFileSync(path.join(FIXTURES, "expected.json"), "utf8")) as {
  corpus_sha256: string;
  tokenizers: Record<string, Expected>;
};
const NAMES = ["spm-chatglm3", "spm-nfkc", "bpe-bytelevel", "bpe-metaspace"] as const;

it("expected.json was built from the current corpus", () => {
  const sha = createHash("sha256").update(readFileSync(CORPUS)).digest("hex");
  // A stale fixture folder: run `python engine/tests/fixtures/build_all.py --out tests/.fixtures --force`.
  expect(expected.corpus_sha256).toBe(sha);
  const texts = (JSON.parse(readFileSync(CORPUS, "utf8")) as { texts: string[] }).texts;
  expect(texts.length).toBeGreaterThanOrEqual(60);
});

for (const name of NAMES) {
  referenceSuite(
    name,
    () => loadTokenizer(path.join(FIXTURES, name)),
    () => expected.tokenizers[name] as Expected,
  );
}

describe("ChatGLM3 scheme (spm-chatglm3)", () => {
  const exp = expected.tokenizers["spm-chatglm3"] as Expected;
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await loadTokenizer(path.join(FIXTURES, "spm-chatglm3"));
  });

  it("appends the nine special tokens after the SentencePiece vocabulary", () => {
    const n = exp.sp_size as number;
    CHATGLM3_SPECIALS.forEach((t, i) => {
      expect(tok.tokenToId(t)).toBe(n + i);
    });
    expect(tok.vocabSize).toBe(n + 9);
    expect(tok.kind).toBe("sentencepiece");
  });

  it("reads unk/bos/eos from the model and pad from tokenizer_config.json", () => {
    expect(tok.unkId).toBe(0);
    expect(tok.bosId).toBe(1);
    expect(tok.eosId).toBe(2);
    expect(tok.padId).toBe(0); // pad_token "<unk>", as ChatGLM3's config says
  });

  it("keeps typed role markers ordinary without parseSpecial, maps them with it", () => {
    const user = tok.tokenToId("<|user|>") as number;
    const plain = tok.encode("<|user|>\n 你好");
    expect(plain).not.toContain(user);
    expect(tok.decode(plain)).toBe("<|user|>\n 你好");
    const parsed = tok.encode("[gMASK]sop<|user|>\n 你好", { parseSpecial: true });
    expect(parsed.slice(0, 3)).toEqual([tok.tokenToId("[gMASK]"), tok.tokenToId("sop"), user]);
    expect(parsed.slice(3)).toEqual(tok.encode("\n 你好"));
  });

  it("decodes special ids as their spellings, each text run on its own, or skips them", () => {
    const ids = [tok.tokenToId("[gMASK]"), tok.tokenToId("sop"), tok.tokenToId("<|user|>"), ...tok.encode("hi")];
    expect(tok.decode(ids as number[])).toBe("[gMASK]sop<|user|>hi");
    expect(tok.decode(ids as number[], { skipSpecial: true })).toBe("hi");
    expect(tok.pieces(ids.slice(0, 3) as number[])).toEqual(["[gMASK]", "sop", "<|user|>"]);
  });
});

describe("loadTokenizer", () => {
  const tmp = mkdtempSync(path.join(os.tmpdir(), "lorakit-tok-"));

  it("names what the folder holds when there is no tokenizer", async () => {
    const dir = path.join(tmp, "empty-ish");
    mkdirSync(dir);
    writeFileSync(path.join(dir, "config.json"), "{}");
    writeFileSync(path.join(dir, "model.safetensors"), "");
    const err = await loadTokenizer(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LorakitError);
    expect((err as LorakitError).code).toBe("TOKENIZER_NOT_FOUND");
    expect((err as LorakitError).message).toContain("it holds: config.json, model.safetensors");
  });

  it("reports a missing folder and a broken tokenizer.json", async () => {
    await expect(loadTokenizer(path.join(tmp, "nope"))).rejects.toMatchObject({ code: "TOKENIZER_NOT_FOUND" });
    const dir = path.join(tmp, "lfs");
    mkdirSync(dir);
    writeFileSync(path.join(dir, "tokenizer.json"), "version https://git-lfs.github.com/spec/v1\n");
    await expect(loadTokenizer(dir)).rejects.toMatchObject({ code: "TOKENIZER_BAD_JSON" });
  });

  it("refuses a tokenizer.model that is not SentencePiece (GLM-4's tiktoken file)", async () => {
    const dir = path.join(tmp, "tiktoken");
    mkdirSync(dir);
    writeFileSync(path.join(dir, "tokenizer.model"), "IQ== 0\nIg== 1\nIw== 2\n");
    await expect(loadTokenizer(dir)).rejects.toMatchObject({ code: "TOKENIZER_BAD_MODEL" });
  });

  it("refuses a Unigram SentencePiece model clearly", async () => {
    const dir = path.join(tmp, "unigram");
    mkdirSync(dir);
    const str = (field: number, s: string) => [(field << 3) | 2, s.length, ...Buffer.from(s)];
    const piece = [...str(1, "<unk>"), (3 << 3) | 0, 2]; // piece "<unk>", type UNKNOWN
    const trainer = [(3 << 3) | 0, 1]; // model_type UNIGRAM
    const proto = [(1 << 3) | 2, piece.length, ...piece, (2 << 3) | 2, trainer.length, ...trainer];
    writeFileSync(path.join(dir, "tokenizer.model"), Uint8Array.from(proto));
    await expect(loadTokenizer(dir)).rejects.toMatchObject({
      code: "TOKENIZER_UNSUPPORTED",
      message: expect.stringContaining("UNIGRAM is not supported"),
    });
  });

  it("prefers tokenizer.json and hashes the files it reads", async () => {
    const dir = path.join(tmp, "both");
    mkdirSync(dir);
    const json = readFileSync(path.join(FIXTURES, "bpe-bytelevel", "tokenizer.json"));
    writeFileSync(path.join(dir, "tokenizer.json"), json);
    writeFileSync(
      path.join(dir, "tokenizer.model"),
      readFileSync(path.join(FIXTURES, "spm-chatglm3", "tokenizer.model")),
    );
    const tok = await loadTokenizer(dir);
    expect(tok.kind).toBe("tokenizer.json");
    const h = createHash("sha256").update(`tokenizer.json\n${json.length}\n`).update(json).digest("hex");
    expect(tok.hash).toBe(h);
    expect(tok.eosId).toBeUndefined(); // no tokenizer_config.json: no names
  });

  it("reads a tokenizer_config.json that starts with a byte-order mark", async () => {
    const dir = path.join(tmp, "bom-config");
    mkdirSync(dir);
    const src = path.join(FIXTURES, "spm-chatglm3");
    writeFileSync(path.join(dir, "tokenizer.model"), readFileSync(path.join(src, "tokenizer.model")));
    writeFileSync(
      path.join(dir, "tokenizer_config.json"),
      `\uFEFF${readFileSync(path.join(src, "tokenizer_config.json"))}`,
    );
    const tok = await loadTokenizer(dir);
    expect(tok.tokenToId("<|user|>")).toBe(
      (expected.tokenizers["spm-chatglm3"] as Expected).special_tokens["<|user|>"],
    );
  });

  it("writes a lone surrogate (no reference library takes one) as U+FFFD, as UTF-8 encoders do", async () => {
    for (const name of NAMES) {
      const tok = await loadTokenizer(path.join(FIXTURES, name));
      expect(tok.encode("a\uD800b\uDC00"), name).toEqual(tok.encode("a\uFFFDb\uFFFD"));
    }
  });

  it("reads eos/pad names from tokenizer_config.json (ChatML fixture)", async () => {
    const tok = await loadTokenizer(path.join(FIXTURES, "bpe-bytelevel"));
    expect(tok.eosId).toBe(tok.tokenToId("<|im_end|>"));
    expect(tok.padId).toBe(tok.tokenToId("<|endoftext|>"));
    expect(tok.bosId).toBeUndefined();
    const llama = await loadTokenizer(path.join(FIXTURES, "bpe-metaspace"));
    expect([llama.bosId, llama.eosId, llama.unkId, llama.padId]).toEqual([1, 2, 0, undefined]);
  });
});

describe("SentencePiece pieces marked UNUSED", () => {
  /** The model with these pieces' type set to UNUSED (a `type` field appended to each: in proto2 the last wins). */
  function markUnused(model: Buffer, ids: Set<number>): Buffer {
    const varint = (v: number) => {
      const out: number[] = [];
      do {
        out.push((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
        v = Math.floor(v / 128);
      } while (v > 0);
      return Buffer.from(out);
    };
    const read = (at: number): [number, number] => {
      let v = 0;
      let shift = 1;
      for (;;) {
        const b = model[at++] as number;
        v += (b & 0x7f) * shift;
        shift *= 128;
        if (!(b & 0x80)) return [v, at];
      }
    };
    const parts: Buffer[] = [];
    let piece = 0;
    for (let at = 0; at < model.length; ) {
      const [key, afterKey] = read(at);
      const [len, start] = read(afterKey);
      let value = model.subarray(start, start + len);
      if (key === ((1 << 3) | 2) && ids.has(piece++)) value = Buffer.concat([value, Buffer.from([0x18, 5])]);
      parts.push(varint(key), varint(value.length), value);
      at = start + len;
    }
    return Buffer.concat(parts);
  }

  it("are split back into the pieces they were merged from, as sentencepiece does (no segment cache)", () => {
    const base = readFileSync(path.join(FIXTURES, "spm-chatglm3", "tokenizer.model"));
    const plain = SentencePieceModel.fromBytes(new Uint8Array(base), "base");
    const texts = [
      ...(JSON.parse(readFileSync(CORPUS, "utf8")) as { texts: string[] }).texts,
      "臣妾参见皇上，皇上万福金安。 The model was fine-tuned for three epochs.",
    ];
    // Pieces of two or more characters that the corpus uses: some marked UNUSED.
    const merged = (id: number) => {
      const piece = plain.idToPiece(id) ?? "";
      return [...piece].length >= 2 && !/^<0x[0-9A-F]{2}>$/.test(piece) && !plain.isControl(id) && !plain.isUnknown(id);
    };
    const used = new Set(texts.flatMap((t) => plain.encode(t)).filter(merged));
    const marked = new Set([...used].filter((_, i) => i % 3 === 0));
    expect(marked.size).toBeGreaterThan(10);
    const file = path.join(mkdtempSync(path.join(os.tmpdir(), "lorakit-unused-")), "tokenizer.model");
    writeFileSync(file, markUnused(base, marked));
    const python = process.env.LORAKIT_PYTHON ?? "python3";
    const r = spawnSync(
      python,
      [
        "-c",
        "import json, sys, sentencepiece as spm\n" +
          "sp = spm.SentencePieceProcessor(model_file=sys.argv[1])\n" +
          "print(json.dumps(sp.encode(json.load(sys.stdin))))",
        file,
      ],
      { input: JSON.stringify(texts), encoding: "utf8" },
    );
    expect(r.stderr).toBe("");
    const want = JSON.parse(r.stdout) as number[][];
    const model = SentencePieceModel.fromBytes(new Uint8Array(readFileSync(file)), file);
    const got = texts.map((t) => model.encode(t));
    expect(got).toEqual(want);
    // The marking mattered: some text now encodes differently than with the plain model.
    expect(texts.some((t, i) => JSON.stringify(plain.encode(t)) !== JSON.stringify(got[i]))).toBe(true);
  });
});
