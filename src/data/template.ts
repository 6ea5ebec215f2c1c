// Chat templates: a Conversation → token ids, a per-token `trained` flag (label = id) and the role of
// the turn each token belongs to. Built-ins (chatglm3, chatml, llama3, deepseek) insert special tokens
// by id and encode text with parseSpecial=false, so a user who types `<|im_end|>` gets ordinary pieces.
// `jinja` renders the checkpoint's own chat_template and finds trained spans by rendering prefixes.
//
// Jinja and special spellings typed in content. transformers' apply_chat_template renders the whole
// conversation to one string and tokenizes it with special tokens parsed, so a `<|im_end|>` typed by a
// user becomes the real end-of-turn token. Here, when no message content spells a special token (the
// usual case), the string is tokenized exactly like that (ids equal apply_chat_template's). When some
// content does, the template is rendered a second time with each content replaced by a sentinel; if
// putting the contents back gives the same string, the content spans are known, and only special
// spellings outside them become special ids: the text between those is encoded with parseSpecial=false.
// If the template transforms content so that the check fails, the plain string is tokenized like
// transformers does and `contentSpecials` counts the spellings that became special ids (the doctor warns).

import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { Template } from "@huggingface/jinja";
import type { TEMPLATES } from "../config/schema.js";
import { LorakitError, type Where } from "../errors.js";
import { familyFor } from "../models/families.js";
import { CHATGLM3_TOOLS_SYSTEM, type Conversation, type Message, type Role, trains } from "./formats.js";
import type { Tokenizer } from "./tokenizer.js";

export type TemplateOption = (typeof TEMPLATES)[number];
export type TemplateName = Exclude<TemplateOption, "auto">;

export interface Rendered {
  ids: number[];
  /** Per token: the label is the id (loss is taken), already shifted the way the template's recipe wants. */
  trained: boolean[];
  /** Per token: the role of the turn it belongs to (a trained end-of-turn token counts as the assistant's). */
  roles: Role[];
  /** Trained token ranges [start, end), one per trained assistant message, in order. */
  spans: { message: number; start: number; end: number }[];
  /** Special-token spellings inside message content that were encoded as special ids (jinja fallback only). */
  contentSpecials: number;
}

export interface ChatTemplate {
  name: TemplateName;
  /** The text that defines the template (jinja source, or the built-in's definition): hashed into prepared data. */
  source: string;
  render(conv: Conversation): Rendered;
  /** Ids that prompt the model for the next answer (a trailing assistant message is left out). */
  renderPrompt(conv: Conversation): number[];
  /** Ids that end generation. */
  stopIds: number[];
  /** Special tokens the template uses, by spelling. */
  specialTokens: Record<string, number>;
}

const sha = (s: string) => createHash("sha256").update(s).digest("hex");

/** Token sequence under construction. */
class Seq {
  ids: number[] = [];
  train: boolean[] = [];
  roles: Role[] = [];
  msg: number[] = [];
  push(ids: readonly number[], role: Role, train: boolean, msg: number): void {
    for (let k = 0; k < ids.length; k++) {
      this.ids.push(ids[k] as number);
      this.train.push(train);
      this.roles.push(role);
      this.msg.push(msg);
    }
  }
  /** Rendered with trained spans taken from consecutive runs of trained tokens per message. */
  done(): Rendered {
    const spans: Rendered["spans"] = [];
    this.train.forEach((t, i) => {
      if (!t) return;
      const last = spans[spans.length - 1];
      const m = this.msg[i] as number;
      if (last && last.message === m && last.end === i) last.end = i + 1;
      else spans.push({ message: m, start: i, end: i + 1 });
    });
    return { ids: this.ids, trained: this.train, roles: this.roles, spans, contentSpecials: 0 };
  }
}

function need(tok: Tokenizer, spelling: string, template: string): number {
  const id = tok.tokenToId(spelling);
  if (id === undefined)
    throw new LorakitError(
      "TEMPLATE_TOKEN_MISSING",
      `the tokenizer has no ${spelling} token, which the ${template} template needs`,
      {
        hint: `This checkpoint does not use the ${template} template: set data.template to auto (the checkpoint's own) or the family's.`,
      },
    );
  return id;
}

function optional(tok: Tokenizer, spellings: readonly string[]): number[] {
  return spellings.map((s) => tok.tokenToId(s)).filter((x): x is number => x !== undefined);
}

