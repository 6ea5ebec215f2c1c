// The `jinja` template: the checkpoint's own chat_template rendered, trained spans found by rendering prefixes.
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
import { Template } from "@huggingface/jinja";
import { LorakitError, type Where } from "../errors.js";
import { type Conversation, type Message, type Role, trains } from "./formats.js";
import { type ChatTemplate, keyOf, promptMessages, type Rendered } from "./template-common.js";
import type { Tokenizer } from "./tokenizer.js";

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
