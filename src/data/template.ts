// Chat templates: a Conversation → token ids, a per-token `trained` flag (label = id) and the role of
// the turn each token belongs to. Built-ins (chatglm3, chatml, llama3, deepseek) insert special tokens
// by id and encode text with parseSpecial=false, so a user who types `<|im_end|>` gets ordinary pieces.
// `jinja` renders the checkpoint's own chat_template and finds trained spans by rendering prefixes.// The built-ins are in template-builtin.ts, `jinja` in template-jinja.ts; here a template is chosen.
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { LorakitError, type Where } from "../errors.js";
import { familyFor } from "../models/families.js";
import { chatglm3Template, chatmlTemplate, deepseekTemplate, llama3Template } from "./template-builtin.js";
import type { ChatTemplate, TemplateOption } from "./template-common.js";
import { jinjaTemplate } from "./template-jinja.js";
import type { Tokenizer } from "./tokenizer.js";

export { chatglm3Template, chatmlTemplate, deepseekTemplate, llama3Template } from "./template-builtin.js";
export type { ChatTemplate, Rendered, TemplateName, TemplateOption } from "./template-common.js";
export { type JinjaOptions, jinjaTemplate } from "./template-jinja.js";

const sha = (s: string) => createHash("sha256").update(s).digest("hex");

/** The checkpoint's chat_template: tokenizer_config.json `chat_template`, else chat_template.jinja beside it. */
export function readChatTemplate(
  modelDir: string,
): { source: string; bosToken?: string; eosToken?: string; origin: Where } | undefined {
  const cfgPath = path.join(modelDir, "tokenizer_config.json");
  let cfg: Record<string, unknown> = {};
  const bad = (what: string, where: Where) =>
    new LorakitError("MODEL_BAD_FILE", `tokenizer_config.json ${what}`, {
      where,
      hint: "Restore the checkpoint's tokenizer_config.json.",
    });
  if (existsSync(cfgPath)) {
    // A leading U+FEFF is the byte-order mark Windows editors write, as loadTokenizer reads it.
    const text = readFileSync(cfgPath, "utf8").replace(/^\uFEFF/, "");
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      const at = /position (\d+)/.exec((e as Error).message);
      const line = (at ? text.slice(0, Number(at[1])) : text).split("\n").length;
      throw bad(`is not valid JSON: ${(e as Error).message}`, { file: cfgPath, line });
    }
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed))
      throw bad("is not a JSON object", { file: cfgPath, line: 1 });
    cfg = parsed as Record<string, unknown>;
  }
  const spelling = (v: unknown): string | undefined =>
    typeof v === "string"
      ? v
      : v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string"
        ? (v as { content: string }).content
        : undefined;
  const tokens = {
    ...(spelling(cfg.bos_token) !== undefined ? { bosToken: spelling(cfg.bos_token) } : {}),
    ...(spelling(cfg.eos_token) !== undefined ? { eosToken: spelling(cfg.eos_token) } : {}),
  };
  let source: string | undefined;
  let origin: Where = { file: cfgPath, key: "chat_template" };
  const ct = cfg.chat_template;
  if (typeof ct === "string") source = ct;
  else if (Array.isArray(ct) && ct.length > 0) {
    // transformers' named templates: [{name, template}], the one named "default" first.
    const named = ct as unknown[];
    const isNamed = (t: unknown): t is { name?: unknown; template?: unknown } => !!t && typeof t === "object";
    const i = Math.max(
      0,
      named.findIndex((t) => isNamed(t) && t.name === "default"),
    );
    const entry = named[i];
    origin = { file: cfgPath, key: `chat_template[${i}].template` };
    if (!isNamed(entry) || typeof entry.template !== "string")
      throw bad("has a chat_template that is not text", origin);
    source = entry.template;
  } else if (ct !== undefined && ct !== null && !Array.isArray(ct))
    throw bad("has a chat_template that is not text", origin);
  const jinjaFile = path.join(modelDir, "chat_template.jinja");
  if (source === undefined && existsSync(jinjaFile)) {
    source = readFileSync(jinjaFile, "utf8");
    origin = { file: jinjaFile, line: 1 };
  }
  return source === undefined ? undefined : { source, ...tokens, origin };
}

export interface TemplateChoice {
  template: TemplateOption;
  tokenizer: Tokenizer;
  modelDir: string;
  /** config.json `model_type`, for `auto` and the family's stop tokens. */
  modelType?: string;
}

/**
 * The template to use. `auto`: the family's built-in for ChatGLM3 (its checkpoint's chat_template puts a
 * space before each content that the model's own chat code never does; the finetune_demo semantics are the
 * built-in), else the checkpoint's chat_template when it has one, else the family's built-in.
 */
export function chooseTemplate(choice: TemplateChoice): ChatTemplate {
  const family = choice.modelType ? familyFor(choice.modelType) : undefined;
  let name = choice.template;
  const own = name === "auto" || name === "jinja" ? readChatTemplate(choice.modelDir) : undefined;
  if (name === "auto") {
    if (family?.template === "chatglm3") name = "chatglm3";
    else if (own) name = "jinja";
    else if (family) name = family.template;
    else
      throw new LorakitError(
        "TEMPLATE_UNKNOWN",
        "the checkpoint has no chat_template and its model family is unknown",
        {
          where: { file: path.join(choice.modelDir, "tokenizer_config.json"), key: "chat_template" },
          hint: "Set data.template to chatml, llama3, deepseek or chatglm3.",
        },
      );
  }
  switch (name) {
    case "chatglm3":
      return chatglm3Template(choice.tokenizer);
    case "chatml":
      return chatmlTemplate(choice.tokenizer);
    case "llama3":
      return llama3Template(choice.tokenizer);
    case "deepseek":
      return deepseekTemplate(choice.tokenizer);
    case "jinja": {
      if (!own)
        throw new LorakitError("TEMPLATE_MISSING", "data.template is jinja but the checkpoint has no chat_template", {
          where: { file: path.join(choice.modelDir, "tokenizer_config.json"), key: "chat_template" },
          hint: `Use a built-in template${family ? ` (this family's is ${family.template})` : ""}.`,
        });
      const { source, ...tokens } = own;
      return jinjaTemplate(source, choice.tokenizer, {
        ...tokens,
        ...(family ? { stopTokens: family.stopTokens } : {}),
      });
    }
  }
}

/** A short fingerprint of a template's definition. */
export function templateHash(t: ChatTemplate): string {
  return sha(`${t.name}\n${t.source}`).slice(0, 16);
}
