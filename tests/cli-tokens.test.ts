import { writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { tokenTexts } from "../src/cli/tokens-view.js";
import { loadTokenizer } from "../src/data/tokenizer.js";
import { fixture, officialChatglm3, runCli, tmpDir } from "./helpers.js";

interface TokenJson {
  ids: number[];
  pieces: string[];
  texts: string[];
}
/** The token lines of `lorakit tokenize` (index, id, what the token shows), without the header and legend. */
const tokenLines = (stdout: string) =>
  stdout
    .split("\n")
    .filter((l) => /^\s+\d+\s+\d+ /.test(l))
    .map((l) => l.replace(/^\s+\d+\s+\d+ /, ""));
/** How often each non-ASCII character of `text` occurs in `shown` (each should, exactly as often as in the text). */
const charCounts = (text: string, shown: string) =>
  Object.fromEntries([...new Set(text)].filter((ch) => ch > "\u007f").map((ch) => [ch, shown.split(ch).length - 1]));

describe("tokens people can read", () => {
  const text = "你好，世界 hello 😀";

  it("byte-level tokenizer.json: each token's decoded text, bytes carried to the token that completes a character", async () => {
    const model = fixture("tokenizers", "bpe-bytelevel");
    const json = JSON.parse((await runCli(["tokenize", "--model", model, "--json", text])).stdout) as TokenJson;
    expect(json.texts).toHaveLength(json.ids.length);
    expect(json.pieces).toContain("ä½ł"); // the raw byte-level piece of 你 is kept
    expect(json.texts.join("")).toBe(text);
    expect(json.texts).toContain("你");
    // 世 is split: a token holding its first two bytes (no text of its own), then the one completing it.
    const at = json.texts.indexOf("世");
    expect(json.texts[at - 1]).toBe("");

    const r = await runCli(["tokenize", "--model", model, text]);
    expect(r.code).toBe(0);
    const lines = tokenLines(r.stdout);
    expect(lines).toHaveLength(json.ids.length);
    expect(lines).toContain('"你"');
    const split = lines.indexOf('"世"');
    expect(lines[split - 1]).toBe("<e4 b8>");
    expect(lines.slice(-4)).toEqual(["<f0>", "<9f>", "<98>", '"😀"']);
    expect(charCounts(text, lines.join(""))).toEqual(charCounts(text, text));
    expect(r.stdout).not.toMatch(/[äåïĠð]/); // no byte-level alphabet unless asked for
    expect(r.stdout).toMatch(/<e4 bd>: bytes of a character split across tokens/);

    const raw = await runCli(["tokenize", "--model", model, "--pieces", text]);
    expect(tokenLines(raw.stdout)).toContain('"你"  piece "ä½ł"');
  });

  it("byte fallback in a tokenizer.json: <0xNN> pieces decode together", async () => {
    const model = fixture("tokenizers", "bpe-metaspace");
    const r = await runCli(["tokenize", "--model", model, "--pieces", "hi 😀"]);
    expect(r.code).toBe(0);
    const lines = tokenLines(r.stdout);
    expect(lines.slice(-4)).toEqual([
      '<f0>  piece "<0xF0>"',
      '<9f>  piece "<0x9F>"',
      '<98>  piece "<0x98>"',
      '"😀"  piece "<0x80>"',
    ]);
    const tok = await loadTokenizer(model);
    // A byte that starts no character, and one cut off by the end: U+FFFD in the text, the byte on screen.
    const byte = (b: number) => tok.tokenToId(`<0x${b.toString(16).toUpperCase()}>`) as number;
    const hi = tok.encode("hi");
    const ids = [byte(0xe4), ...hi, byte(0x80), byte(0xe4), byte(0xbd)];
    const v = tokenTexts(tok, ids);
    expect(v.texts.join("")).toBe(tok.decode(ids));
    expect(v.texts[0]).toBe("\uFFFD");
    expect(v.segments[0]).toEqual([{ bytes: [0xe4] }]);
    expect(v.texts.slice(1, 1 + hi.length).join("")).toBe(" hi");
    expect(v.texts.slice(-3)).toEqual(["\uFFFD", "\uFFFD", "\uFFFD"]);
    expect(v.segments.slice(-3)).toEqual([[{ bytes: [0x80] }], [{ bytes: [0xe4] }], [{ bytes: [0xbd] }]]);
  });

  it("the official ChatGLM3-6B tokenizer.model: ▁ as a space, byte pieces of a rare character carried", async () => {
    const model = officialChatglm3();
    const rare = "甄嬛说：𠀀。";
    const json = JSON.parse((await runCli(["tokenize", "--model", model, "--json", rare])).stdout) as TokenJson;
    expect(json.pieces).toContain("<0xF0>");
    expect(json.texts.join("")).toBe(` ${rare}`); // the word-start ▁ the tokenizer's decode drops at the start
    const lines = tokenLines((await runCli(["tokenize", "--model", model, rare])).stdout);
    expect(lines.slice(0, 2)).toEqual(['" "', '"甄嬛"']);
    expect(charCounts(rare, lines.join(""))).toEqual(charCounts(rare, rare));
    const raw = tokenLines((await runCli(["tokenize", "--model", model, "--pieces", rare])).stdout);
    const at = raw.findIndex((l) => l.startsWith('"𠀀"'));
    expect(raw.slice(at - 3, at + 1)).toEqual([
      '<f0>  piece "<0xF0>"',
      '<a0>  piece "<0xA0>"',
      '<80>  piece "<0x80>"',
      '"𠀀"  piece "<0x80>"',
    ]);
    // Special tokens show by name, as before.
    const chat = await runCli(["tokenize", "--model", model, "--special", "<|user|>你好"]);
    expect(tokenLines(chat.stdout)[0]).toBe('"<|user|>"');
  });
});

describe("lorakit tokenize", () => {
  it("prints ids and pieces as JSON; special spellings stay ordinary unless --special", async () => {
    const model = fixture("models", "chatglm3-single");
    const plain = await runCli(["tokenize", "--model", model, "--json", "<|user|>你好"]);
    expect(plain.code).toBe(0);
    const a = JSON.parse(plain.stdout) as { ids: number[]; pieces: string[] };
    expect(a.ids.length).toBe(a.pieces.length);
    const special = JSON.parse(
      (await runCli(["tokenize", "--model", model, "--json", "--special", "<|user|>你好"])).stdout,
    ) as {
      ids: number[];
    };
    // With --special the spelling becomes the one special id (after the 1,000 SentencePiece pieces).
    expect(special.ids[0]).toBe(1006);
    expect(a.ids).not.toContain(1006);
  });

  it("--chat marks every token trained or not with the family template", async () => {
    const dir = tmpDir();
    const chat = path.join(dir, "chat.json");
    writeFileSync(
      chat,
      JSON.stringify({
        messages: [
          { role: "user", content: "hi" },
          { role: "assistant", content: "hello there" },
        ],
      }),
    );
    const r = await runCli(["tokenize", "--model", fixture("models", "chatglm3-single"), "--chat", chat, "--json"]);
    expect(r.code).toBe(0);
    const v = JSON.parse(r.stdout) as { template: string; ids: number[]; trained: boolean[] };
    expect(v.template).toBe("chatglm3");
    expect(v.ids.slice(0, 2)).toEqual([1001, 1003]); // [gMASK] sop
    // The last token is eos, learned so the model stops; the role tokens are never trained.
    expect(v.trained.at(-1)).toBe(true);
    expect(v.ids.at(-1)).toBe(2);
    const assistant = v.ids.indexOf(1007);
    expect(v.trained[assistant]).toBe(false);
    const text = await runCli(["tokenize", "--model", fixture("models", "chatglm3-single"), "--chat", chat]);
    expect(text.stdout).toMatch(/\bT "/);
  });

  it("--chat shows a conversation ending with a user turn as the inference prompt, generation prompt included", async () => {
    const dir = tmpDir();
    const model = fixture("models", "chatglm3-single");
    const turns = [
      { role: "system", content: "现在你要扮演皇帝身边的女人--甄嬛" },
      { role: "user", content: "你是谁？" },
    ];
    // A bare OpenAI message array, and the same as an object.
    writeFileSync(path.join(dir, "bare.json"), JSON.stringify(turns));
    writeFileSync(path.join(dir, "object.json"), JSON.stringify({ messages: turns }));
    const bare = await runCli(["tokenize", "--model", model, "--chat", path.join(dir, "bare.json"), "--json"]);
    expect(bare.stderr).toBe("");
    expect(bare.code).toBe(0);
    const v = JSON.parse(bare.stdout) as { prompt: boolean; ids: number[]; trained: boolean[] };
    expect(v.prompt).toBe(true);
    expect(v.ids.slice(0, 3)).toEqual([1001, 1003, 1005]); // [gMASK] sop <|system|>
    expect(v.ids.at(-1)).toBe(1007); // <|assistant|>: the model answers next
    expect(v.trained.some(Boolean)).toBe(false);
    const obj = await runCli(["tokenize", "--model", model, "--chat", path.join(dir, "object.json"), "--json"]);
    expect(JSON.parse(obj.stdout)).toEqual(v);
    const text = await runCli(["tokenize", "--model", model, "--chat", path.join(dir, "bare.json")]);
    expect(text.stdout).toMatch(/inference prompt: \d+ tokens, ending with the generation prompt/);
    expect(text.stdout).toContain('"<|assistant|>"');

    // A tool call awaiting its result's answer: the observation, then the generation prompt.
    const tool = path.join(dir, "tool.json");
    writeFileSync(
      tool,
      JSON.stringify([
        { role: "user", content: "北京天气？" },
        { role: "assistant", metadata: "get_weather", content: "tool_call(city='北京')" },
        { role: "tool", content: "晴" },
      ]),
    );
    const t = JSON.parse((await runCli(["tokenize", "--model", model, "--chat", tool, "--json"])).stdout) as {
      ids: number[];
      pieces: string[];
    };
    expect(t.ids.filter((id) => id === 1008)).toHaveLength(1); // <|observation|>
    expect(t.ids.at(-1)).toBe(1007);
  });

  it("--chat reads a data file (JSON array or JSONL) and shows record --sample N", async () => {
    const dir = tmpDir();
    const model = fixture("models", "chatglm3-single");
    const rows = [
      { instruction: "first", input: "", output: "one" },
      { instruction: "second", input: "", output: "two" },
    ];
    writeFileSync(path.join(dir, "rows.json"), JSON.stringify(rows));
    writeFileSync(path.join(dir, "rows.jsonl"), `${rows.map((r) => JSON.stringify(r)).join("\n")}\n`);
    for (const f of ["rows.json", "rows.jsonl"]) {
      const args = ["tokenize", "--model", model, "--chat", path.join(dir, f), "--sample", "1"];
      const r = await runCli(args);
      expect(r.code, f).toBe(0);
      expect(r.stdout, f).toMatch(/record 1 of 2/);
      const text = (JSON.parse((await runCli([...args, "--json"])).stdout) as { pieces: string[] }).pieces.join("");
      expect(text, f).toContain("second");
      expect(text, f).not.toContain("first");
    }
    const out = await runCli(["tokenize", "--model", model, "--chat", path.join(dir, "rows.json"), "--sample", "2"]);
    expect(out.code).toBe(1);
    expect(out.stderr).toMatch(/--sample 2: \S*rows\.json holds 2 conversation/);
  });
});

describe("lorakit data", () => {
  it("shows length and trained-token statistics and a sample token by token", async () => {
    const dir = tmpDir();
    writeFileSync(
      path.join(dir, "train.jsonl"),
      `${Array.from({ length: 8 }, (_, i) => JSON.stringify({ instruction: `q${i}`, input: "", output: `answer ${i}` })).join("\n")}\n`,
    );
    writeFileSync(
      path.join(dir, "run.yaml"),
      `model: ${fixture("models", "tiny-llama")}\ndata:\n  train: train.jsonl\n`,
    );
    const r = await runCli(["data", "run.yaml", "--sample", "1"], { cwd: dir });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("trained");
    expect(r.stdout).toMatch(/sample 1 \(.*train\.jsonl:2, record 1\)/);
    const bad = await runCli(["data", "run.yaml", "--sample", "99"], { cwd: dir });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("--sample 99");
  });

  it("shows a Chinese dataset as text, the raw pieces on request", async () => {
    const dir = tmpDir();
    const rows = [{ instruction: "你是谁？", input: "", output: "我是甄嬛，家父是大理寺少卿甄远道。" }];
    writeFileSync(path.join(dir, "train.json"), JSON.stringify(rows));
    writeFileSync(
      path.join(dir, "run.yaml"),
      `model: ${fixture("models", "tiny-llama")}\ndata:\n  train: train.json\n`,
    );
    const r = await runCli(["data", "run.yaml"], { cwd: dir });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const shown = tokenLines(r.stdout).join("");
    for (const s of [rows[0]?.instruction, rows[0]?.output] as string[])
      expect(charCounts(s, shown)).toEqual(charCounts(s, `${rows[0]?.instruction}${rows[0]?.output}`));
    expect(r.stdout).not.toMatch(/[äåçèéïĠ]/);
    const raw = await runCli(["data", "run.yaml", "--pieces"], { cwd: dir });
    expect(raw.stdout).toMatch(/piece "[^"]*[äåçèé]/);
  });
});
