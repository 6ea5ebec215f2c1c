// Fuzzing the safetensors reader (src/data/safetensors.ts) and the config loader (src/config/load.ts); harness:
// tests/fuzz/harness.ts. Safetensors: what the writer writes reads back the same; mutated prepared-data and
// checkpoint files, and edited headers, read or are refused with the file, the byte offset and the tensor.
// Config: a run.yaml means the same however it is laid out (block or flow style, JSON, CRLF, BOM, comments);
// random YAML, mutated and edited configs, anchors and aliases are refused with the file and a line or key.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { loadConfig, parseConfigText } from "../src/config/load.js";
import { flat, readSafetensors, type Tensor, writeSafetensors } from "../src/data/safetensors.js";
import {
  editJson,
  expandDeep,
  handled,
  handledAsync,
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
import { fixture } from "./helpers.js";

const disk = scratch("lorakit-fuzz-files-");
const fresh = (ext: string) => disk.file(ext);

// ---------------------------------------------------------------- safetensors

const tensor: fc.Arbitrary<Tensor> = fc.oneof(
  fc.array(fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), { maxLength: 40 }).map((v) => flat(Int32Array.from(v))),
  fc
    .array(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), { maxLength: 20 })
    .map((v) => flat(BigInt64Array.from(v))),
  fc
    .array(fc.float({ noNaN: true }), { maxLength: 40 })
    .map((v) => flat(Float32Array.from(v)))
    .chain((t) =>
      // Some 2-D: [rows, cols] with rows × cols the length.
      t.data.length % 2 === 0 && t.data.length > 0
        ? fc.constantFrom(t, { ...t, shape: [2, t.data.length / 2] })
        : fc.constant(t),
    ),
);

/** A prepared-data file as prepare writes it: input_ids, labels (int32) and offsets (int64), with metadata. */
function preparedFile(): Uint8Array {
  const f = fresh(".safetensors");
  writeSafetensors(
    f,
    {
      input_ids: flat(Int32Array.from([64790, 64792, 64795, 30910, 13, 307, 2])),
      labels: flat(Int32Array.from([-100, -100, -100, -100, 13, 307, 2])),
      offsets: flat(BigInt64Array.from([0n, 3n, 7n])),
    },
    { format: "lorakit-prepared-v1" },
  );
  return new Uint8Array(readFileSync(f));
}

describe("safetensors", () => {
  it(
    "what the writer writes reads back the same",
    () => {
      fc.assert(
        fc.property(
          fc.dictionary(
            nastyString(12).filter((k) => k !== "__metadata__" && k.length > 0),
            tensor,
            { maxKeys: 5 },
          ),
          fc.dictionary(nastyString(8), nastyString(16), { maxKeys: 3 }),
          (tensors, metadata) => {
            disk.newCase();
            const f = fresh(".safetensors");
            writeSafetensors(f, tensors, metadata);
            const back = readSafetensors(f);
            expect(Object.keys(back.tensors).sort()).toEqual(Object.keys(tensors).sort());
            for (const [name, t] of Object.entries(tensors)) {
              const b = back.tensors[name] as Tensor;
              expect([b.dtype, b.shape, Array.from(b.data as ArrayLike<unknown>)]).toEqual([
                t.dtype,
                t.shape,
                Array.from(t.data as ArrayLike<unknown>),
              ]);
            }
            // Keys and values are written as JSON: lone surrogates come back as written.
            expect(back.metadata).toEqual(Object.keys(metadata).length > 0 ? metadata : {});
          },
        ),
        params(200),
      );
    },
    testTimeout(200, 5),
  );

  for (const [name, seed] of [
    ["prepared tokens", preparedFile],
    [
      "a checkpoint's model.safetensors",
      () => new Uint8Array(readFileSync(fixture("models", "family-llama", "model.safetensors"))),
    ],
  ] as const) {
    it(
      `mutated bytes of ${name} read or are refused with the file, offset and tensor`,
      () => {
        const bytes = seed();
        // The header is where the meaning is: aim half of the edits at it.
        const headerEnd = 8 + Number(Buffer.from(bytes).readBigUInt64LE(0));
        const scale = headerEnd / bytes.length;
        const edits = fc.oneof(
          mutations(0, 3),
          mutations(0, 3).map((es) => es.map((e) => ("at" in e ? { ...e, at: e.at * scale } : e))),
        );
        fc.assert(
          fc.property(edits, (es) => {
            disk.newCase();
            const f = fresh(".safetensors");
            writeFileSync(f, mutate(bytes, es));
            const out = handled(() => readSafetensors(f), { file: f, at: true });
            if (!out.ok) return;
            for (const t of Object.values(out.value.tensors))
              expect(t.data.length).toBe(t.shape.reduce((a, b) => a * b, 1));
          }),
          params(200),
        );
      },
      testTimeout(200, 5),
    );
  }

  it(
    "edited headers (dtype, shape, offsets, metadata replaced or removed) read or are refused, located",
    () => {
      const bytes = preparedFile();
      const n0 = Number(Buffer.from(bytes).readBigUInt64LE(0));
      const header = JSON.parse(Buffer.from(bytes.subarray(8, 8 + n0)).toString("utf8")) as Json;
      const data = bytes.subarray(8 + n0);
      fc.assert(
        fc.property(jsonEdits(3), (es) => {
          disk.newCase();
          const json = Buffer.from(expandDeep(JSON.stringify(editJson(header, es))), "utf8");
          const len = Buffer.alloc(8);
          len.writeBigUInt64LE(BigInt(json.length));
          const f = fresh(".safetensors");
          writeFileSync(f, Buffer.concat([len, json, data]));
          const out = handled(() => readSafetensors(f), { file: f, at: true });
          if (out.ok)
            for (const t of Object.values(out.value.tensors))
              expect(t.data.length).toBe(t.shape.reduce((a, b) => a * b, 1));
        }),
        params(300),
      );
    },
    testTimeout(300, 5),
  );

  it("random bytes are refused, located", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        disk.newCase();
        const f = fresh(".safetensors");
        writeFileSync(f, bytes);
        handled(() => readSafetensors(f), { file: f, at: true });
      }),
      params(200),
    );
  });
});

