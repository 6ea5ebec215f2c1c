// Fuzzing the data readers and format detection (src/data/read.ts, formats.ts; harness: tests/fuzz/harness.ts).
// Seeds are real-world shapes (tests/fuzz/shapes.ts): huanhuan.json-style alpaca, ShareGPT dumps, OpenAI
// messages with tools, ChatGLM3 conversations, written as pretty or one-line JSON arrays or JSON Lines with LF
// or CRLF, with or without a BOM. Properties: what a file says does not depend on how it is laid out; a damaged
// file or record is refused with its file, line and sample (or, with skip_bad_lines, every skip is counted:
// nothing is dropped silently); and no input throws anything but a located LorakitError, or hangs.
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import fc from "fast-check";
import { beforeAll, describe, expect, it } from "vitest";
import { type Conversation, conversationKey, normalizeRecords } from "../src/data/formats.js";
import { readSamples } from "../src/data/read.js";
import { type ChatTemplate, chatglm3Template } from "../src/data/template.js";
import { loadTokenizer } from "../src/data/tokenizer.js";
import { ROOT } from "../src/engine/python.js";
import type { LorakitError } from "../src/errors.js";
import {
  editJson,
  expandDeep,
  handled,
  type Json,
  jsonEdits,
  mutate,
  mutations,
  params,
  scratch,
  testTimeout,
} from "./fuzz/harness.js";
import { layout, recordsOfOneFormat, serialize } from "./fuzz/shapes.js";
import { fixture } from "./helpers.js";

const disk = scratch("lorakit-fuzz-data-");
const SEED_DIR = path.join(ROOT, "tests", "fixtures", "data");
/** A fresh file holding `content`. */
const file = (content: string | Uint8Array, ext = ".jsonl") => disk.file(ext, content);

/** The conversations without their origins (which name lines that differ between layouts). */
const contentOf = (convs: Conversation[]) => convs.map(({ origin: _, ...rest }) => rest);
/** Errors without their lines, which differ between layouts. */
const problemsOf = (e: LorakitError) => e.all().map((x) => [x.code, x.where?.key, x.where?.sample]);

let chatglm3: ChatTemplate;
beforeAll(async () => {
  chatglm3 = chatglm3Template(await loadTokenizer(fixture("tokenizers", "spm-chatglm3")));
});

/** Read and normalize one file, then key and render what it holds as prepare does: the outcome, every error
 * checked to name the file and where in it. */
function readAndNormalize(f: string, skipBadLines = false) {
  const want = { file: f, at: true, wholeFile: ["DATA_EMPTY_FILE"] };
  const read = handled(() => readSamples([f], { skipBadLines }), want);
  if (!read.ok) return { read };
  const norm = handled(() => normalizeRecords(read.value.records), want);
  if (norm.ok)
    for (const conv of norm.value.conversations) {
      handled(() => conversationKey(conv), want);
      handled(() => chatglm3.render(conv), want);
    }
  return { read, norm };
}

describe("data files: layout does not change what they say", () => {
  it(
    "the same records as a pretty or one-line array, or JSONL with LF/CRLF, BOM, blank lines, read the same",
    () => {
      fc.assert(
        fc.property(recordsOfOneFormat, layout, layout, ({ records }, a, b) => {
          disk.newCase();
          const outcomes = [a, b].map((l) => {
            const { text, lines } = serialize(records, l);
            const f = file(text, l.kind === "jsonl" ? ".jsonl" : ".json");
            const { read, norm } = readAndNormalize(f);
            if (!read.ok) throw new Error(`a well-formed file was refused: ${read.error.message}`);
            // Every record, in order, with its 0-based sample index and (where the layout fixes it) its line.
            expect(read.value.records.map((r) => r.value)).toEqual(records);
            expect(read.value.records.map((r) => r.origin.sample)).toEqual(records.map((_, i) => i));
            if (lines) expect(read.value.records.map((r) => r.origin.line)).toEqual(lines);
            expect(read.value.skipped).toEqual([]);
            expect(read.value.bomFiles).toBe(l.bom ? 1 : 0);
            return norm?.ok ? { ok: contentOf(norm.value.conversations) } : { error: norm && problemsOf(norm.error) };
          });
          expect(outcomes[1]).toEqual(outcomes[0]);
        }),
        params(150),
      );
    },
    testTimeout(150, 10),
  );
});