/** A trailing assistant message is the answer the prompt asks for: left out. */
function promptMessages(conv: Conversation): Message[] {
  const msgs = conv.messages.slice();
  while (msgs.length > 0 && msgs[msgs.length - 1]?.role === "assistant") msgs.pop();
  return msgs;
}

/** A message's key path in its record, for errors (`messages[i]` when the conversation was built in code). */
const keyOf = (conv: Conversation, i: number): string => conv.messages[i]?.key ?? `messages[${i}]`;

/** Built-ins without a defined rendering of tool definitions or a call's metadata refuse them, located. */
function noTools(conv: Conversation, name: string): void {
  const tools = conv.messages.findIndex((m) => m.tools !== undefined);
  const meta = conv.messages.findIndex((m) => m.metadata !== undefined);
  let key: string;
  let what = "tool definitions";
  if (conv.tools !== undefined) key = "tools";
  else if (tools >= 0) key = `${keyOf(conv, tools)}.tools`;
  else if (meta >= 0) [key, what] = [`${keyOf(conv, meta)}.metadata`, "a tool call's metadata"];
  else return;
  throw new LorakitError(
    "TEMPLATE_TOOLS_UNSUPPORTED",
    `the built-in ${name} template has no defined way to render ${what}, and lorakit does not drop them`,
    {
      where: { ...conv.origin, key },
      hint: "Use a template that knows tools: chatglm3 (ChatGLM3 models), or the checkpoint's own chat_template (data.template: jinja) when it renders them.",
    },
  );
}

// ---------------------------------------------------------------- chatglm3

/**
 * ChatGLM3, the official finetune_demo semantics: `[gMASK] sop`, per message `<|role|>` + encode(metadata +
 * "\n") + encode(content), eos at the end. The loss mask is shifted by one: `<|assistant|>` is not learned,
 * the token after each trained reply (the next role token, or eos) is. Tools as the official code renders
 * them: a system message's `tools` appended to its content as "\n" + json.dumps(tools, indent=4,
 * ensure_ascii=False) (the model's chat code), the record's top-level `tools` as a system message of their
 * own before all others (finetune_demo).
 */
export function chatglm3Template(tok: Tokenizer): ChatTemplate {
  const name = "chatglm3";
  const sp: Record<string, number> = {};
  for (const s of ["[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"])
    sp[s] = need(tok, s, name);
  const eos = tok.eosId ?? need(tok, "</s>", name);
  sp["</s>"] = eos;
  const roleId = (r: Role) => sp[`<|${r === "tool" ? "observation" : r}|>`] as number;
  const text = (s: string) => tok.encode(s, { parseSpecial: false });
  const newline = text("\n"); // what follows a role token without metadata: encoded once

  /** The messages as rendered (tools written into system content); `first` is the index of conv.messages[0]. */
  function messagesOf(conv: Conversation, msgs: Message[]): { msgs: Message[]; first: number } {
    // JSON.stringify(v, null, 4) writes what Python's json.dumps(v, indent=4, ensure_ascii=False) does
    // for JSON values, except numbers Python keeps as floats ("1.0" becomes "1").
    const dump = (v: unknown) => JSON.stringify(v, null, 4);
    const out = msgs.map((m) => (m.tools === undefined ? m : { ...m, content: `${m.content}\n${dump(m.tools)}` }));
    if (conv.tools === undefined) return { msgs: out, first: 0 };
    return { msgs: [{ role: "system", content: `${CHATGLM3_TOOLS_SYSTEM}\n${dump(conv.tools)}` }, ...out], first: 1 };
  }

  function body(seq: Seq, msgs: Message[], withLoss: boolean): boolean[] {
    const mask: boolean[] = [false, false];
    seq.push([sp["[gMASK]"] as number, sp.sop as number], msgs[0]?.role ?? "user", false, -1);
    msgs.forEach((m, i) => {
      const learn = withLoss && trains(m);
      const before = seq.ids.length;
      seq.push([roleId(m.role)], m.role, false, i);
      seq.push(m.metadata ? text(`${m.metadata}\n`) : newline, m.role, false, i);
      seq.push(text(m.content), m.role, false, i);
      for (let k = before; k < seq.ids.length; k++) mask.push(learn);
    });
    return mask;
  }

  return {
    name,
    source:
      "builtin:chatglm3/v1 [gMASK] sop {<|role|> encode(metadata+'\\n') encode(content)}* </s>; loss shifted by one",
    stopIds: [eos, sp["<|user|>"] as number, sp["<|observation|>"] as number],
    specialTokens: sp,
    render(conv) {
      const seq = new Seq();
      const { msgs, first } = messagesOf(conv, conv.messages);
      const mask = body(seq, msgs, true);
      seq.push([eos], msgs[msgs.length - 1]?.role ?? "user", false, msgs.length - 1);
      mask.push(false);
      // Shift: token i is learned when token i-1 belongs to a trained message; it ends that message's span
      // and counts as that message's (the role token or eos after a reply is the reply's end).
      for (let i = seq.ids.length - 1; i >= 1; i--) {
        if (!mask[i - 1]) continue;
        seq.train[i] = true;
        seq.msg[i] = seq.msg[i - 1] as number;
        seq.roles[i] = seq.roles[i - 1] as Role;
      }
      // Span message indices refer to conv.messages, not to the rendered list with its tools message.
      const out = seq.done();
      for (const s of out.spans) s.message -= first;
      return out;
    },
    renderPrompt(conv) {
      const seq = new Seq();
      body(seq, messagesOf(conv, promptMessages(conv)).msgs, false);
      return [...seq.ids, sp["<|assistant|>"] as number];
    },
  };
}

