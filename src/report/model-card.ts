// The adapter folder's model card (README.md, in place of peft's blank template) and the "how to use it"
// snippet the end of a run prints: what the adapter was trained from (base model, data, recipe), how it
// did (metrics, findings), and Python that loads the base and the adapter and generates with the chat
// template lorakit trained with. Written after training, when the metrics are known, and only over an
// adapter whose files match its SHA256SUMS (the engine writes it; the card itself is not in the sums).
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import type { LoadedConfig } from "../config/load.js";
import type { Plan } from "../config/schema.js";
import type { PrepareResult } from "../data/index.js";
import { ROOT } from "../engine/python.js";
import { LorakitError } from "../errors.js";
import { writeFileAtomic } from "../files/atomic.js";
import { checkSums } from "../files/sums.js";
import type { ModelInfo } from "../models/checkpoint.js";
import type { RunStore } from "../runs/store.js";

export interface Message {
  role: "system" | "user";
  content: string;
}

/** What the snippet needs: where things are, the template, and a conversation to start with. */
export interface UsageFacts {
  base: string;
  adapter: string;
  /** The template lorakit trained with: chatglm3, chatml, llama3, deepseek or jinja (chat_template.jinja). */
  template: string;
  messages: Message[];
  maxNewTokens: number;
  /** Folder holding lorakit_engine (the ChatGLM3 snippet imports its native model). */
  engineDir: string;
}

export interface CardFacts {
  name: string;
  outcome: string;
  base: { path: string; modelType: string; family: string; configSha256: string };
  data: {
    files: { path: string; sha256: string }[];
    evalFiles: { path: string; sha256: string }[];
    evalSplit: number;
    preparedHash: string;
    preparedDir: string;
    train: { samples: number; tokens: number; trainedTokens: number };
    eval: { samples: number; tokens: number } | null;
    truncated: number;
    dropped: number;
    template: string;
    maxLength: number;
    system: string | null;
  };
  plan: Pick<Plan, "lora" | "train">;
  /** train.precision as the run config says it (`auto`, or what was asked): the plan holds the resolved one. */
  precisionSetting: string;
  /** What the engine resolved: device and dtype (null when it never started). */
  engine: { device: string; dtype: string } | null;
  metrics: {
    finalLoss: { step: number; loss: number } | null;
    bestEval: { step: number; loss: number } | null;
    exactMatch: { before: number | null; after: number | null; n: number };
  };
  findings: { severity: string; code: string; title: string }[];
  usage: UsageFacts;
  /** The interpreter lorakit's engine runs on: it has torch, transformers, peft and sentencepiece. */
  python: string;
}

const py = (s: string) => JSON.stringify(s); // a JSON string is a valid Python string literal

