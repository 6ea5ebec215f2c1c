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