// ---------------------------------------------------------------- chatml, llama3, deepseek

type Body = (seq: Seq, msgs: Message[], withLoss: boolean, conv: Conversation) => void;

/** A template that renders message by message: `body` lays out the turns, `prompt` opens the next answer. */
function turnByTurn(
  spec: Omit<ChatTemplate, "render" | "renderPrompt">,
  body: Body,
  prompt: () => number[],
): ChatTemplate {
  return {
    ...spec,
    render(conv) {
      noTools(conv, spec.name);
      const seq = new Seq();
      body(seq, conv.messages, true, conv);
      return seq.done();
    },
    renderPrompt(conv) {
      noTools(conv, spec.name);
      const seq = new Seq();
      body(seq, promptMessages(conv), false, conv);
      return [...seq.ids, ...prompt()];
    },
  };
}

/** `<|im_start|>role\ncontent<|im_end|>\n`; trained: the assistant content and `<|im_end|>`. */
export function chatmlTemplate(tok: Tokenizer): ChatTemplate {
  const name = "chatml";
  const start = need(tok, "<|im_start|>", name);
  const end = need(tok, "<|im_end|>", name);
  const text = (s: string) => tok.encode(s, { parseSpecial: false });
  const roleName = (r: Role) => (r === "observation" ? "tool" : r);
  const body = (seq: Seq, msgs: Message[], withLoss: boolean) =>
    msgs.forEach((m, i) => {
      const t = withLoss && trains(m);
      seq.push([start, ...text(`${roleName(m.role)}\n`)], m.role, false, i);
      seq.push([...text(m.content), end], m.role, t, i);
      seq.push(text("\n"), m.role, false, i);
    });
  return turnByTurn(
    {
      name,
      source: "builtin:chatml/v1 {<|im_start|>role\\ncontent<|im_end|>\\n}*; trained: content <|im_end|>",
      stopIds: [end, ...optional(tok, ["<|endoftext|>"])],
      specialTokens: { "<|im_start|>": start, "<|im_end|>": end },
    },
    body,
    () => [start, ...text("assistant\n")],
  );
}

/** Llama 3: `<|begin_of_text|>`, per message `<|start_header_id|>role<|end_header_id|>\n\n` + content (trimmed) + `<|eot_id|>`. */
export function llama3Template(tok: Tokenizer): ChatTemplate {
  const name = "llama3";
  const bos = need(tok, "<|begin_of_text|>", name);
  const sh = need(tok, "<|start_header_id|>", name);
  const eh = need(tok, "<|end_header_id|>", name);
  const eot = need(tok, "<|eot_id|>", name);
  const text = (s: string) => tok.encode(s, { parseSpecial: false });
  const roleName = (r: Role) => (r === "observation" || r === "tool" ? "ipython" : r);
  const header = (r: string) => [sh, ...text(r), eh, ...text("\n\n")];
  const body = (seq: Seq, msgs: Message[], withLoss: boolean) => {
    seq.push([bos], msgs[0]?.role ?? "user", false, -1);
    msgs.forEach((m, i) => {
      seq.push(header(roleName(m.role)), m.role, false, i);
      seq.push([...text(m.content.trim()), eot], m.role, withLoss && trains(m), i);
    });
  };
  return turnByTurn(
    {
      name,
      source:
        "builtin:llama3/v1 <|begin_of_text|> {<|start_header_id|>role<|end_header_id|>\\n\\n trim(content)<|eot_id|>}*",
      stopIds: [eot, ...optional(tok, ["<|end_of_text|>", "<|eom_id|>"])],
      specialTokens: {
        "<|begin_of_text|>": bos,
        "<|start_header_id|>": sh,
        "<|end_header_id|>": eh,
        "<|eot_id|>": eot,
      },
    },
    body,
    () => [...header("assistant")],
  );
}