// ---------------------------------------------------------------- config

/** Configs people write: the Self-LLM ChatGLM3 recipe, a minimal one, several files, a ChatML model. */
const CONFIGS: Json[] = [
  {
    name: "huanhuan",
    model: "../models/chatglm3-6b",
    data: { train: "data/huanhuan.json", eval_split: 0.05, template: "chatglm3", max_length: 512 },
    lora: { r: 8, alpha: 32, dropout: 0.1, targets: ["query_key_value"] },
    train: {
      epochs: 3,
      batch_size: 4,
      grad_accum: 2,
      lr: 1e-4,
      scheduler: "cosine",
      gradient_checkpointing: "low_memory",
      save_every: 100,
    },
    samples: { count: 4, prompts: ["你是谁？"] },
  },
  { model: "m", data: { train: "train.jsonl" } },
  {
    model: "./qwen2-0.5b-instruct",
    output_dir: "out",
    data: {
      train: ["a.jsonl", "b.json"],
      eval: "held.jsonl",
      format: "messages",
      system: "Be brief.",
      skip_bad_lines: true,
    },
    train: { max_steps: 200, pack_tokens: 8192, devices: 2, shard: "fsdp", precision: "bf16", patience: 2 },
  },
];

/** Ways to write the same YAML: block or flow, indents, quoting, JSON, CRLF, a BOM, comments. */
const yamlLayout = fc.record({
  json: fc.boolean(),
  indent: fc.integer({ min: 1, max: 6 }),
  flow: fc.boolean(),
  quote: fc.constantFrom("PLAIN", "QUOTE_DOUBLE", "QUOTE_SINGLE"),
  crlf: fc.boolean(),
  bom: fc.boolean(),
  comments: fc.boolean(),
});

type YamlLayout = typeof yamlLayout extends fc.Arbitrary<infer T> ? T : never;

function yamlText(config: Json, l: YamlLayout): string {
  let text = l.json
    ? JSON.stringify(config, null, l.indent)
    : stringify(config, {
        indent: l.indent,
        collectionStyle: l.flow ? "flow" : "block",
        defaultStringType: l.quote as "PLAIN",
        defaultKeyType: "PLAIN",
        lineWidth: 0,
      });
  if (l.comments && !l.json) text = `# a run of lorakit\n${text.replaceAll("\n", "  # note\n")}`;
  if (l.crlf) text = text.replaceAll("\n", "\r\n");
  return `${l.bom ? "\uFEFF" : ""}${text}`;
}

