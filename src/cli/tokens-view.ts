// One token per line for a person: index, id, the text the token stands for (the raw vocabulary piece on
// request), and whether it is trained (green in a terminal). Byte-level ("ĠÃ") and byte-fallback ("<0xE4>")
// pieces are decoded by carrying bytes from token to token, so each character is shown once, by the token
// that completes it; a token holding only part of a character shows its bytes (<e4 bd>).

import type { Tokenizer } from "../data/index.js";
import { lenientUtf8, utf8CharLen } from "../data/index.js";
import { colors, type Io, out } from "./io.js";

/** Characters a terminal shows as nothing or as a plain space: controls, format characters (U+FEFF, U+200B,
 * U+200D …), separators and spaces other than " ". Real vocabularies hold pieces made of them. */
const INVISIBLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]|(?! )\p{Zs}/gu;

/** A piece as a quoted string a person can read: invisible characters as \uXXXX (astral: \u{XXXXX}) escapes. */
export function showPiece(piece: string): string {
  return JSON.stringify(piece).replace(INVISIBLE, (c) => {
    const cp = c.codePointAt(0) as number;
    return cp > 0xffff ? `\\u{${cp.toString(16)}}` : `\\u${cp.toString(16).padStart(4, "0")}`;
  });
}

/** What a token shows: characters it completes, bytes of its own that no character (yet) takes, or a name. */
export type Segment = { text: string } | { bytes: number[] } | { name: string };

export interface TokenTexts {
  /** Per token, in order: what the terminal shows. */
  segments: Segment[][];
  /** Per token: its decoded text (characters it completes; U+FFFD for its bytes that never make one; a special
   * token's name). Joined, they are the decoded text (a SentencePiece text's leading space aside). */
  texts: string[];
  /** Some token shows bytes: part of a character, or a byte that starts none. */
  partial: boolean;
}

/** Can the bytes from `pos` on still become one character when more bytes follow? */
function utf8Prefix(b: readonly number[], pos: number): boolean {
  const c0 = b[pos] as number;
  const need = c0 >= 0xc2 && c0 <= 0xdf ? 2 : c0 >= 0xe0 && c0 <= 0xef ? 3 : c0 >= 0xf0 && c0 <= 0xf4 ? 4 : 0;
  const have = b.length - pos;
  if (need === 0 || have >= need) return false;
  for (let i = 1; i < have; i++) {
    const c = b[pos + i] as number;
    // The second byte's range is narrower after E0, ED, F0 and F4 (no overlong forms, surrogates or > U+10FFFF).
    const [lo, hi] =
      i === 1 && c0 === 0xe0
        ? [0xa0, 0xbf]
        : i === 1 && c0 === 0xed
          ? [0x80, 0x9f]
          : i === 1 && c0 === 0xf0
            ? [0x90, 0xbf]
            : i === 1 && c0 === 0xf4
              ? [0x80, 0x8f]
              : [0x80, 0xbf];
    if (c < lo || c > hi) return false;
  }
  return true;
}

/** The decoded text of each token, bytes carried across tokens until they make a character. */
export function tokenTexts(tokenizer: Tokenizer, ids: readonly number[]): TokenTexts {
  const segments: Segment[][] = ids.map(() => []);
  const texts: string[] = ids.map(() => "");
  let partial = false;
  // Bytes waiting for the rest of their character, each with the token it came from.
  let pending: { byte: number; owner: number }[] = [];
  const push = (i: number, seg: Segment) => {
    const list = segments[i] as Segment[];
    const last = list.at(-1);
    if (last && "text" in last && "text" in seg) last.text += seg.text;
    else if (last && "bytes" in last && "bytes" in seg) last.bytes.push(...seg.bytes);
    else list.push(seg);
  };
  // Bytes left waiting when a special token or the end comes never make a character: U+FFFD each, as
  // SentencePiece and byte fallback decode them.
  const giveUp = () => {
    for (const p of pending) texts[p.owner] += "\uFFFD";
    pending = [];
  };
  ids.forEach((id, i) => {
    const surface = tokenizer.tokenSurface(id);
    if ("name" in surface) {
      giveUp();
      push(i, { name: surface.name });
      texts[i] = surface.name;
      return;
    }
    for (const byte of surface.bytes) pending.push({ byte, owner: i });
    const list = pending.map((p) => p.byte);
    const bytes = Uint8Array.from(list);
    let pos = 0;
    while (pos < bytes.length) {
      const n = utf8CharLen(bytes, pos);
      if (n > 0) {
        const ch = lenientUtf8.decode(bytes.subarray(pos, pos + n));
        push(i, { text: ch });
        texts[i] += ch;
        pos += n;
      } else if (utf8Prefix(list, pos)) {
        break;
      } else {
        // A byte that starts no character: shown as a byte by the token it came from.
        const p = pending[pos] as { byte: number; owner: number };
        texts[p.owner] += "\uFFFD";
        if (p.owner === i) push(i, { bytes: [p.byte] });
        partial ||= p.owner === i;
        pos += 1;
      }
    }
    pending = pending.slice(pos);
    const own = pending.filter((p) => p.owner === i).map((p) => p.byte);
    if (own.length > 0) {
      push(i, { bytes: own });
      partial = true;
    }
  });
  giveUp();
  return { segments, texts, partial };
}

const hex = (bytes: readonly number[]) => `<${bytes.map((b) => b.toString(16).padStart(2, "0")).join(" ")}>`;

/** A token's segments for a terminal: text and names quoted, bytes as <e4 bd>. */
export function showSegments(segments: readonly Segment[]): string {
  if (segments.length === 0) return '""';
  return segments.map((s) => ("bytes" in s ? hex(s.bytes) : showPiece("text" in s ? s.text : s.name))).join(" ");
}

export function printTokens(
  io: Io,
  tokenizer: Tokenizer,
  view: { ids: readonly number[]; trained?: readonly boolean[]; roles?: readonly string[] },
  opts: { pieces?: boolean } = {},
): void {
  const c = colors(io);
  const { segments, partial } = tokenTexts(tokenizer, view.ids);
  const pieces = opts.pieces ? tokenizer.pieces(view.ids) : [];
  for (let i = 0; i < view.ids.length; i++) {
    const text = showSegments(segments[i] ?? []);
    const piece = opts.pieces ? `  ${c.dim(`piece ${showPiece(pieces[i] ?? "")}`)}` : "";
    const trained = view.trained?.[i];
    const role = view.roles?.[i] ? ` ${c.dim((view.roles[i] as string).padEnd(9))}` : "";
    const line = `${String(i).padStart(5)} ${String(view.ids[i]).padStart(7)}${role} ${trained === undefined ? "" : trained ? "T " : ". "}${text}`;
    out(io, `${trained ? c.green(line) : line}${piece}`);
  }
  if (partial)
    out(
      io,
      c.dim("<e4 bd>: bytes of a character split across tokens (the token that completes it shows it), or of none"),
    );
}
