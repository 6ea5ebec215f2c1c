// SentencePiece's normalizer, byte for byte: the precompiled charsmap (a darts-clone double-array trie of
// byte prefixes → replacement strings; empty for `identity`), user-defined pieces passed through untouched,
// extra-whitespace removal, the dummy prefix and the escape of " " as "▁". Works on UTF-8 bytes like the
// C++ library so that malformed input and longest-prefix rules come out the same.
import { LorakitError } from "../../errors.js";
import type { NormalizerSpec } from "./protobuf.js";
import { lenientUtf8, utf8CharLen, utf8Encoder } from "./utf8.js";

const SPACE_SYMBOL = new Uint8Array([0xe2, 0x96, 0x81]); // U+2581 ▁
const REPLACEMENT = new Uint8Array([0xef, 0xbf, 0xbd]); // U+FFFD
const SPACE = new Uint8Array([0x20]);

/** A byte trie over user-defined pieces: longest match wins. */
class PrefixMatcher {
  private readonly root = new Map<number, TrieNode>();
  readonly empty: boolean;

  constructor(words: readonly string[]) {
    for (const w of words) {
      let level = this.root;
      let node: TrieNode | undefined;
      for (const byte of utf8Encoder.encode(w)) {
        node = level.get(byte);
        if (!node) {
          node = { end: false, next: new Map() };
          level.set(byte, node);
        }
        level = node.next;
      }
      if (node) node.end = true;
    }
    this.empty = this.root.size === 0;
  }

  /** Length in bytes of the longest piece starting at `pos`, 0 when none. */
  match(b: Uint8Array, pos: number, end: number): number {
    let level = this.root;
    let best = 0;
    for (let i = pos; i < end; i++) {
      const node = level.get(b[i] as number);
      if (!node) break;
      if (node.end) best = i + 1 - pos;
      level = node.next;
    }
    return best;
  }
}

interface TrieNode {
  end: boolean;
  next: Map<number, TrieNode>;
}

/** The precompiled charsmap: `<trie size u32 LE><double array units><NUL-terminated replacements>`. */
class CharsMap {
  private readonly units: Uint32Array;
  private readonly normalized: Uint8Array;

  constructor(blob: Uint8Array, file: string) {
    const view = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
    if (blob.length <= 4) throw badCharsmap(file, "blob is too short");
    const trieSize = view.getUint32(0, true);
    if (trieSize >= blob.length || trieSize % 4 !== 0) throw badCharsmap(file, "trie size exceeds the blob");
    this.units = new Uint32Array(trieSize / 4);
    for (let i = 0; i < this.units.length; i++) this.units[i] = view.getUint32(4 + i * 4, true);
    this.normalized = blob.subarray(4 + trieSize);
  }

  /** darts-clone commonPrefixSearch, keeping the longest hit: [replacement, consumed bytes] or undefined. */
  longest(b: Uint8Array, pos: number, end: number): [Uint8Array, number] | undefined {
    const units = this.units;
    let nodePos = 0;
    let unit = units[0] as number;
    nodePos ^= offset(unit);
    let bestLen = 0;
    let bestValue = 0;
    for (let i = pos; i < end; i++) {
      const c = b[i] as number;
      nodePos ^= c;
      if (nodePos < 0 || nodePos >= units.length) break;
      unit = units[nodePos] as number;
      if ((unit & 0x800000ff) >>> 0 !== c) break; // label
      nodePos ^= offset(unit);
      if ((unit >>> 8) & 1) {
        // has_leaf: the value lives in the unit at nodePos
        bestLen = i + 1 - pos;
        bestValue = (units[nodePos] as number) & 0x7fffffff;
      }
    }
    if (bestLen === 0) return undefined;
    let stop = bestValue;
    while (stop < this.normalized.length && this.normalized[stop] !== 0) stop++;
    return [this.normalized.subarray(bestValue, stop), bestLen];
  }
}

function offset(unit: number): number {
  return ((unit >>> 10) << ((unit & (1 << 9)) >>> 6)) >>> 0;
}

function badCharsmap(file: string, why: string): LorakitError {
  return new LorakitError("TOKENIZER_BAD_MODEL", `${file}: the normalizer's precompiled charsmap is broken (${why})`, {
    where: { file, key: "normalizer_spec.precompiled_charsmap" },
    hint: "re-export the tokenizer or provide tokenizer.json",
  });
}

class ByteBuilder {
  buf = new Uint8Array(256);
  length = 0;