describe("data files: damaged files are refused located, or every skip is counted", () => {
  /** Characters that break JSON where they land. */
  const breakers = fc.constantFrom(
    ...["{", "}", "[", "]", '"', ",", ":", "\\", "\n", "\r\n", "\uFEFF", "\u0000", "null", "1e999", "//"].map((s) =>
      Array.from(new TextEncoder().encode(s)),
    ),
    [0xff],
    [0xc3],
    [0xe4, 0xbd],
    [0xed, 0xa0, 0x80],
  );
  const edits = fc.oneof(
    mutations(0, 4),
    fc.array(
      fc.record({
        kind: fc.constant("insert" as const),
        at: fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }),
        bytes: breakers,
      }),
      { minLength: 1, maxLength: 4 },
    ),
  );

  /** The repository's sample files (huanhuan.json, ShareGPT, ChatGLM3 tools, messages with BOM and CRLF, …). */
  const seeds = readdirSync(SEED_DIR).map((name) => ({
    ext: path.extname(name),
    bytes: new Uint8Array(readFileSync(path.join(SEED_DIR, name))),
  }));
  const generated = fc.tuple(recordsOfOneFormat, layout).map(([{ records }, l]) => ({
    ext: l.kind === "jsonl" ? ".jsonl" : ".json",
    bytes: new TextEncoder().encode(serialize(records, l).text),
  }));

  it(
    "mutated bytes: every problem names the file and its line; skip_bad_lines accounts for every record",
    () => {
      fc.assert(
        fc.property(fc.oneof(generated, fc.constantFrom(...seeds)), edits, (seed, es) => {
          disk.newCase();
          const bytes = mutate(seed.bytes, es);
          const f = file(bytes, seed.ext);
          const strict = readAndNormalize(f);
          const lenient = readAndNormalize(f, true);
          if (!lenient.read.ok || lenient.read.value.files[0]?.kind !== "jsonl") return;
          // JSON Lines: each line with content is a record or a counted skip, never dropped silently.
          const text = new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes).replace(/^\uFEFF/, "");
          const withContent = text.split("\n").filter((line) => line.replace(/\r$/, "").trim() !== "").length;
          expect(lenient.read.value.records.length + lenient.read.value.skipped.length).toBe(withContent);
          if (strict.read.ok) expect(strict.read.value.records.length).toBe(withContent);
        }),
        params(400),
      );
    },
    testTimeout(400, 10),
  );

  it(
    "random bytes and text are refused located, or read",
    () => {
      fc.assert(
        fc.property(
          fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.string({ unit: "binary", maxLength: 64 })),
          fc.constantFrom(".json", ".jsonl"),
          (content, ext) => {
            disk.newCase();
            readAndNormalize(file(content, ext));
          },
        ),
        params(300),
      );
    },
    testTimeout(300, 5),
  );

  it(
    "edited records (values replaced, keys renamed or deleted, turns duplicated) are refused with file, line, sample and key",
    () => {
      fc.assert(
        fc.property(recordsOfOneFormat, jsonEdits(3), fc.boolean(), ({ records }, es, crlf) => {
          disk.newCase();
          const edited = editJson(records as Json, es);
          const list = Array.isArray(edited) ? edited : [edited];
          const { text, lines } = serialize(list, {
            kind: "jsonl",
            indent: 1,
            crlf,
            bom: false,
            blankLines: false,
            trailingNewline: true,
          });
          const f = file(expandDeep(text));
          const { read, norm } = readAndNormalize(f);
          if (!read.ok) return; // an edit that emptied the file
          // A one-line file that is an array (`[null, null]`) reads as a JSON array: its lines are not JSONL's.
          if (!norm || norm.ok || read.value.files[0]?.kind !== "jsonl") return;
          for (const e of norm.error.all()) {
            // The record it names is where the file has it.
            const s = e.where?.sample;
            if (s === undefined) throw new Error(`no sample: ${e.code} ${e.message}`);
            expect(e.where?.line).toBe(lines?.[s]);
          }
        }),
        params(300),
      );
    },
    testTimeout(300, 10),
  );
});

describe("found by fuzzing", () => {
  const errorsOf = (fn: () => unknown): LorakitError[] => {
    try {
      fn();
    } catch (e) {
      return (e as LorakitError).all();
    }
    throw new Error("expected an error");
  };

  it("the '… and N more' summary of a long error list says where the next problem is", () => {
    const f = file(Array.from({ length: 23 }, (_, i) => `{"instruction": "q${i}", "output": }`).join("\n"));
    const errs = errorsOf(() => readSamples([f]));
    expect(errs).toHaveLength(21);
    expect(errs[20]?.message).toContain("3 more");
    expect(errs[20]?.where).toEqual({ file: f, line: 21, sample: 20 });
  });

  it("a sample in another format than the file's first names its sample index", () => {
    const f = file(
      ['{"instruction": "a", "output": "b"}', '{"messages": [{"role": "user", "content": "x"}]}'].join("\n"),
    );
    const { read } = readAndNormalize(f);
    if (!read.ok) throw read.error;
    const [e] = errorsOf(() => normalizeRecords(read.value.records));
    expect(e?.code).toBe("DATA_MIXED_FORMATS");
    expect(e?.where).toEqual({ file: f, line: 2, sample: 1 });
  });

  it("a sample nested thousands of levels deep is a located bad record (JSON.stringify overflowed the stack)", () => {
    const deep = "[".repeat(5000) + "]".repeat(5000);
    const lines = [
      '{"instruction": "q", "output": "a"}',
      `{"messages": [{"role": "system", "content": "s", "tools": ${deep}}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}`,
    ];
    const f = file(lines.join("\n"));
    const [e] = errorsOf(() => readSamples([f]));
    expect(e?.code).toBe("DATA_TOO_DEEP");
    expect(e?.where).toEqual({ file: f, line: 2, sample: 1 });
    // skip_bad_lines skips it, counted.
    const lenient = readSamples([f], { skipBadLines: true });
    expect(lenient.records).toHaveLength(1);
    expect(lenient.skipped).toEqual([{ file: f, line: 2, sample: 1, reason: expect.stringContaining("100 levels") }]);
    // The same in an array file.
    const g = file(`[\n${lines.join(",\n")}\n]`, ".json");
    expect(errorsOf(() => readSamples([g]))[0]?.where).toEqual({ file: g, line: 3, sample: 1 });
  });
});
