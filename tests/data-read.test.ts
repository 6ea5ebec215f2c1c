// Reading sample files and normalizing their formats: origins, BOM/CRLF, every problem named with
// file:line, key path and a fix.
import { writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { normalizeRecords } from "../src/data/formats.js";
import { readSamples } from "../src/data/read.js";
import { ROOT } from "../src/engine/python.js";
import { formatError } from "../src/errors.js";
import { caught, tmpDir } from "./helpers.js";

const data = (f: string) => path.join(ROOT, "tests", "fixtures", "data", f);

const load = (file: string, opts: Parameters<typeof normalizeRecords>[1] = {}) =>
  normalizeRecords(readSamples([file]).records, opts).conversations;

describe("read", () => {
  it("gives each element of a JSON array the line where it starts", () => {
    const r = readSamples([data("huanhuan.json")]);
    expect(r.records.map((x) => x.origin.line)).toEqual([2, 7, 12, 17, 22, 23]);
    expect(r.files[0]).toMatchObject({ kind: "json", records: 6, bom: false });
    expect(r.files[0]?.sha256).toMatch(/^[0-9a-f]{64}$/);
  });

  it("strips and counts a BOM, reads CRLF and skips blank lines", () => {
    const r = readSamples([data("messages-bom-crlf.jsonl")]);
    expect(r.bomFiles).toBe(1);
    expect(r.records.map((x) => x.origin.line)).toEqual([1, 3]);
    expect(r.records[0]?.value).toMatchObject({ messages: [{ role: "user" }, { role: "assistant" }] });
  });

  it("reports every malformed JSONL line at once, with the parser's reason", () => {
    const e = caught(() => readSamples([data("bad-lines.jsonl")]));
    const all = e.all();
    expect(all.map((x) => [x.code, x.where?.line])).toEqual([
      ["DATA_BAD_JSON", 2],
      ["DATA_BAD_JSON", 5],
    ]);
    expect(all[0]?.where?.file).toBe(data("bad-lines.jsonl"));
    expect(all[1]?.message).toMatch(/malformed JSON line: .+/);
    expect(e.hint).toMatch(/skip_bad_lines/);
    expect(formatError(e)).toContain("bad-lines.jsonl:5");
  });

  it("skips bad lines only when asked, and returns every skip", () => {
    const r = readSamples([data("bad-lines.jsonl")], { skipBadLines: true });
    expect(r.records.map((x) => x.origin.line)).toEqual([1, 3, 6]);
    expect(r.skipped.map((s) => s.line)).toEqual([2, 5]);
    expect(r.skipped[0]?.reason).toBeTruthy();
  });

  it("finds a bad element of a JSON array by its line, and can skip it", () => {
    // Written here: a committed invalid .json would trip the repository's JSON linter.
    const file = path.join(tmpDir(), "bad-array.json");
    writeFileSync(
      file,
      '[\n  {"instruction": "one", "output": "1"},\n  {"instruction": "two", "output": "2",},\n  {"instruction": "three", "output": "3"}\n]\n',
    );
    const e = caught(() => readSamples([file]));
    expect(e.code).toBe("DATA_BAD_JSON");
    expect(e.where?.line).toBe(3);
    const r = readSamples([file], { skipBadLines: true });
    expect(r.records.map((x) => x.origin.line)).toEqual([2, 4]);
    expect(r.skipped).toHaveLength(1);
  });

  it("tells the records of a one-line JSON array apart by their index in the file", () => {
    const file = path.join(tmpDir(), "minified.json");
    writeFileSync(
      file,
      '[{"instruction":"a","output":"1"},{"instruction":"b","output":"2",},{"instruction":"c","output":"3"}]',
    );
    const e = caught(() => readSamples([file]));
    expect(e).toMatchObject({ code: "DATA_BAD_JSON", where: { file, line: 1, sample: 1 } });
    expect(formatError(e)).toContain("minified.json:1, sample 1");
    const r = readSamples([file], { skipBadLines: true });
    expect(r.records.map((x) => [x.origin.line, x.origin.sample])).toEqual([
      [1, 0],
      [1, 2],
    ]);
    expect(r.skipped).toMatchObject([{ line: 1, sample: 1 }]);
    const jsonl = readSamples([data("bad-lines.jsonl")], { skipBadLines: true });
    expect(jsonl.records.map((x) => [x.origin.line, x.origin.sample])).toEqual([
      [1, 0],
      [3, 2],
      [6, 4],
    ]);
  });

  it("caps the list of problems and says how many more", () => {
    const dir = tmpDir();
    const file = path.join(dir, "many.jsonl");
    writeFileSync(file, Array.from({ length: 30 }, () => "{bad").join("\n"));
    const all = caught(() => readSamples([file])).all();
    expect(all).toHaveLength(21);
    expect(all[20]?.message).toMatch(/and 10 more/);
  });

  it("names a file that is one JSON object and not UTF-8", () => {
    const dir = tmpDir();
    const obj = path.join(dir, "obj.json");
    writeFileSync(obj, '{\n "data": [\n  {"instruction": "a", "output": "b"}\n ]\n}\n');
    const e = caught(() => readSamples([obj]));
    expect(e.message).toMatch(/one JSON object/);
    expect(e.hint).toMatch(/`data`/);
    const gbk = path.join(dir, "gbk.jsonl");
    writeFileSync(gbk, Buffer.from([0x7b, 0x7d, 0x0a, 0xc4, 0xe3, 0xba, 0xc3, 0x0a]));
    const g = caught(() => readSamples([gbk]));
    expect(g.code).toBe("DATA_BAD_ENCODING");
    expect(g.where?.line).toBe(2);
  });
});

describe("formats", () => {
  it("reads the Self-LLM huanhuan.json shape, with data.system as the default system prompt", () => {
    const convs = load(data("huanhuan.json"), { system: "现在你要扮演皇帝身边的女人--甄嬛" });
    expect(convs).toHaveLength(6);
    expect(convs[0]?.messages).toEqual([
      { role: "system", content: "现在你要扮演皇帝身边的女人--甄嬛" },
      {
        role: "user",
        content: "小姐，别的秀女都在求中选，唯有咱们小姐想被撂牌子，菩萨一定记得真真儿的——",
        key: "instruction",
      },
      { role: "assistant", content: "嘘——都说许愿说破是不灵的。", key: "output" },
    ]);
    expect(convs[3]?.messages[1]?.content).toBe("你是谁？\n请用一句话回答。");
    expect(convs[3]?.origin).toEqual({ file: data("huanhuan.json"), line: 17, sample: 3 });
  });

  it("reads alpaca history, OpenAI messages, ShareGPT and ChatGLM3 conversations", () => {
    const [a] = normalizeRecords([
      {
        value: { instruction: "q2", input: "", output: "a2", history: [["q1", "a1"]], system: "s" },
        origin: { file: "f", line: 1 },
      },
    ]).conversations;
    expect(a?.messages.map((m) => `${m.role}:${m.content}`)).toEqual([
      "system:s",
      "user:q1",
      "assistant:a1",
      "user:q2",
      "assistant:a2",
    ]);

    const m = load(data("messages-bom-crlf.jsonl"), { system: "default" });
    expect(m[0]?.messages[0]).toEqual({ role: "system", content: "default" });
    expect(m[1]?.messages[0]).toEqual({ role: "system", content: "Be brief.", key: "messages[0]" });

    const s = load(data("sharegpt.jsonl"));
    expect(s[0]?.messages.map((x) => x.role)).toEqual(["system", "user", "assistant"]);
    expect(s[1]?.messages.map((x) => x.role)).toEqual(["user", "assistant", "user", "assistant"]);

    const g = load(data("chatglm3.jsonl"));
    expect(g[0]?.tools).toBeUndefined(); // the tools are the system turn's, not the record's
    expect(g[0]?.messages[0]?.tools).toEqual([{ name: "get_weather", parameters: { city: "string" } }]);
    expect(g[0]?.messages[2]).toEqual({
      role: "assistant",
      metadata: "get_weather",
      content: "```python\ntool_call(city='北京')\n```",
      key: "conversations[2]",
    });
    expect(g[0]?.messages[3]?.role).toBe("observation");
    expect(g[1]?.messages[1]?.loss).toBe(false);
  });

  it("expands the first finetune_demo's tool turn into a call and its observation", () => {
    const [c] = normalizeRecords(
      [
        {
          value: {
            conversations: [
              { role: "user", content: "q" },
              {
                role: "tool",
                name: "track",
                parameters: { symbol: "AAPL", n: 2, ok: true, s: "it's" },
                observation: { p: 1 },
              },
              { role: "assistant", content: "a" },
            ],
          },
          origin: { file: "f", line: 1 },
        },
      ],
      { format: "conversations" },
    ).conversations;
    expect(c?.messages[1]).toEqual({
      role: "assistant",
      metadata: "track",
      content: "```python\ntool_call(symbol='AAPL', n=2, ok=True, s=\"it's\")\n```",
      key: "conversations[1]",
    });
    expect(c?.messages[2]).toEqual({ role: "observation", content: '{"p": 1}', key: "conversations[1]" });
  });

  it("reads ChatGLM3's tool format in OpenAI messages too: metadata, a system turn's tools, tool results", () => {
    const tools = [{ name: "get_weather", parameters: { city: "string" } }];
    const [c] = normalizeRecords([
      {
        value: {
          tools: JSON.stringify(tools), // a JSON string, as some exports write it
          messages: [
            { role: "system", content: "s", tools },
            { role: "user", content: "北京？" },
            { role: "assistant", metadata: "get_weather", content: "tool_call(city='北京')" },
            { role: "tool", content: "晴", name: "get_weather", tool_call_id: "1" },
            { role: "observation", content: "more" },
            { role: "assistant", content: "晴。" },
          ],
        },
        origin: { file: "f", line: 1, sample: 0 },
      },
    ]).conversations;
    expect(c?.tools).toEqual(tools);
    expect(c?.messages).toEqual([
      { role: "system", content: "s", tools, key: "messages[0]" },
      { role: "user", content: "北京？", key: "messages[1]" },
      { role: "assistant", metadata: "get_weather", content: "tool_call(city='北京')", key: "messages[2]" },
      { role: "tool", content: "晴", key: "messages[3]" },
      { role: "observation", content: "more", key: "messages[4]" },
      { role: "assistant", content: "晴。", key: "messages[5]" },
    ]);
  });

  it("refuses tool data it cannot place, located: tools on a user turn, OpenAI tool_calls", () => {
    const e = caught(() =>
      normalizeRecords([
        {
          value: {
            conversations: [
              { role: "user", content: "q", tools: [{ name: "f" }] },
              { role: "assistant", content: "", tool_calls: [{ id: "1" }] },
              { role: "assistant", content: "a" },
            ],
          },
          origin: { file: "f.json", line: 1, sample: 4 },
        },
      ]),
    );
    expect(e.all().map((x) => [x.code, x.where?.key, x.where?.sample])).toEqual([
      ["DATA_BAD_KEY", "conversations[0].tools", 4],
      ["DATA_UNSUPPORTED", "conversations[1].tool_calls", 4],
    ]);
  });

  it("takes a turn's `loss` as given; without it only assistant turns are learned", () => {
    const rec = (turns: unknown[]) => [{ value: { conversations: turns }, origin: { file: "f", line: 1 } }];
    // Only a tool result marked to learn: something is learned, so the sample stands.
    const [c] = normalizeRecords(
      rec([
        { role: "user", content: "q" },
        { role: "assistant", content: "a", loss: false },
        { role: "observation", content: "o", loss: true },
      ]),
    ).conversations;
    expect(c?.messages.map((m) => m.loss)).toEqual([undefined, false, true]);
    // Nothing learned: refused for training, fine as a prompt (`lorakit tokenize --chat`).
    const prompt = rec([{ role: "user", content: "only a question" }]);
    expect(caught(() => normalizeRecords(prompt)).code).toBe("DATA_NO_ASSISTANT");
    expect(normalizeRecords(prompt, { prompt: true }).conversations).toHaveLength(1);
  });

  it("reports every problem with file:line, key path and the nearest valid key or value", () => {
    const e = caught(() => load(data("problems.jsonl")));
    const all = e.all();
    const by = (code: string) => all.filter((x) => x.code === code);
    expect(all.map((x) => [x.where?.line, x.code])).toEqual([
      [1, "DATA_MISSING_FIELD"],
      [2, "DATA_EMPTY_RESPONSE"],
      [3, "DATA_MIXED_FORMATS"],
      [4, "DATA_BAD_TYPE"],
      [5, "DATA_MIXED_FORMATS"],
    ]);
    expect(by("DATA_MISSING_FIELD")[0]?.where?.key).toBe("instruction");
    expect(by("DATA_MISSING_FIELD")[0]?.hint).toMatch(/`intruction` — did you mean `instruction`/);
    expect(by("DATA_EMPTY_RESPONSE")[0]?.where?.key).toBe("output");
    expect(by("DATA_BAD_TYPE")[0]?.message).toMatch(/`output` must be a string, found a number/);
    expect(all[2]?.message).toMatch(/line 1\) is alpaca/);
  });

  it("names a bad role and a missing answer in ChatGLM3 conversations", () => {
    const e = caught(() =>
      normalizeRecords(
        [
          {
            value: {
              conversations: [
                { role: "user", content: "hi" },
                { role: "asistant", content: "x" },
              ],
            },
            origin: { file: "f.jsonl", line: 3 },
          },
          {
            value: { conversations: [{ role: "user", content: "only a question" }] },
            origin: { file: "f.jsonl", line: 4 },
          },
          {
            value: {
              conversations: [
                { role: "user", content: "q" },
                { role: "assistant", content: "" },
              ],
            },
            origin: { file: "f.jsonl", line: 5 },
          },
        ],
        { format: "conversations" },
      ),
    );
    const [role, none, empty] = e.all();
    expect(role).toMatchObject({
      code: "DATA_BAD_ROLE",
      where: { file: "f.jsonl", line: 3, key: "conversations[1].role" },
    });
    expect(role?.hint).toMatch(/Did you mean "assistant"/);
    expect(none).toMatchObject({ code: "DATA_NO_ASSISTANT", where: { line: 4 } });
    expect(empty).toMatchObject({ code: "DATA_EMPTY_RESPONSE", where: { line: 5, key: "conversations[1].content" } });
  });

  it("says which format a record with unknown keys was probably meant to be", () => {
    const e = caught(() =>
      normalizeRecords([{ value: { instrction: "a", outptu: "b" }, origin: { file: "f", line: 9 } }]),
    );
    expect(e.code).toBe("DATA_UNKNOWN_FORMAT");
    expect(e.hint).toMatch(/`instruction` for `instrction`/);
    expect(e.hint).toMatch(/`output` for `outptu`/);
  });

  it("rejects mixing formats inside one file, naming the line", () => {
    const e = caught(() => load(data("mixed.jsonl")));
    expect(e).toMatchObject({ code: "DATA_MIXED_FORMATS", where: { file: data("mixed.jsonl"), line: 3 } });
  });
});
