import { writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { fixture, runCli, tmpDir } from "./helpers.js";

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
});
