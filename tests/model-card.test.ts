// After training, how to use the adapter: `lorakit train` on the tiny Llama (the checkpoint's jinja template)
// and the tiny ChatGLM3 (built natively), then the end-of-run snippet is run in the engine's Python as a
// person would run it: it loads the base and the adapter (every LoRA tensor as saved), renders the prompt
// lorakit trained with (the very ids of the run's held-out prompt) and generates what the run's own
// after-training sample generated. The adapter folder carries the base's tokenizer files and lorakit's
// model card in place of peft's blank template.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import type { Plan } from "../src/config/schema.js";
import { chatmlTemplate } from "../src/data/template.js";
import { loadTokenizer } from "../src/data/tokenizer.js";
import { ensurePython } from "../src/engine/python.js";
import { usageSnippet } from "../src/report/model-card.js";
import { RunStore } from "../src/runs/store.js";
import { TOKENIZER_FILES } from "../src/train/prepare-run.js";
import { fixture, runCli, tmpDir, writeCodeWords } from "./helpers.js";

const SYSTEM = "You answer with the code word.";
const PROMPT = "What is the code word number 3?";

/** Runs `snippet` with runpy in the engine's interpreter, without PYTHONPATH: the snippet finds what it needs. */
const CHECK = `import itertools, json, runpy, sys
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
ns = runpy.run_path(sys.argv[1], run_name="__main__")
p = ns["prompt"]
prompt = p[0].tolist() if hasattr(p, "shape") else list(p)
stops = set(ns["lorakit"]["stop_ids"])
reply = list(itertools.takewhile(lambda i: i not in stops, ns["reply_ids"]))
mine = get_peft_model_state_dict(ns["model"])
saved = load_file(ns["adapter"] + "/adapter_model.safetensors")
same = sorted(mine) == sorted(saved) and all(torch.equal(mine[k].cpu(), saved[k]) for k in saved)
print("CHECK " + json.dumps({"prompt": prompt, "reply": reply, "tensors": len(saved), "same": same}))
`;

interface Checked {
  prompt: number[];
  reply: number[];
  tensors: number;
  same: boolean;
}

async function runSnippet(dir: string, snippet: string, name: string): Promise<{ check: Checked; stdout: string }> {
  const py = await ensurePython({ env: process.env, log: () => {} });
  const file = path.join(dir, `${name}.py`);
  writeFileSync(file, snippet);
  writeFileSync(path.join(dir, "check.py"), CHECK);
  const env = { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "" };
  const r = spawnSync(py.python, [path.join(dir, "check.py"), file], { encoding: "utf8", env, timeout: 300_000 });
  expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
  const line = r.stdout.split("\n").find((l) => l.startsWith("CHECK ")) as string;
  return { check: JSON.parse(line.slice(6)) as Checked, stdout: r.stdout };
}

const sha256 = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");