  push(bytes: Uint8Array, from = 0, to = bytes.length): void {
    const n = to - from;
    if (this.length + n > this.buf.length) {
      const next = new Uint8Array(Math.max(this.buf.length * 2, this.length + n));
      next.set(this.buf.subarray(0, this.length));
      this.buf = next;
    }
    this.buf.set(bytes.subarray(from, to), this.length);
    this.length += n;
  }

  endsWith(tail: Uint8Array): boolean {
    if (this.length < tail.length) return false;
    for (let i = 0; i < tail.length; i++) if (this.buf[this.length - tail.length + i] !== tail[i]) return false;
    return true;
  }
}

export class SentencePieceNormalizer {
  private readonly charsmap: CharsMap | undefined;
  private readonly matcher: PrefixMatcher;

  constructor(
    private readonly spec: NormalizerSpec,
    userDefined: readonly string[],
    file: string,
  ) {
    this.charsmap = spec.precompiledCharsmap.length > 0 ? new CharsMap(spec.precompiledCharsmap, file) : undefined;
    this.matcher = new PrefixMatcher(userDefined);
  }

  /** One normalization step at `pos`: [output bytes, input bytes consumed]. */
  private prefix(b: Uint8Array, pos: number, end: number): [Uint8Array, number] {
    if (!this.matcher.empty) {
      const n = this.matcher.match(b, pos, end);
      if (n > 0) return [b.subarray(pos, pos + n), n];
    }
    const hit = this.charsmap?.longest(b, pos, end);
    if (hit) return hit;
    const n = utf8CharLen(b, pos, end);
    return n === 0 ? [REPLACEMENT, 1] : [b.subarray(pos, pos + n), n];
  }

  normalize(text: string): string {
    if (text.length === 0) return "";
    if (!this.charsmap && this.matcher.empty) return this.identity(text);
    const spec = this.spec;
    const b = utf8Encoder.encode(text);
    const end = b.length;
    let pos = 0;
    if (spec.removeExtraWhitespaces) {
      while (pos < end) {
        const [out, n] = this.prefix(b, pos, end);
        if (!(out.length === 1 && out[0] === 0x20)) break;
        pos += n;
      }
    }
    if (pos === end) return "";
    const out = new ByteBuilder();
    const ws = spec.escapeWhitespaces ? SPACE_SYMBOL : SPACE;
    if (spec.addDummyPrefix) out.push(ws);
    let isPrevSpace = spec.removeExtraWhitespaces;
    while (pos < end) {
      const [sp, n] = this.prefix(b, pos, end);
      let i = 0;
      if (isPrevSpace) while (i < sp.length && sp[i] === 0x20) i++;
      if (i < sp.length) {
        let run = i;
        for (let j = i; j < sp.length; j++) {
          if (spec.escapeWhitespaces && sp[j] === 0x20) {
            out.push(sp, run, j);
            out.push(SPACE_SYMBOL);
            run = j + 1;
          }
        }
        out.push(sp, run, sp.length);
        isPrevSpace = sp[sp.length - 1] === 0x20;
      }
      pos += n;
      if (!spec.removeExtraWhitespaces) isPrevSpace = false;
    }
    if (spec.removeExtraWhitespaces) {
      while (out.endsWith(ws)) out.length -= ws.length;
    }
    return lenientUtf8.decode(out.buf.subarray(0, out.length));
  }

  /**
   * The same steps on the string itself when nothing maps characters (`identity`, no user-defined pieces,
   * ChatGLM3's case): a lone surrogate is U+FFFD (what the UTF-8 round trip makes of it), runs of " " are
   * one, the ends are trimmed (the end of the result, dummy prefix and a typed "▁" included, as above).
   */
  private identity(text: string): string {
    const spec = this.spec;
    let t = SURROGATE.test(text) ? text.replace(LONE_SURROGATE, "\uFFFD") : text;
    if (spec.removeExtraWhitespaces) {
      t = t.replace(SPACES, " ");
      const a = t.charCodeAt(0) === 0x20 ? 1 : 0;
      if (a === t.length) return "";
      t = t.slice(a);
    }
    const ws = spec.escapeWhitespaces ? "\u2581" : " ";
    if (spec.escapeWhitespaces) t = t.replaceAll(" ", ws);
    if (spec.addDummyPrefix) t = ws + t;
    if (spec.removeExtraWhitespaces) {
      let end = t.length;
      while (end > 0 && t.charCodeAt(end - 1) === ws.charCodeAt(0)) end--;
      t = t.slice(0, end);
    }
    return t;
  }
}

const SURROGATE = /[\uD800-\uDFFF]/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;
const SPACES = / {2,}/g;
