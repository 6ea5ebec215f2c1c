// Reading run.yaml: parse, validate against the schema, resolve paths, and report every
// problem at once — each with its file:line, key path and the nearest valid key or value.
import { existsSync, readdirSync, statSync } from "node:fs";
import { readFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { type CST, isMap, isSeq, LineCounter, Parser, parseDocument, visit } from "yaml";
import { z } from "zod";
import { editDistance, LorakitError, nearest } from "../errors.js";
import { RunConfig } from "./schema.js";

export interface LoadedConfig {
  config: RunConfig;
  /** Absolute path of the config file. */
  file: string;
  /** Run name: `name`, else the config file's stem. */
  name: string;
  /** Absolute paths. */
  modelDir: string;
  trainFiles: string[];
  evalFiles: string[];
  outputDir: string;
}

type KeyPath = (string | number)[];

function keyPathText(p: KeyPath): string {
  return p.reduce<string>((acc, k) => (typeof k === "number" ? `${acc}[${k}]` : acc ? `${acc}.${k}` : k), "");
}

/** The zod schema found by walking `p` into `schema` (through defaults, optionals, arrays). */
function schemaAt(schema: z.ZodType, p: KeyPath): z.ZodType | undefined {
  let cur: z.ZodType | undefined = schema;
  const unwrap = (s: z.ZodType): z.ZodType => {
    let t = s;
    for (let i = 0; i < 8; i++) {
      if (t instanceof z.ZodDefault || t instanceof z.ZodOptional || t instanceof z.ZodNullable)
        t = t.unwrap() as z.ZodType;
      else break;
    }
    return t;
  };
  for (const k of p) {
    if (!cur) return undefined;
    const s = unwrap(cur);
    if (s instanceof z.ZodObject && typeof k === "string") cur = (s.shape as Record<string, z.ZodType>)[k];
    else if (s instanceof z.ZodArray) cur = s.element as z.ZodType;
    else if (s instanceof z.ZodUnion) {
      const arr = (s.options as z.ZodType[]).find((o) => unwrap(o) instanceof z.ZodArray) as z.ZodArray | undefined;
      cur = arr ? (arr.element as z.ZodType) : undefined;
    } else return undefined;
  }
  return cur ? unwrap(cur) : undefined;
}

function typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a mapping";
  return `${typeof v} ${JSON.stringify(v)}`;
}

function valueAt(root: unknown, p: KeyPath): unknown {
  let cur: unknown = root;
  for (const k of p) {
    if (cur === null || typeof cur !== "object") return undefined;
    cur = (cur as Record<string | number, unknown>)[k];
  }
  return cur;
}

/** Names other tools give lorakit's keys (transformers' TrainingArguments, peft's LoraConfig, common
 * fine-tuning scripts), for "did you mean" when a config is written from one of their examples. */
const KEY_ALIASES: Record<string, string> = {
  learning_rate: "train.lr",
  num_train_epochs: "train.epochs",
  num_epochs: "train.epochs",
  per_device_train_batch_size: "train.batch_size",
  micro_batch_size: "train.batch_size",
  gradient_accumulation_steps: "train.grad_accum",
  lr_scheduler_type: "train.scheduler",
  logging_steps: "train.log_every",
  save_steps: "train.save_every",
  eval_steps: "train.eval_every",
  save_total_limit: "train.keep_checkpoints",
  max_seq_length: "data.max_length",
  cutoff_len: "data.max_length",
  model_max_length: "data.max_length",
  lora_r: "lora.r",
  lora_rank: "lora.r",
  rank: "lora.r",
  lora_alpha: "lora.alpha",
  lora_dropout: "lora.dropout",
  target_modules: "lora.targets",
  model_name_or_path: "model",
  base_model: "model",
  train_file: "data.train",
  dataset: "data.train",
  eval_file: "data.eval",
  validation_file: "data.eval",
};