describe("after training, how to use the adapter", () => {
  it.each([
    ["tiny-llama", "jinja"],
    ["chatglm3-single", "chatglm3"],
  ])(
    "%s: the printed snippet loads it and generates what the run did; tokenizer files and a lorakit model card beside it",
    async (name, template) => {
      const dir = tmpDir();
      writeCodeWords(dir);
      const base = fixture("models", name);
      writeFileSync(
        path.join(dir, "run.yaml"),
        JSON.stringify({
          model: base,
          data: { train: "train.json", eval_split: 0.25, max_length: 256, system: SYSTEM },
          train: { epochs: 2, batch_size: 4, grad_accum: 1, lr: 0.01, log_every: 1 },
          samples: { count: 2, max_new_tokens: 8, prompts: [PROMPT] },
        }),
      );
      const r = await runCli(["train", "run.yaml", "--no-smoke"], { cwd: dir });
      expect(r.code, r.stderr).toBe(0);
      const runDir = path.join(dir, "runs", "run");
      const adapter = path.join(runDir, "adapter");
      const plan = JSON.parse(readFileSync(path.join(runDir, "plan.json"), "utf8")) as Plan;

      // The end of the run says how to use it: the card's snippet, word for word.
      const at = r.stdout.indexOf("use it      from Python");
      expect(at, r.stdout).toBeGreaterThan(0);
      const printed = r.stdout
        .slice(at)
        .split("\n")
        .slice(1)
        .filter((l) => l.startsWith("    ") || l === "")
        .join("\n")
        .replace(/^ {4}/gm, "")
        .trim();
      const card = readFileSync(path.join(adapter, "README.md"), "utf8");
      const block = /```python\n([\s\S]*?)\n```/.exec(card)?.[1] as string;
      expect(block).toBeTruthy();
      expect(printed).toBe(block);

      // The base's tokenizer files, byte for byte.
      const expected = TOKENIZER_FILES.filter((f) => existsSync(path.join(base, f)));
      expect(expected).toEqual(
        template === "jinja"
          ? ["tokenizer.json", "tokenizer_config.json"]
          : ["tokenizer.model", "tokenizer_config.json"],
      );
      for (const f of expected) expect(sha256(path.join(adapter, f)), f).toBe(sha256(path.join(base, f)));

      // lorakit's card, not peft's template: the facts of this run.
      const store = RunStore.forOutputDir(path.join(dir, "runs"));
      const run = store.getRun("run");
      const train = store.metrics(run?.id as number, "train");
      const evals = store.metrics(run?.id as number, "eval").filter((m) => m.loss !== null);
      const findings = store.findings(run?.id as number);
      const events = store.db
        .prepare("SELECT json FROM events WHERE run_id=? AND type='sample'")
        .all(run?.id)
        .map((e) => JSON.parse((e as { json: string }).json) as { phase: string; index: number; output_ids: number[] });
      store.close();
      expect(card).not.toContain("More Information Needed");
      expect(card).toMatch(/^---\nbase_model: ".*"\nlibrary_name: peft\n/);
      expect(card).toContain(`| path | \`${base}\` |`);
      expect(card).toContain(sha256(path.join(base, "config.json")));
      expect(card).toContain(`| model_type | \`${template === "jinja" ? "llama" : "chatglm"}\``);
      expect(card).toContain(`\`${path.basename(plan.data.train.dir)}\``); // the prepared hash
      expect(card).toContain(sha256(path.join(dir, "train.json")).slice(0, 16));
      expect(card).toContain(`| train samples | ${plan.data.train.samples} (${plan.data.train.tokens} tokens`);
      expect(card).toContain(`| eval samples | ${plan.data.eval?.samples} (`);
      expect(card).toContain(
        `r 8, alpha ${plan.lora.alpha}, dropout ${plan.lora.dropout} on \`${plan.lora.targets[0]}\``,
      );
      expect(card).toContain(`| learning rate | 0.01, ${plan.train.scheduler} schedule`);
      expect(card).toMatch(/\| precision \| auto → fp32 \(ran as \S+ on cpu\) \|/); // the setting, then what the plan resolved
      expect(card).toContain(
        `| final train loss | ${((train.at(-1) as { loss: number }).loss).toFixed(4)} (step ${plan.train.total_steps}) |`,
      );
      const best = Math.min(...evals.map((m) => m.loss as number));
      expect(card).toContain(`| best eval loss | ${best.toFixed(4)} (step`);
      expect(card).toMatch(/\| held-out exact match \| \d+\.\d% before → \d+\.\d% after \(2 samples\) \|/);
      for (const f of findings) expect(card).toContain(`\`${f.code}\`: ${f.title.split("\n")[0]}`);
      expect(card.includes("trust_remote_code")).toBe(template === "chatglm3");

      // The snippet, run as printed: the adapter as saved, the prompt lorakit rendered, the run's own reply.
      const { check } = await runSnippet(dir, block, "use");
      expect(check.same).toBe(true);
      expect(check.tensors).toBeGreaterThan(0);
      const held = plan.samples.items.find((s) => s.index === 100_000);
      expect(check.prompt).toEqual(held?.prompt_ids); // system prompt and user message, as trained
      const after = events.find((e) => e.phase === "after" && e.index === 100_000);
      expect(check.reply).toEqual(after?.output_ids);

      if (template === "jinja") {
        // The built-in chatml template's snippet, on the same adapter and tokenizer: the ids lorakit renders.
        const tokenizer = await loadTokenizer(base);
        const chatml = chatmlTemplate(tokenizer);
        const copy = path.join(dir, "chatml-adapter");
        cpSync(adapter, copy, { recursive: true });
        writeFileSync(
          path.join(copy, "lorakit_template.json"),
          JSON.stringify({ template: "chatml", stop_ids: chatml.stopIds, special_tokens: chatml.specialTokens }),
        );
        const messages = [
          { role: "system" as const, content: SYSTEM },
          { role: "user" as const, content: PROMPT },
        ];
        const snippet = usageSnippet({
          base,
          adapter: copy,
          template: "chatml",
          messages,
          maxNewTokens: 4,
          engineDir: "unused",
        });
        const { check: built } = await runSnippet(dir, snippet, "chatml");
        expect(built.same).toBe(true);
        expect(built.prompt).toEqual(chatml.renderPrompt({ messages, origin: { file: "t", line: 0 } }));
      }
    },
    600_000,
  );
});