/**
 * DeepSeek-LLM chat: bos, then `system\n\n`, `User: …\n\n`, `Assistant: …<eos>`. The prompt ends with
 * `Assistant:` (as the checkpoint's own template does), so the learned answer starts with its space.
 */
export function deepseekTemplate(tok: Tokenizer): ChatTemplate {
  const name = "deepseek";
  const bos = tok.tokenToId("<｜begin▁of▁sentence｜>") ?? tok.bosId ?? need(tok, "<｜begin▁of▁sentence｜>", name);
  const eos = tok.tokenToId("<｜end▁of▁sentence｜>") ?? tok.eosId ?? need(tok, "<｜end▁of▁sentence｜>", name);
  const text = (s: string) => tok.encode(s, { parseSpecial: false });
  const body: Body = (seq, msgs, withLoss, conv) => {
    seq.push([bos], msgs[0]?.role ?? "user", false, -1);
    msgs.forEach((m, i) => {
      if (m.role === "system") seq.push(text(`${m.content}\n\n`), m.role, false, i);
      else if (m.role === "user") seq.push(text(`User: ${m.content}\n\n`), m.role, false, i);
      else if (m.role === "assistant") {
        seq.push(text("Assistant:"), m.role, false, i);
        seq.push([...text(` ${m.content}`), eos], m.role, withLoss && trains(m), i);
      } else
        throw new LorakitError("TEMPLATE_ROLE_UNSUPPORTED", `the deepseek template has no "${m.role}" role`, {
          where: { ...conv.origin, key: `${keyOf(conv, i)}.role` },
          hint: "Use a template that knows tool results (chatglm3, or the checkpoint's own via data.template: jinja).",
        });
    });
  };
  return turnByTurn(
    {
      name,
      source: "builtin:deepseek/v1 <bos> {system\\n\\n | User: c\\n\\n | Assistant: c<eos>}*",
      stopIds: [eos],
      specialTokens: { bos: bos, eos: eos },
    },
    body,
    () => [...text("Assistant:")],
  );
}

// ---------------------------------------------------------------- jinja (the checkpoint's chat_template)

/** End-of-turn spellings: a stop id when the template source spells them and the tokenizer has them. */
const END_SPELLINGS = [
  "<|im_end|>",
  "<|eot_id|>",
  "<|eom_id|>",
  "<|end|>",
  "<end_of_turn>",
  "<|endoftext|>",
  "</s>",
  "<|user|>",
  "<|observation|>",
  "<｜end▁of▁sentence｜>",
];

export interface JinjaOptions {
  bosToken?: string;
  eosToken?: string;
  /** Extra stop spellings (the model family's). */
  stopTokens?: readonly string[];
  /** Where the template's source is (tokenizer_config.json's `chat_template`, or chat_template.jinja). */
  origin?: Where;
}

const SENTINEL_OPEN = "\u{F0000}";
const SENTINEL_CLOSE = "\u{F0001}";

interface Tokenized {
  ids: number[];
  /** Tokens of the rendered text up to char `pos` (a token cut by `pos` counts when `ceil`). */
  tokenAt(pos: number, ceil: boolean): number;
  /** Content char spans, per message index (only known on the segmented path). */
  content?: { message: number; start: number; end: number }[];
  contentSpecials: number;
}