/** Every key of the run config as a path, down to the keys of its sections. */
function configKeyPaths(): string[][] {
  const out: string[][] = [];
  const top = schemaAt(RunConfig, []);
  if (!(top instanceof z.ZodObject)) return out;
  for (const k of Object.keys(top.shape)) {
    out.push([k]);
    const inner = schemaAt(RunConfig, [k]);
    if (inner instanceof z.ZodObject) for (const j of Object.keys(inner.shape)) out.push([k, j]);
  }
  return out;
}

const norm = (k: string) => k.toLowerCase().replace(/[-_\s]/g, "");

/**
 * The key meant by unknown `key` under `section`, searched in every section: another tool's name for it
 * (`learning_rate` → train.lr), the same name elsewhere (`lr` at the top → train.lr), a shortened name
 * (`max_len` → data.max_length), or a typo (within the section; across sections only a one-letter one).
 */
export function suggestKey(section: KeyPath, key: string): string | undefined {
  const alias = KEY_ALIASES[key.toLowerCase().replace(/-/g, "_")];
  if (alias) return alias;
  const here = keyPathText(section);
  const n = norm(key);
  let best: { path: string; score: number } | undefined;
  for (const p of configKeyPaths()) {
    const leaf = norm(p[p.length - 1] as string);
    const same = keyPathText(p.slice(0, -1)) === here;
    const d = editDistance(n, leaf);
    let score: number | undefined;
    if (n === leaf) score = 0;
    else if (Math.min(n.length, leaf.length) >= 3 && (leaf.startsWith(n) || n.startsWith(leaf))) score = 1;
    else if (same && d <= Math.max(2, Math.floor(n.length / 3))) score = 1 + d;
    else if (!same && n.length >= 4 && d <= 1) score = 1 + d;
    if (score === undefined) continue;
    score = 2 * score + (same ? 0 : 1); // the key's own section first, at equal closeness
    if (!best || score < best.score) best = { path: keyPathText(p), score };
  }
  return best?.path;
}

/** Converts zod issues to LorakitErrors with line numbers and suggestions. */
export function configIssues(
  issues: readonly z.core.$ZodIssue[],
  raw: unknown,
  file: string,
  lineOf: (p: KeyPath) => number | undefined,
): LorakitError[] {
  const errors: LorakitError[] = [];
  for (const issue of issues) {
    const p = issue.path.filter((k): k is string | number => typeof k !== "symbol");
    if (issue.code === "unrecognized_keys") {
      const s = schemaAt(RunConfig, p);
      const known = s instanceof z.ZodObject ? Object.keys(s.shape) : [];
      for (const key of issue.keys) {
        const full = [...p, key];
        const guess = suggestKey(p, key);
        errors.push(
          new LorakitError("CONFIG_UNKNOWN_KEY", `unknown key '${keyPathText(full)}'`, {
            where: { file, line: lineOf(full), key: keyPathText(full) },
            hint: guess ? `did you mean '${guess}'?` : `valid keys here: ${known.join(", ")}`,
          }),
        );
      }
      continue;
    }
    const where = { file, line: lineOf(p) ?? lineOf(p.slice(0, -1)), key: keyPathText(p) || "(root)" };
    const got = valueAt(raw, p);
    if (issue.code === "invalid_value" && "values" in issue) {
      const values = issue.values.map(String);
      const guess = typeof got === "string" ? nearest(got, values) : undefined;
      errors.push(
        new LorakitError("CONFIG_BAD_VALUE", `'${keyPathText(p)}' is ${typeName(got)}`, {
          where,
          hint: `${guess ? `did you mean '${guess}'? ` : ""}expected one of: ${values.join(", ")}`,
        }),
      );
    } else if (issue.code === "invalid_union" && issue.errors.length > 0) {
      // One of several shapes (true | false | "low_memory"): every branch's expected type or values.
      const options = [
        ...new Set(
          issue.errors
            .flat()
            .flatMap((i) =>
              i.code === "invalid_value" && "values" in i
                ? i.values.map(String)
                : i.code === "invalid_type"
                  ? [i.expected === "boolean" ? "true, false" : i.expected]
                  : [],
            ),
        ),
      ];
      const guess = typeof got === "string" ? nearest(got, options) : undefined;
      errors.push(
        new LorakitError("CONFIG_BAD_VALUE", `'${keyPathText(p)}' is ${typeName(got)}`, {
          where,
          hint: `${guess ? `did you mean '${guess}'? ` : ""}expected one of: ${options.join(", ")}`,
        }),
      );
    } else if (issue.code === "invalid_type") {
      const missing = got === undefined;
      errors.push(
        new LorakitError(
          missing ? "CONFIG_MISSING_KEY" : "CONFIG_WRONG_TYPE",
          missing ? `'${keyPathText(p)}' is required` : `'${keyPathText(p)}' is ${typeName(got)}`,
          { where, hint: `expected ${issue.expected}` },
        ),
      );
    } else {
      errors.push(
        new LorakitError("CONFIG_BAD_VALUE", `'${keyPathText(p)}': ${issue.message}`, {
          where,
          hint: `got ${typeName(got)}`,
        }),
      );
    }
  }
  return errors;
}