describe("config", () => {
  const FILE = "/work/run.yaml";
  const want = { file: FILE, at: true, libraryText: true };

  it(
    "a config means the same in block or flow style, as JSON, with CRLF, a BOM or comments",
    () => {
      fc.assert(
        fc.property(fc.constantFrom(...CONFIGS), yamlLayout, (config, l) => {
          const plain: YamlLayout = {
            ...l,
            json: false,
            flow: false,
            crlf: false,
            bom: false,
            comments: false,
            quote: "PLAIN",
          };
          const a = handled(() => parseConfigText(yamlText(config, plain), FILE), want);
          const b = handled(() => parseConfigText(yamlText(config, l), FILE), want);
          if (!a.ok) throw a.error;
          if (!b.ok) throw b.error;
          expect(b.value.config).toEqual(a.value.config);
        }),
        params(200),
      );
    },
    testTimeout(200, 5),
  );

  /** YAML that means something: anchors, aliases, merges, tags, documents, flow brackets, quotes. */
  const yamlBits = fc.constantFrom(
    ":",
    ": ",
    "- ",
    "\n",
    "\r\n",
    "  ",
    "\t",
    "#",
    "&a ",
    "*a",
    "<<: *a",
    "!!binary ",
    "!!str ",
    "!tag ",
    "---\n",
    "...\n",
    "{",
    "}",
    "[",
    "]",
    "'",
    '"',
    "|",
    ">",
    "?",
    "%YAML 1.1\n",
    "~",
    ".nan",
    "1e400",
    "0x1F",
    "\uFEFF",
  );
  const textEdits = fc.array(
    fc.record({
      kind: fc.constant("insert" as const),
      at: fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }),
      bytes: yamlBits.map((s) => Array.from(new TextEncoder().encode(s))),
    }),
    { minLength: 1, maxLength: 5 },
  );

  it(
    "mutated configs (bytes, YAML syntax inserted) load or are refused with the file and a line or key",
    () => {
      fc.assert(
        fc.property(fc.constantFrom(...CONFIGS), yamlLayout, fc.oneof(mutations(0, 3), textEdits), (config, l, es) => {
          const text = new TextDecoder().decode(mutate(new TextEncoder().encode(yamlText(config, l)), es));
          handled(() => parseConfigText(text, FILE), want);
        }),
        params(500),
      );
    },
    testTimeout(500, 5),
  );

  it(
    "edited configs (values replaced, keys renamed or deleted, deep values) load or are refused, located",
    () => {
      fc.assert(
        fc.property(fc.constantFrom(...CONFIGS), jsonEdits(3), fc.boolean(), (config, es, json) => {
          const edited = editJson(config, es);
          const text = json ? expandDeep(JSON.stringify(edited)) : stringify(edited);
          handled(() => parseConfigText(text, FILE), want);
        }),
        params(300),
      );
    },
    testTimeout(300, 5),
  );

  it(
    "random YAML: any value, any text, aliases of aliases",
    () => {
      const aliasBomb = fc.integer({ min: 2, max: 12 }).map((width) => {
        const lines = [`a0: &a0 [${Array(width).fill("x").join(", ")}]`];
        for (let i = 1; i < 8; i++)
          lines.push(
            `a${i}: &a${i} [${Array(width)
              .fill(`*a${i - 1}`)
              .join(", ")}]`,
          );
        return `${lines.join("\n")}\nmodel: m\ndata: {train: t.json}\n`;
      });
      fc.assert(
        fc.property(
          fc.oneof(
            jsonValue.map((v) => stringify(v)),
            fc.string({ unit: "binary", maxLength: 80 }),
            aliasBomb,
          ),
          (text) => {
            handled(() => parseConfigText(text, FILE), want);
          },
        ),
        params(300),
      );
    },
    testTimeout(300, 5),
  );

  it(
    "loadConfig: an edited config and its paths on disk load or are refused, located",
    async () => {
      await fc.assert(
        fc.asyncProperty(jsonEdits(2), async (es) => {
          const root = disk.newCase();
          mkdirSync(path.join(root, "m"));
          writeFileSync(path.join(root, "m", "config.json"), "{}");
          writeFileSync(path.join(root, "train.jsonl"), "");
          const f = path.join(root, "run.yaml");
          writeFileSync(f, stringify(editJson(CONFIGS[1] as Json, es)));
          await handledAsync(() => loadConfig(f), { file: f, at: true, libraryText: true });
        }),
        params(100),
      );
    },
    testTimeout(100, 10),
  );
});