/** Python that loads the base and the adapter and generates a reply with the template lorakit trained with. */
export function usageSnippet(u: UsageFacts): string {
  const messages = `messages = [${u.messages.map((m) => `{"role": ${py(m.role)}, "content": ${py(m.content)}}`).join(", ")}]`;
  const device = [
    `device = "cuda" if torch.cuda.is_available() else "cpu"`,
    `dtype = torch.bfloat16 if device == "cuda" else torch.float32`,
  ];
  const paths = [`base = ${py(u.base)}`, `adapter = ${py(u.adapter)}`];
  const template = `lorakit = json.load(open(f"{adapter}/lorakit_template.json"))  # the template's special and stop ids`;
  if (u.template === "chatglm3") {
    return [
      "import itertools",
      "import json",
      "import sys",
      "",
      "import sentencepiece as spm",
      "import torch",
      "from peft import PeftModel",
      "",
      `sys.path.insert(0, ${py(u.engineDir)})  # lorakit's engine builds ChatGLM3 natively: no remote code runs`,
      "from lorakit_engine.models import load_model",
      "",
      ...paths,
      template,
      `sp = spm.SentencePieceProcessor(model_file=f"{adapter}/tokenizer.model")  # ChatGLM3's own tokenizer model`,
      ...device,
      "model = PeftModel.from_pretrained(load_model(base, dtype=dtype, device=device), adapter).eval()",
      "",
      messages,
      `ids = lorakit["special_tokens"]`,
      `prompt = [ids["[gMASK]"], ids["sop"]]`,
      "for m in messages:  # ChatGLM3: <|role|>, encode('\\n'), encode(content); then <|assistant|>",
      `    prompt += [ids[f"<|{m['role']}|>"], *sp.encode("\\n"), *sp.encode(m["content"])]`,
      `prompt.append(ids["<|assistant|>"])`,
      `stops = lorakit["stop_ids"]`,
      `out = model.get_base_model().generate_greedy(torch.tensor([prompt], device=device), ${u.maxNewTokens}, stop_ids=stops)`,
      "reply_ids = list(itertools.takewhile(lambda i: i not in stops, out[0].tolist()))",
      "print(sp.decode([i for i in reply_ids if i < sp.get_piece_size()]))",
    ].join("\n");
  }
  const header = [
    "import json",
    "",
    "import torch",
    "from peft import PeftModel",
    "from transformers import AutoModelForCausalLM, AutoTokenizer",
    "",
    ...paths,
    template,
    "tokenizer = AutoTokenizer.from_pretrained(adapter)  # the base's tokenizer files, copied beside the adapter",
    ...(u.template === "jinja"
      ? [`tokenizer.chat_template = open(f"{adapter}/chat_template.jinja", encoding="utf-8").read()  # as trained`]
      : []),
    ...device,
    "model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device)",
    "model = PeftModel.from_pretrained(model, adapter).eval()",
    "",
    messages,
  ];
  const generate = [
    `out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=${u.maxNewTokens}, do_sample=False, eos_token_id=lorakit["stop_ids"])`,
    "reply_ids = out[0, prompt.shape[1] :].tolist()",
    "print(tokenizer.decode(reply_ids, skip_special_tokens=True))",
  ];
  if (u.template === "jinja") {
    return [
      ...header,
      `prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")`,
      `prompt = prompt["input_ids"].to(device)`,
      ...generate,
    ].join("\n");
  }
  // The built-in templates, piece by piece as lorakit renders them (special tokens by id, text encoded).
  const turns: Record<string, string[]> = {
    chatml: [
      "for m in messages:",
      `    ids += [s["<|im_start|>"], *enc(m["role"] + "\\n"), *enc(m["content"]), s["<|im_end|>"], *enc("\\n")]`,
      `ids += [s["<|im_start|>"], *enc("assistant\\n")]`,
    ],
    llama3: [
      `ids = [s["<|begin_of_text|>"]]`,
      "for m in messages:",
      `    ids += [s["<|start_header_id|>"], *enc(m["role"]), s["<|end_header_id|>"], *enc("\\n\\n")]`,
      `    ids += [*enc(m["content"].strip()), s["<|eot_id|>"]]`,
      `ids += [s["<|start_header_id|>"], *enc("assistant"), s["<|end_header_id|>"], *enc("\\n\\n")]`,
    ],
    deepseek: [
      `ids = [s["bos"]]`,
      "for m in messages:",
      `    ids += enc(m["content"] + "\\n\\n" if m["role"] == "system" else "User: " + m["content"] + "\\n\\n")`,
      `ids += enc("Assistant:")`,
    ],
  };
  const build = turns[u.template];
  if (!build) throw new Error(`no usage snippet for template '${u.template}'`);
  return [
    ...header,
    `s, ids = lorakit["special_tokens"], []`,
    "enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731",
    ...build,
    "prompt = torch.tensor([ids], device=device)",
    ...generate,
  ].join("\n");
}

const pct = (x: number | null) => (x === null ? "—" : `${(100 * x).toFixed(1)}%`);
const cell = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");
const code = (s: string) => `\`${s.replace(/`/g, "'")}\``;