function lcp(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

export function jinjaTemplate(source: string, tok: Tokenizer, opts: JinjaOptions = {}): ChatTemplate {
  let compiled: Template;
  try {
    compiled = new Template(source);
  } catch (e) {
    throw new LorakitError(
      "TEMPLATE_PARSE",
      `the checkpoint's chat_template cannot be parsed: ${(e as Error).message}`,
      {
        ...(opts.origin ? { where: opts.origin } : {}),
        hint: "Use a built-in template (data.template: chatml, llama3, deepseek or chatglm3).",
      },
    );
  }
  const specials = [...tok.specialTokens.keys()].filter((s) => s.length > 0).sort((a, b) => b.length - a.length);
  const specialRe = specials.length
    ? new RegExp(specials.map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|"), "g")
    : undefined;
  const bosToken = opts.bosToken ?? (tok.bosId !== undefined ? tok.idToToken(tok.bosId) : undefined) ?? "";
  const eosToken = opts.eosToken ?? (tok.eosId !== undefined ? tok.idToToken(tok.eosId) : undefined) ?? "";

  const used: Record<string, number> = {};
  for (const s of specials) if (source.includes(s)) used[s] = tok.specialTokens.get(s) as number;
  if (bosToken && source.includes("bos_token") && tok.tokenToId(bosToken) !== undefined)
    used[bosToken] = tok.tokenToId(bosToken) as number;
  if (eosToken && source.includes("eos_token") && tok.tokenToId(eosToken) !== undefined)
    used[eosToken] = tok.tokenToId(eosToken) as number;
  const stopIds = new Set<number>();
  if (tok.eosId !== undefined) stopIds.add(tok.eosId);
  for (const s of [...(opts.stopTokens ?? []), ...END_SPELLINGS.filter((x) => source.includes(x))]) {
    const id = tok.tokenToId(s);
    if (id !== undefined) stopIds.add(id);
  }

  /** The message dicts apply_chat_template would get: role and content, and metadata / tools where given. */
  const dicts = (messages: readonly Message[]) =>
    messages.map((m) => ({
      role: m.role,
      content: m.content,
      ...(m.metadata !== undefined ? { metadata: m.metadata } : {}),
      ...(m.tools !== undefined ? { tools: m.tools } : {}),
    }));

  function text(messages: readonly Message[], tools: unknown, agp: boolean, conv: Conversation): string {
    try {
      return compiled.render({
        messages: dicts(messages),
        ...(tools !== undefined ? { tools } : {}),
        add_generation_prompt: agp,
        bos_token: bosToken,
        eos_token: eosToken,
      });
    } catch (e) {
      throw new LorakitError("TEMPLATE_RENDER", `the chat_template fails on this sample: ${(e as Error).message}`, {
        where: conv.origin,
        hint: "The checkpoint's template rejects this conversation shape (role order, roles); fix the sample or pick a built-in template.",
      });
    }
  }

  const specialTest = specialRe ? new RegExp(specialRe.source) : undefined;
  const hasSpecial = (s: string) => specialTest?.test(s) ?? false;

  /** Tokenize a rendering of `messages`, isolating content from template specials when content spells any. */
  function tokenize(
    rendered: string,
    messages: readonly Message[],
    tools: unknown,
    agp: boolean,
    conv: Conversation,
  ): Tokenized {
    if (!messages.some((m) => hasSpecial(m.content))) return whole(rendered, 0);
    const marked = messages.map((m, i) => ({ ...m, content: `${SENTINEL_OPEN}${i}${SENTINEL_CLOSE}` }));
    const skeleton = text(marked, tools, agp, conv);
    const spans: { message: number; start: number; end: number }[] = [];
    let rebuilt = "";
    let at = 0;
    const re = new RegExp(`${SENTINEL_OPEN}(\\d+)${SENTINEL_CLOSE}`, "gu");
    for (let m = re.exec(skeleton); m; m = re.exec(skeleton)) {
      rebuilt += skeleton.slice(at, m.index);
      const i = Number(m[1]);
      const content = messages[i]?.content ?? "";
      spans.push({ message: i, start: rebuilt.length, end: rebuilt.length + content.length });
      rebuilt += content;
      at = m.index + m[0].length;
    }
    rebuilt += skeleton.slice(at);
    if (rebuilt !== rendered) {
      // The template rewrites content: count the special spellings that content brought into the text.
      const count = (s: string) => s.match(new RegExp(specialRe?.source ?? "$^", "g"))?.length ?? 0;
      return whole(rendered, Math.max(0, count(rendered) - count(skeleton)));
    }
    return segmented(rendered, spans);
  }

  function whole(rendered: string, contentSpecials: number): Tokenized {
    const ids = tok.encode(rendered, { parseSpecial: true });
    return {
      ids,
      contentSpecials,
      tokenAt(pos, ceil) {
        if (pos >= rendered.length) return ids.length;
        if (pos <= 0) return 0;
        const prefix = tok.encode(rendered.slice(0, pos), { parseSpecial: true });
        const n = lcp(prefix, ids);
        return ceil && prefix.length > n ? n + 1 : n;
      },
    };
  }

  function segmented(rendered: string, content: { message: number; start: number; end: number }[]): Tokenized {
    // Special spellings outside content become ids; the text between them is encoded as plain text.
    const segs: { start: number; end: number; ids: number[]; special: boolean }[] = [];
    let at = 0;
    const inContent = (a: number, b: number) => content.some((c) => a < c.end && b > c.start);
    const addText = (a: number, b: number) => {
      if (b > a)
        segs.push({ start: a, end: b, ids: tok.encode(rendered.slice(a, b), { parseSpecial: false }), special: false });
    };
    const re = new RegExp(specialRe?.source ?? "$^", "g");
    for (let m = re.exec(rendered); m; m = re.exec(rendered)) {
      const a = m.index;
      const b = a + m[0].length;
      if (inContent(a, b)) continue;
      addText(at, a);
      segs.push({ start: a, end: b, ids: [tok.specialTokens.get(m[0]) as number], special: true });
      at = b;
    }
    addText(at, rendered.length);
    const ids = segs.flatMap((s) => s.ids);
    return {
      ids,
      content,
      contentSpecials: 0,
      tokenAt(pos, ceil) {
        let n = 0;
        for (const s of segs) {
          if (pos >= s.end) {
            n += s.ids.length;
            continue;
          }
          if (pos <= s.start) return n;
          const prefix = tok.encode(rendered.slice(s.start, pos), { parseSpecial: false });
          const k = lcp(prefix, s.ids);
          return n + (ceil && prefix.length > k ? k + 1 : k);
        }
        return n;
      },
    };
  }

  /**
   * Tool data the template would drop silently is refused instead: the record's tools and each message's
   * metadata / tools must change the rendering, and the content of each tool-result turn must appear in it.
   */
  function rendersTools(msgs: readonly Message[], conv: Conversation, agp: boolean, rendered: string): void {
    const fail = (key: string, what: string) =>
      new LorakitError("TEMPLATE_TOOLS_UNSUPPORTED", `the checkpoint's chat_template does not render ${what}`, {
        where: { ...conv.origin, key },
        hint: "Use a template that renders it (data.template: chatglm3 for ChatGLM3 models), or remove it from the data.",
      });
    if (conv.tools !== undefined && text(msgs, undefined, agp, conv) === rendered)
      throw fail("tools", "the record's `tools`");
    for (const field of ["metadata", "tools"] as const) {
      const i = msgs.findIndex((m) => m[field] !== undefined);
      if (i < 0) continue;
      const without = msgs.map((m) => {
        const { [field]: _, ...rest } = m;
        return rest;
      });
      if (text(without, conv.tools, agp, conv) === rendered)
        throw fail(
          `${keyOf(conv, i)}.${field}`,
          field === "metadata" ? "a tool call's `metadata`" : "a system turn's `tools`",
        );
    }
    const results = msgs.map((m, i) => (m.role === "observation" || m.role === "tool" ? i : -1)).filter((i) => i >= 0);
    if (results.length === 0) return;
    const mark = (i: number) => `${SENTINEL_OPEN}r${i}${SENTINEL_CLOSE}`;
    const marked = text(
      msgs.map((m, i) => (results.includes(i) ? { ...m, content: mark(i) } : m)),
      conv.tools,
      agp,
      conv,
    );
    const lost = results.find((i) => !marked.includes(mark(i)));
    if (lost !== undefined)
      throw fail(`${keyOf(conv, lost)}.role`, `"${msgs[lost]?.role}" turns (this one would vanish)`);
  }

  function render(conv: Conversation): Rendered {
    const msgs = conv.messages;
    const S = text(msgs, conv.tools, false, conv);
    rendersTools(msgs, conv, false, S);
    const t = tokenize(S, msgs, conv.tools, false, conv);
    const n = t.ids.length;
    const trained = new Array<boolean>(n).fill(false);
    const roles = new Array<Role>(n).fill(msgs[0]?.role ?? "user");
    // Turn starts: where the rendering of the first j messages ends.
    let prevTok = 0;
    for (let j = 1; j < msgs.length; j++) {
      const prefix = text(msgs.slice(0, j), conv.tools, false, conv);
      const span = t.content?.find((c) => c.message === j);
      const at = S.startsWith(prefix) ? prefix.length : span?.start;
      if (at === undefined) continue;
      const tokAt = t.tokenAt(at, false);
      roles.fill((msgs[j - 1] as Message).role, prevTok, tokAt);
      prevTok = tokAt;
    }
    roles.fill(msgs[msgs.length - 1]?.role ?? "user", prevTok, n);
    /** Message j's content, found by rendering a sentinel in its place: exact when putting the content back
     * gives S (an empty content, or one that also appears elsewhere, has no other way to be found). */
    const sentinelSpan = (j: number) => {
      const mark = `${SENTINEL_OPEN}c${j}${SENTINEL_CLOSE}`;
      const marked = text(
        msgs.map((m, i) => (i === j ? { ...m, content: mark } : m)),
        conv.tools,
        false,
        conv,
      );
      const content = (msgs[j] as Message).content;
      for (let at = marked.indexOf(mark); at >= 0; at = marked.indexOf(mark, at + 1))
        if (S === marked.slice(0, at) + content + marked.slice(at + mark.length))
          return { message: j, start: at, end: at + content.length };
      return undefined;
    };
    const spans: Rendered["spans"] = [];
    msgs.forEach((m, j) => {
      if (!trains(m)) return;
      const contentSpan = () => {
        const span = t.content?.find((c) => c.message === j) ?? sentinelSpan(j) ?? locate(S, m.content, msgs, j);
        if (!span)
          throw new LorakitError(
            "TEMPLATE_SPAN",
            `cannot find where assistant message ${j} is rendered by the chat_template`,
            {
              where: { ...conv.origin, key: `messages[${j}]` },
              hint: "The template renders turns differently depending on what follows them; pick a built-in template (data.template).",
            },
          );
        return span;
      };
      const P = text(msgs.slice(0, j), conv.tools, true, conv);
      const E = text(msgs.slice(0, j + 1), conv.tools, false, conv);
      const start = S.startsWith(P) ? P.length : contentSpan().start;
      let end: number;
      if (S.startsWith(E) && E.length > start) end = E.length;
      else {
        // Through the template's first special token after the content (its end of turn).
        end = contentSpan().end;
        const re = new RegExp(specialRe?.source ?? "$^", "g");
        re.lastIndex = end;
        const next = re.exec(S);
        const nextContent = t.content?.find((c) => c.start >= end)?.start ?? S.length;
        if (next && next.index < nextContent) end = next.index + next[0].length;
      }
      // Whitespace after the end-of-turn (chatml's "\n") is template glue, not the answer.
      while (end > start && /\s/.test(S[end - 1] as string)) end--;
      const a = t.tokenAt(start, false);
      const b = t.tokenAt(end, true);
      for (let i = a; i < b; i++) {
        trained[i] = true;
        roles[i] = m.role;
      }
      if (b > a) spans.push({ message: j, start: a, end: b });
    });
    return { ids: t.ids, trained, roles, spans, contentSpecials: t.contentSpecials };
  }

  return {
    name: "jinja",
    source,
    stopIds: [...stopIds],
    specialTokens: used,
    render,
    renderPrompt(conv) {
      const msgs = promptMessages(conv);
      const S = text(msgs, conv.tools, true, conv);
      rendersTools(msgs, conv, true, S);
      return tokenize(S, msgs, conv.tools, true, conv).ids;
    },
  };
}

/** Where message j's content sits in the rendering S (the first occurrence after the messages before it). */
function locate(S: string, content: string, msgs: readonly Message[], j: number) {
  let from = 0;
  for (let i = 0; i < j; i++) {
    const c = (msgs[i] as Message).content;
    const at = c ? S.indexOf(c, from) : -1;
    if (at >= 0) from = at + c.length;
  }
  const at = S.indexOf(content, from);
  return at < 0 ? undefined : { message: j, start: at, end: at + content.length };
}

// ---------------------------------------------------------------- choosing a template

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
