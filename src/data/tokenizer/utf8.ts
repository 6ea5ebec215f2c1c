// UTF-8 for tokenizers: the one place that turns bytes into text. A vocabulary is data, not a document, so a
// leading U+FEFF is a character like any other (ChatGLM3-6B has the pieces "\uFEFF" and "\uFEFF\uFEFF"):
// a default TextDecoder drops it as a byte-order mark, which empties or merges pieces and loses the
// character from decoded byte runs. Every decoder here keeps it.

/** Throws on malformed input (protobuf strings, which the library requires to be valid UTF-8). */
export const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
/** Malformed sequences become U+FFFD (per WHATWG: one per maximal invalid subsequence). */
export const lenientUtf8 = new TextDecoder("utf-8", { ignoreBOM: true });
/** A lone surrogate in a JS string is written as U+FFFD (EF BF BD). */
export const utf8Encoder = new TextEncoder();

/** Length of one well-formed UTF-8 character at `pos`, or 0 when malformed (SentencePiece's DecodeUTF8 rules). */
export function utf8CharLen(b: Uint8Array, pos: number, end = b.length): number {
  const c0 = b[pos] as number;
  const n = end - pos;
  const trail = (i: number) => ((b[pos + i] as number) & 0xc0) === 0x80;
  const valid = (cp: number) => cp < 0xd800 || (cp >= 0xe000 && cp <= 0x10ffff);
  if (c0 < 0x80) return 1;
  if (n >= 2 && (c0 & 0xe0) === 0xc0) {
    const cp = ((c0 & 0x1f) << 6) | ((b[pos + 1] as number) & 0x3f);
    return trail(1) && cp >= 0x80 && valid(cp) ? 2 : 0;
  }
  if (n >= 3 && (c0 & 0xf0) === 0xe0) {
    const cp = ((c0 & 0x0f) << 12) | (((b[pos + 1] as number) & 0x3f) << 6) | ((b[pos + 2] as number) & 0x3f);
    return trail(1) && trail(2) && cp >= 0x800 && valid(cp) ? 3 : 0;
  }
  if (n >= 4 && (c0 & 0xf8) === 0xf0) {
    const cp =
      ((c0 & 0x07) << 18) |
      (((b[pos + 1] as number) & 0x3f) << 12) |
      (((b[pos + 2] as number) & 0x3f) << 6) |
      ((b[pos + 3] as number) & 0x3f);
    return trail(1) && trail(2) && trail(3) && cp >= 0x10000 && valid(cp) ? 4 : 0;
  }
  return 0;
}

/** SentencePiece's byte-run decode: each well-formed character as is, U+FFFD for every byte that starts none. */
export function decodeBytesPerChar(b: Uint8Array): string {
  let out = "";
  let pos = 0;
  while (pos < b.length) {
    const n = utf8CharLen(b, pos);
    if (n === 0) {
      out += "\uFFFD";
      pos += 1;
    } else {
      out += lenientUtf8.decode(b.subarray(pos, pos + n));
      pos += n;
    }
  }
  return out;
}