/** The card itself: Markdown with the YAML header the Hugging Face tools read. */
export function renderModelCard(f: CardFacts): string {
  const t = f.plan.train;
  const l = f.plan.lora;
  const rows = (pairs: [string, string][]) =>
    ["| | |", "| --- | --- |", ...pairs.map(([k, v]) => `| ${k} | ${cell(v)} |`)].join("\n");
  const files = (list: { path: string; sha256: string }[]) =>
    list.map((x) => `${code(x.path)} (sha256 ${x.sha256.slice(0, 16)})`).join(", ");
  const d = f.data;
  const batch = t.pack_tokens !== undefined ? `rows of ≤ ${t.pack_tokens} tokens` : `batch ${t.batch_size} per device`;
  const findings =
    f.findings.length === 0
      ? "None."
      : f.findings.map((x) => `- ${x.severity} ${code(x.code)}: ${x.title.replace(/\n/g, " ")}`).join("\n");
  const chatglm3 = f.usage.template === "chatglm3";
  const tokenizerNote = chatglm3
    ? "ChatGLM3's tokenizer (`tokenizer.model`, a SentencePiece model) is here too, but its tokenizer class is " +
      "remote code (`tokenization_chatglm.py`, named by `auto_map`) that lorakit never runs: `AutoTokenizer` " +
      "loads it only with `trust_remote_code=True` and that code. lorakit reads `tokenizer.model` itself, as " +
      "the snippet does with sentencepiece. The adapter's module names are the official checkpoint's and " +
      "model code's (`transformer.encoder.layers.N.self_attention.query_key_value`), so peft can apply it to " +
      "that code too, if you choose to run it (lorakit does not, and has not tried)."
    : "The base's tokenizer files are copied here, so `AutoTokenizer.from_pretrained` loads from this folder.";
  return `---
base_model: ${JSON.stringify(f.base.path)}
library_name: peft
tags:
- lora
- lorakit
---

# ${f.name}: a LoRA adapter trained with lorakit

Run ${code(f.name)}: ${f.outcome}.

## Base model

${rows([
  ["path", code(f.base.path)],
  ["model_type", `${code(f.base.modelType)} (family ${f.base.family})`],
  ["config.json sha256", code(f.base.configSha256)],
])}

## Data

${rows([
  ["train files", files(d.files)],
  [
    "eval",
    d.evalFiles.length > 0
      ? files(d.evalFiles)
      : d.eval
        ? `${d.evalSplit * 100}% of the training records held out (data.eval_split)`
        : "none",
  ],
  ["prepared", `${code(d.preparedHash)} (${code(d.preparedDir)})`],
  ["train samples", `${d.train.samples} (${d.train.tokens} tokens, ${d.train.trainedTokens} trained)`],
  ["eval samples", d.eval ? `${d.eval.samples} (${d.eval.tokens} tokens)` : "0"],
  ["cut or dropped", `${d.truncated} samples cut to max_length ${d.maxLength}, ${d.dropped} dropped`],
  [
    "template",
    `${code(d.template)}${d.template === "jinja" ? " (the checkpoint's chat_template, saved here as chat_template.jinja)" : " (lorakit's built-in)"}`,
  ],
  ["system prompt", d.system === null ? "none" : code(d.system)],
])}

## Recipe

${rows([
  ["LoRA", `r ${l.r}, alpha ${l.alpha}, dropout ${l.dropout} on ${l.targets.map(code).join(", ")}`],
  [
    "optimizer steps",
    `${t.total_steps} (${t.epochs} epochs, ${batch} × accumulation ${t.grad_accum} × ${t.devices} device(s))`,
  ],
  ["learning rate", `${t.lr}, ${t.scheduler} schedule, ${t.warmup_steps} warmup steps, weight decay ${t.weight_decay}`],
  [
    "precision",
    `${f.precisionSetting === t.precision ? t.precision : `${f.precisionSetting} → ${t.precision}`}${
      f.engine ? ` (ran as ${f.engine.dtype} on ${f.engine.device})` : ""
    }`,
  ],
  ["seed", String(t.seed)],
])}

## Metrics

${rows([
  [
    "final train loss",
    f.metrics.finalLoss ? `${f.metrics.finalLoss.loss.toFixed(4)} (step ${f.metrics.finalLoss.step})` : "—",
  ],
  [
    "best eval loss",
    f.metrics.bestEval ? `${f.metrics.bestEval.loss.toFixed(4)} (step ${f.metrics.bestEval.step})` : "—",
  ],
  [
    "held-out exact match",
    `${pct(f.metrics.exactMatch.before)} before → ${pct(f.metrics.exactMatch.after)} after (${f.metrics.exactMatch.n} samples)`,
  ],
])}

## Findings

${findings}

## How to use it

With Python, torch, transformers, peft${chatglm3 ? " and sentencepiece" : ""} (lorakit's engine environment has them: ${code(f.python)}):

\`\`\`python
${usageSnippet(f.usage)}
\`\`\`

${tokenizerNote} \`lorakit_template.json\` names the template, its special tokens and the ids that end a reply.
`;
}