/** `~` and `~/…` as the home folder (HOME, else the account's), as a shell would; any other path unchanged. */
export function expandHome(p: string, env: NodeJS.ProcessEnv = process.env): string {
  if (p !== "~" && !p.startsWith("~/")) return p;
  return path.join(env.HOME || os.homedir(), p.slice(1));
}

function asList(v: string | string[] | undefined): string[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

function missingPathError(kind: string, abs: string, shown: string, file: string, key: string, line?: number) {
  const dir = path.dirname(abs);
  let hint = `check the path (relative paths resolve against ${path.dirname(file)})`;
  if (existsSync(dir) && statSync(dir).isDirectory()) {
    const guess = nearest(path.basename(abs), readdirSync(dir));
    if (guess) hint = `did you mean '${path.join(path.dirname(shown), guess)}'?`;
  }
  return new LorakitError("CONFIG_MISSING_PATH", `${kind} '${shown}' does not exist`, {
    where: { file, line, key },
    hint,
  });
}

/** How deep a config may nest collections. The YAML composer recurses once per level and runs out of stack
 * about a thousand levels down (2 KB of `- - - …`), where V8 may abort the whole process instead of throwing. */
export const MAX_YAML_DEPTH = 64;

/** Offset of the first collection nested deeper than MAX_YAML_DEPTH, from the parser's tokens (which it builds
 * without recursion), or undefined. */
function tooDeep(text: string): number | undefined {
  const stack: [CST.Token | null | undefined, number][] = [...new Parser().parse(text)].map((t) => [t, 0]);
  for (let item = stack.pop(); item; item = stack.pop()) {
    const [token, depth] = item;
    if (!token) continue;
    if (token.type === "document") stack.push([token.value, depth]);
    else if (token.type === "block-map" || token.type === "block-seq" || token.type === "flow-collection") {
      if (depth >= MAX_YAML_DEPTH) return token.offset;
      for (const it of token.items as CST.CollectionItem[]) stack.push([it.key, depth + 1], [it.value, depth + 1]);
    } else if (token.type === "block-scalar") for (const p of token.props) stack.push([p, depth]);
  }
  return undefined;
}

/** Parses and validates a config from text (no file-system checks). */
export function parseConfigText(
  text: string,
  file: string,
): { config: RunConfig; lineOf: (p: KeyPath) => number | undefined } {
  const lineCounter = new LineCounter();
  const deep = tooDeep(text);
  if (deep !== undefined) {
    throw new LorakitError(
      "CONFIG_BAD_YAML",
      `the config nests lists or mappings more than ${MAX_YAML_DEPTH} levels deep`,
      {
        where: { file, line: text.slice(0, deep).split("\n").length },
        hint: "a run config is a few sections of settings: check the brackets and the indentation",
      },
    );
  }
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  if (doc.errors.length > 0) {
    throw LorakitError.fromList(
      doc.errors.map(
        (e) =>
          new LorakitError("CONFIG_BAD_YAML", e.message.split("\n")[0] ?? e.message, {
            where: { file, line: lineCounter.linePos(e.pos[0]).line },
            hint: "fix the YAML syntax (indentation, a missing ':' or an unclosed quote)",
          }),
      ),
    );
  }
  let raw: unknown;
  try {
    raw = doc.toJS() ?? {};
  } catch (e) {
    // Aliases that expand past yaml's limit (a "billion laughs" document), or one that cannot be resolved.
    let at: number | undefined;
    visit(doc, {
      Alias(_, node) {
        at = node.range?.[0];
        return visit.BREAK;
      },
    });
    throw new LorakitError("CONFIG_BAD_YAML", (e as Error).message, {
      where: { file, line: at === undefined ? 1 : lineCounter.linePos(at).line },
      hint: "write the values out instead of through anchors and aliases (&name / *name)",
    });
  }
  const lineOf = (p: KeyPath): number | undefined => {
    let node: unknown = doc.contents;
    let range: [number, number, number] | undefined;
    for (const k of p) {
      if (isMap(node)) {
        const pair = node.items.find((it) => (it.key as { value?: unknown } | null)?.value === k);
        if (!pair) return range ? lineCounter.linePos(range[0]).line : undefined;
        range = (pair.key as { range?: [number, number, number] }).range;
        node = pair.value;
      } else if (isSeq(node) && typeof k === "number") {
        const item = node.items[k] as { range?: [number, number, number] } | undefined;
        if (!item) break;
        range = item.range;
        node = item;
      } else break;
    }
    return range ? lineCounter.linePos(range[0]).line : undefined;
  };
  const parsed = RunConfig.safeParse(raw);
  if (!parsed.success) {
    throw LorakitError.fromList(configIssues(parsed.error.issues, raw, file, lineOf));
  }
  return { config: parsed.data, lineOf };
}

export async function loadConfig(
  configPath: string,
  cwd: string = process.cwd(),
  env: NodeJS.ProcessEnv = process.env,
): Promise<LoadedConfig> {
  const file = path.resolve(cwd, expandHome(configPath, env));
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch {
    throw new LorakitError("CONFIG_NOT_FOUND", `config file '${configPath}' not found`, {
      where: { file },
      hint: "pass the path of a run config, e.g. `lorakit train run.yaml`",
    });
  }
  const { config, lineOf } = parseConfigText(text, file);
  const base = path.dirname(file);
  const errors: LorakitError[] = [];
  // Paths in the config: `~` is the home folder; relative paths are from the config file's folder.
  const resolve = (p: string) => path.resolve(base, expandHome(p, env));
  const modelDir = resolve(config.model);
  if (!existsSync(modelDir)) {
    errors.push(missingPathError("model folder", modelDir, config.model, file, "model", lineOf(["model"])));
  } else if (!existsSync(path.join(modelDir, "config.json"))) {
    errors.push(
      new LorakitError("CONFIG_MODEL_NOT_CHECKPOINT", `'${config.model}' has no config.json`, {
        where: { file, line: lineOf(["model"]), key: "model" },
        hint: "point `model` at a local checkpoint folder (config.json, weights, tokenizer)",
      }),
    );
  }
  const resolveFiles = (key: "train" | "eval") =>
    asList(config.data[key]).map((f, i) => {
      const abs = resolve(f);
      const keyPath = Array.isArray(config.data[key]) ? ["data", key, i] : ["data", key];
      if (!existsSync(abs))
        errors.push(missingPathError("data file", abs, f, file, keyPathText(keyPath), lineOf(keyPath)));
      return abs;
    });
  const trainFiles = resolveFiles("train");
  const evalFiles = resolveFiles("eval");
  if (errors.length > 0) throw LorakitError.fromList(errors);
  const name = config.name ?? path.basename(file).replace(/\.(ya?ml|json)$/i, "");
  return {
    config,
    file,
    name,
    modelDir,
    trainFiles,
    evalFiles,
    outputDir: resolve(config.output_dir),
  };
}
