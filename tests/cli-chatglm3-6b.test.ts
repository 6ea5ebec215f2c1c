// The road a new ChatGLM3-6B user takes, through the CLI in-process, with the official tokenizer files: a tiny
// checkpoint in the official layout carrying ChatGLM3-6B's config.json (tiny layers, padded_vocab_size 65024),
// tokenizer.model and tokenizer_config.json (tests/.fixtures/models/chatglm3-6b-tiny, built from
// ../shared/models/chatglm3-6b/), and a huanhuan-shaped alpaca dataset with the Self-LLM system prompt.
// tokenize, data, doctor and a short train (smoke run on) each exit 0 with no error finding.
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { beforeEach, describe, expect, it } from "vitest";
import type { FindingsJson } from "../src/cli/findings-view.js";
import { fixture, officialChatglm3, runCli, tmpDir } from "./helpers.js";

const SYSTEM = "现在你要扮演皇帝身边的女人--甄嬛";
const model = fixture("models", "chatglm3-6b-tiny");
const dir = tmpDir("lorakit-chatglm3-6b-");

/** 120 distinct records in huanhuan.json's shape: instruction, mostly empty input, output. */
function huanhuan(): Array<{ instruction: string; input: string; output: string }> {
  const who = ["皇上", "皇后娘娘", "华妃娘娘", "槿汐", "温太医", "安陵容", "沈眉庄", "苏培盛"];
  const ask = ["今日可好？", "可是有什么心事？", "为何闷闷不乐？", "要去御花园走走吗？", "可知罪？"];
  const say = ["臣妾一切安好，多谢挂念。", "不过是些小事，不值一提。", "回话：臣妾只是有些乏了。"];
  return Array.from({ length: 120 }, (_, i) => ({
    instruction: `${who[i % who.length]}问：小主，${ask[i % ask.length]}（第${i + 1}回）`,
    input: i % 7 === 0 ? "（窗外下着雪）" : "",
    output: `${say[i % say.length]}${i % 4 === 0 ? "\r\n——甄嬛" : ""} 😊 #${i}`,
  }));
}

function config(name: string, train: Record<string, unknown>, samples = { count: 2, max_new_tokens: 8 }): void {
  const cfg = {
    model,
    data: { train: "huanhuan.json", system: SYSTEM, max_length: 512 },
    lora: { r: 8, alpha: 32, dropout: 0.1 },
    train: { batch_size: 4, grad_accum: 2, lr: 1e-4, ...train },
    samples,
  };
  writeFileSync(path.join(dir, name), JSON.stringify(cfg, null, 1)); // JSON is YAML
}

beforeEach(() => {
  officialChatglm3(); // a missing official file fails each test, saying so
});

describe("the official ChatGLM3-6B tokenizer through the CLI", () => {
  it("lorakit tokenize --model DIR 你好 (text and --json); U+FEFF and special spellings", async () => {
    const r = await runCli(["tokenize", "--model", model, "你好"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("2 tokens (sentencepiece, vocabulary 64798)");
    expect(r.stdout).toMatch(/36474 " 你"/); // the text of the token: its word-start ▁ is a space
    const j = await runCli(["tokenize", "--model", model, "--json", "你好"]);
    expect(j.code).toBe(0);
    expect(JSON.parse(j.stdout)).toEqual({ ids: [36_474, 54_591], pieces: ["▁你", "好"], texts: [" 你", "好"] });
    const bom = JSON.parse((await runCli(["tokenize", "--model", model, "--json", "\uFEFF你好"])).stdout);
    expect(bom.ids).toEqual([24_807, 39_701]); // "▁\uFEFF" then "你好", as sentencepiece has it
    // For a person, invisible characters are spelled out.
    const shown = await runCli(["tokenize", "--model", model, "\uFEFF你好\u3000"]);
    expect(shown.stdout).toContain('24807 " \\ufeff"');
    expect(shown.stdout).toContain('31478 "\\u3000"');
    const typed = JSON.parse((await runCli(["tokenize", "--model", model, "--json", "<|user|>"])).stdout);
    expect(typed.ids.every((id: number) => id < 64_789)).toBe(true);
    const special = JSON.parse(
      (await runCli(["tokenize", "--model", model, "--json", "--special", "<|user|>"])).stdout,
    );
    expect(special.ids).toEqual([64_795]);
  });

  it("lorakit data run.yaml: the chatglm3 template on real ids, nothing cut, every sample learns its stop", async () => {
    writeFileSync(path.join(dir, "huanhuan.json"), JSON.stringify(huanhuan(), null, 2));
    config("run.yaml", { epochs: 3 });
    const r = await runCli(["data", "run.yaml", "--sample", "0"], { cwd: dir });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("template chatglm3");
    expect(r.stdout).toMatch(/truncated\s+0 samples/);
    expect(r.stdout).toMatch(/100\.0% of the \d+ samples not cut learn a stop token/);
    // [gMASK] sop <|system|> from the real ids, the system prompt as real pieces, eos trained at the end.
    expect(r.stdout).toMatch(/0\s+64790 system\s+\. "\[gMASK\]"/);
    expect(r.stdout).toMatch(/64794 system\s+\. "<\|system\|>"/);
    expect(r.stdout).toContain('"甄嬛"');
    expect(r.stdout).toMatch(/\s2 assistant T "<\/s>"/);
  });

  it("lorakit doctor run.yaml --json: the healthy recipe passes every step with no error and no warning", async () => {
    writeFileSync(path.join(dir, "huanhuan.json"), JSON.stringify(huanhuan(), null, 2));
    config("run.yaml", { epochs: 3 });
    const r = await runCli(["doctor", "run.yaml", "--json"], { cwd: dir });
    expect(r.stderr).toBe("");
    const j = JSON.parse(r.stdout) as FindingsJson & { summary: { steps: { name: string; status: string }[] } };
    expect(j.findings.filter((f) => f.severity !== "info")).toEqual([]);
    expect(r.code).toBe(0);
    expect(j.summary).toMatchObject({ ok: true, errors: 0, warnings: 0 });
    expect(j.summary.steps.every((s) => s.status === "ok")).toBe(true);
  });

  it("lorakit train run.yaml: a few CPU steps, smoke run on, exit 0, a PEFT adapter, no error finding", async () => {
    writeFileSync(path.join(dir, "huanhuan.json"), JSON.stringify(huanhuan(), null, 2));
    config("train.yaml", { epochs: 1, max_steps: 3, log_every: 1, device: "cpu" });
    const r = await runCli(["train", "train.yaml"], { cwd: dir });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("smoke       ok");
    expect(r.stdout).toMatch(/step 3\/3/);
    const adapter = path.join(dir, "runs", "train", "adapter");
    expect(readdirSync(adapter)).toEqual(
      expect.arrayContaining(["adapter_config.json", "adapter_model.safetensors", "lorakit_template.json"]),
    );
    expect(JSON.parse(readFileSync(path.join(adapter, "adapter_config.json"), "utf8")).target_modules).toEqual([
      "query_key_value",
    ]);
    const db = new Database(path.join(dir, "runs", "lorakit.db"), { readonly: true });
    const run = db.prepare("SELECT id, status FROM runs WHERE name='train'").get() as { id: number; status: string };
    const errors = db.prepare("SELECT code FROM findings WHERE run_id=? AND severity='error'").all(run.id);
    db.close();
    expect(errors).toEqual([]);
    expect(run.status).toBe("completed");
  });
});