/** Gathers the card's facts from the road's objects and the run store, after training. */
export function modelCardFacts(a: {
  loaded: LoadedConfig;
  model: ModelInfo;
  prepared: {
    result: PrepareResult;
    train: { samples: number; tokens: number };
    eval: { samples: number; tokens: number } | null;
  };
  plan: Plan;
  store: RunStore;
  runId: number;
  outcome: string;
  adapterDir: string;
  exactMatch: CardFacts["metrics"]["exactMatch"];
  python: string;
}): CardFacts {
  const { loaded, model, prepared, plan, store, runId } = a;
  const c = loaded.config;
  const m = prepared.result.manifest;
  const train = store.metrics(runId, "train").filter((r) => r.loss !== null);
  const evals = store.metrics(runId, "eval").filter((r) => r.loss !== null);
  const last = train[train.length - 1];
  const best = evals.reduce<(typeof evals)[number] | undefined>(
    (b, r) => (b === undefined || (r.loss as number) < (b.loss as number) ? r : b),
    undefined,
  );
  const start = store.lastEvent(runId, "start");
  const engine = start?.type === "start" ? { device: start.device, dtype: start.dtype } : null;
  return {
    name: loaded.name,
    outcome: a.outcome,
    base: {
      path: loaded.modelDir,
      modelType: model.modelType,
      family: model.family.name,
      configSha256: createHash("sha256")
        .update(readFileSync(path.join(loaded.modelDir, "config.json")))
        .digest("hex"),
    },
    data: {
      files: m.inputs.files.map((x) => ({ path: x.path, sha256: x.sha256 })),
      evalFiles: m.inputs.eval_files.map((x) => ({ path: x.path, sha256: x.sha256 })),
      evalSplit: c.data.eval_split,
      preparedHash: prepared.result.hash,
      preparedDir: prepared.result.dir,
      train: {
        samples: prepared.train.samples,
        tokens: prepared.train.tokens,
        trainedTokens: prepared.result.train.trainedTokens,
      },
      eval: prepared.eval ? { samples: prepared.eval.samples, tokens: prepared.eval.tokens } : null,
      truncated: m.counts.truncated,
      dropped: m.counts.dropped,
      template: prepared.result.template.name,
      maxLength: c.data.max_length,
      system: c.data.system ?? null,
    },
    plan: { lora: plan.lora, train: plan.train },
    precisionSetting: c.train.precision,
    engine,
    metrics: {
      finalLoss: last ? { step: last.step, loss: last.loss as number } : null,
      bestEval: best ? { step: best.step, loss: best.loss as number } : null,
      exactMatch: a.exactMatch,
    },
    findings: store.findings(runId).map((x) => ({ severity: x.severity, code: x.code, title: x.title })),
    usage: {
      base: loaded.modelDir,
      adapter: a.adapterDir,
      template: prepared.result.template.name,
      messages: [
        ...(c.data.system !== undefined ? [{ role: "system" as const, content: c.data.system }] : []),
        { role: "user", content: c.samples.prompts[0] ?? "Hello! Who are you?" },
      ],
      maxNewTokens: c.samples.max_new_tokens,
      engineDir: path.join(ROOT, "engine"),
    },
    python: a.python,
  };
}

/** The files of an adapter folder that its SHA256SUMS does not cover: the model card, written over peft's. */
export const ADAPTER_UNSUMMED = ["README.md"];

/** ADAPTER_CORRUPT naming each file of the adapter folder that does not match its SHA256SUMS. */
export function verifyAdapter(dir: string): void {
  const problems = checkSums(dir, undefined, ADAPTER_UNSUMMED);
  if (problems.length === 0) return;
  const errors = problems.map(
    (p) =>
      new LorakitError("ADAPTER_CORRUPT", `the adapter ${dir} is damaged: ${p}`, {
        where: { file: dir },
        hint: "Do not use it: resume the run from its last checkpoint (lorakit train <config> --resume) to write it again, or train again.",
      }),
  );
  throw LorakitError.fromList(errors);
}

/** Writes README.md into the adapter folder (over peft's template), once the adapter verifies; returns the
 * usage snippet. */
export function writeModelCard(facts: CardFacts): string {
  verifyAdapter(facts.usage.adapter);
  writeFileAtomic(path.join(facts.usage.adapter, "README.md"), renderModelCard(facts), { what: "the model card" });
  return usageSnippet(facts.usage);
}
