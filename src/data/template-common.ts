// What every chat template is (a Conversation → ids, trained flags, roles and spans) and the helpers the
// built-ins (template-builtin.ts) and the checkpoint's own jinja (template-jinja.ts) share.
import type { TEMPLATES } from "../config/schema.js";
import type { Conversation, Message, Role } from "./formats.js";

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

/** A trailing assistant message is the answer the prompt asks for: left out. */
export function promptMessages(conv: Conversation): Message[] {
  const msgs = conv.messages.slice();
  while (msgs.length > 0 && msgs[msgs.length - 1]?.role === "assistant") msgs.pop();
  return msgs;
}

/** A message's key path in its record, for errors (`messages[i]` when the conversation was built in code). */
export const keyOf = (conv: Conversation, i: number): string => conv.messages[i]?.key ?? `messages[${i}]`;
