// The one shape every sample format is normalized to: a Conversation of role-tagged Messages with their
// origin, which messages are learned, and a conversation's content as stable text.
import type { DATA_FORMATS } from "../config/schema.js";
import type { Origin } from "./read.js";

export type Role = "system" | "user" | "assistant" | "observation" | "tool";
export const ROLES: readonly Role[] = ["system", "user", "assistant", "observation", "tool"];

export interface Message {
  role: Role;
  content: string;
  /** Learn this message; without it assistant messages are learned and the others are not (see `trains`). */
  loss?: boolean;
  /** ChatGLM3 metadata after the role token (a tool call's function name). */
  metadata?: string;
  /** Tool definitions a system message carries (ChatGLM3 appends them to its content as JSON). */
  tools?: unknown;
  /** Where the turn sits in its record (`conversations[2]`, `output`), for located errors. */
  key?: string;
}

export interface Conversation {
  messages: Message[];
  /** The record's top-level tool definitions (ChatGLM3: a system message of their own, first). */
  tools?: unknown;
  origin: Origin;
}

/** Whether a message is learned: its `loss` flag, else only assistant messages. */
export const trains = (m: Message): boolean => m.loss ?? m.role === "assistant";

export type DataFormat = (typeof DATA_FORMATS)[number];
export type FormatName = Exclude<DataFormat, "auto">;

/** A stable text for a conversation's content (duplicates, split overlap): roles, contents, tools. */
export function conversationKey(conv: Conversation): string {
  return JSON.stringify([
    conv.messages.map((m) => [m.role, m.content.trim(), m.metadata ?? "", m.loss ?? null, m.tools ?? null]),
    conv.tools ?? null,
  ]);
}
