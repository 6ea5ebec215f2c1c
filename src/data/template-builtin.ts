// The built-in chat templates (chatglm3, chatml, llama3, deepseek): special tokens inserted by id, text encoded
// with parseSpecial=false, so a user who types `<|im_end|>` gets ordinary pieces.
import { LorakitError } from "../errors.js";
import { CHATGLM3_TOOLS_SYSTEM, type Conversation, type Message, type Role, trains } from "./formats.js";
import { type ChatTemplate, keyOf, promptMessages, type Rendered } from "./template-common.js";
import type { Tokenizer } from "./tokenizer.js";

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