describe("found by fuzzing", () => {
  const refusal = (fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      return e as { code?: string; message: string; where?: object; constructor: { name: string } };
    }
    throw new Error("expected a refusal");
  };
  /** A safetensors file with this header (JSON text) and data. */
  const withHeader = (header: string, data = new Uint8Array(0)) => {
    const json = Buffer.from(header, "utf8");
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    const f = fresh(".safetensors");
    writeFileSync(f, Buffer.concat([len, json, data]));
    return f;
  };

  it("safetensors: a header entry that is not a tensor is refused with the file, offset and name (it threw TypeError)", () => {
    const f = withHeader('{"input_ids": null}');
    expect(refusal(() => readSafetensors(f))).toMatchObject({
      code: "SAFETENSORS_INVALID",
      where: { file: f, offset: 8, key: "input_ids" },
    });
    const g = withHeader('{"offsets": {"shape": [2], "data_offsets": [0, 16]}}', new Uint8Array(16));
    expect(refusal(() => readSafetensors(g)).message).toContain("has the dtype none");
  });

  it("safetensors: offsets that do not hold the shape are refused (a misaligned size threw RangeError)", () => {
    const f = withHeader('{"labels": {"dtype": "I32", "shape": [2], "data_offsets": [0, 7]}}', new Uint8Array(8));
    expect(refusal(() => readSafetensors(f))).toMatchObject({ code: "SAFETENSORS_INVALID", where: { key: "labels" } });
    const g = withHeader('{"labels": {"dtype": "I32", "shape": [3], "data_offsets": [0, 8]}}', new Uint8Array(8));
    expect(refusal(() => readSafetensors(g))).toMatchObject({ code: "SAFETENSORS_INVALID", where: { key: "labels" } });
  });

  it("safetensors: a header nested thousands deep, a short file and a missing one are located", () => {
    const deep = "[".repeat(5000) + "]".repeat(5000);
    const f = withHeader(`{"labels": {"dtype": "I32", "shape": ${deep}, "data_offsets": [0, 0]}}`);
    expect(refusal(() => readSafetensors(f))).toMatchObject({ code: "SAFETENSORS_INVALID", where: { key: "labels" } });
    const g = fresh(".safetensors");
    writeFileSync(g, "abc");
    expect(refusal(() => readSafetensors(g))).toMatchObject({ where: { file: g, offset: 0 } });
    expect(refusal(() => readSafetensors(`${g}.missing`))).toMatchObject({ where: { file: `${g}.missing` } });
  });

  it("config: aliases that expand past the limit are a located CONFIG_BAD_YAML (it threw ReferenceError)", () => {
    const lines = ["a0: &a0 [x, x]"];
    for (let i = 1; i < 8; i++) lines.push(`a${i}: &a${i} [*a${i - 1}, *a${i - 1}]`);
    const e = refusal(() => parseConfigText(`model: m\n${lines.join("\n")}\n`, "/w/run.yaml"));
    expect(e).toMatchObject({ code: "CONFIG_BAD_YAML", where: { file: "/w/run.yaml", line: 3 } });
  });

  it("config: lists nested a thousand deep are refused before the YAML composer runs out of stack", () => {
    // 2 KB of "- - - …": the composer's recursion overflowed the stack ("Maximum call stack size exceeded"
    // as the YAML error); in a process whose first YAML this is, V8 can abort instead ("FATAL ERROR:
    // RegExpCompiler Allocation failed"), which no catch sees.
    for (const text of [`${"- ".repeat(1000)}x`, `model: m\ndata: {train: ${"[".repeat(5000)}${"]".repeat(5000)}}`]) {
      const e = refusal(() => parseConfigText(text, "/w/run.yaml"));
      expect(e).toMatchObject({
        code: "CONFIG_BAD_YAML",
        where: { file: "/w/run.yaml", line: text.startsWith("-") ? 1 : 2 },
      });
      expect(e.message).toContain("more than 64 levels deep");
    }
    // Nesting a config really has stays well inside the limit.
    const ok = parseConfigText("model: m\ndata: {train: [a.jsonl, b.jsonl]}\nlora: {targets: [q, v]}", "/w/run.yaml");
    expect(ok.config.data.train).toEqual(["a.jsonl", "b.jsonl"]);
  });
});
