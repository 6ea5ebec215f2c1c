// Sample files streamed: `scanRecords` reads a few MiB at a time and hands out batches of raw records (their
// bytes, line and index), so a file of any size is read in bounded memory and never held as one string.
// The bytes are checked to be UTF-8 as they pass; a JSON array is cut into elements by bracket depth.
import { isUtf8 } from "node:buffer";
import { createHash, type Hash } from "node:crypto";
import { closeSync, openSync, readSync } from "node:fs";
import { LorakitError } from "../errors.js";
import { type FileInfo, lineAt } from "./record.js";

const NOT_FOUND_HINT = "Check data.train / data.eval; relative paths resolve against the config file.";

/** A batch of raw records of one file: their bytes and, per record, start, end (into `bytes`), line, sample. */
export interface RecordBatch {
  type: "batch";
  fileIndex: number;
  kind: "json" | "jsonl";
  bytes: Uint8Array;
  spans: Int32Array;
  count: number;
  /** File bytes consumed so far (progress). */
  offset: number;
}

/** The end of a file: what was found in it. */
export interface FileEnd {
  type: "end";
  fileIndex: number;
  info: FileInfo;
}

export interface ScanOptions {
  /** Records per batch (at most). */
  batchRecords?: number;
  /** Bytes per batch (about; one record may be larger). */
  batchBytes?: number;
  /** Bytes read at a time. */
  readBytes?: number;
  /** Compute each file's sha256 while reading (otherwise FileInfo.sha256 is ""). */
  hash?: boolean;
}

/** DATA_NOT_FOUND for a data file that cannot be opened or read. */
export function notFound(file: string, e: unknown): LorakitError {
  return new LorakitError("DATA_NOT_FOUND", `cannot read the data file: ${(e as Error).message}`, {
    where: { file },
    hint: NOT_FOUND_HINT,
  });
}

const isAsciiSpace = (c: number) => c === 0x20 || (c >= 0x09 && c <= 0x0d);
/** JSON.parse's whitespace: what the array scanner steps over between tokens. */
const isJsonSpace = (c: number) => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;

/** Reads one file in pieces into a growing window; `start` is the file offset of buf[0]. */
class Window {
  buf: Buffer;
  len = 0;
  start = 0;
  eof = false;
  private readonly fd: number;
  private readonly hash: Hash | undefined;

  constructor(
    readonly file: string,
    readBytes: number,
    hash: boolean,
  ) {
    try {
      this.fd = openSync(file, "r");
    } catch (e) {
      throw notFound(file, e);
    }
    this.buf = Buffer.allocUnsafe(readBytes);
    this.hash = hash ? createHash("sha256") : undefined;
  }

  /** Reads more bytes after `len`, first dropping the bytes before `keep` (false at the end of the file). */
  more(keep: number): boolean {
    if (this.eof) return false;
    if (keep > 0) {
      this.buf.copy(this.buf, 0, keep, this.len);
      this.len -= keep;
      this.start += keep;
    }
    if (this.len === this.buf.length) {
      const bigger = Buffer.allocUnsafe(this.buf.length * 2);
      this.buf.copy(bigger, 0, 0, this.len);
      this.buf = bigger;
    }
    let n: number;
    try {
      n = readSync(this.fd, this.buf, this.len, this.buf.length - this.len, null);
    } catch (e) {
      throw notFound(this.file, e);
    }
    if (n === 0) {
      this.eof = true;
      return false;
    }
    this.hash?.update(this.buf.subarray(this.len, this.len + n));
    this.len += n;
    return true;
  }

  digest(): string {
    return this.hash ? this.hash.digest("hex") : "";
  }

  close(): void {
    closeSync(this.fd);
  }
}

/**
 * Streams the records of the given files, in order: batches of raw records, then one `end` per file.
 * Throws at once (LorakitError) for a missing file, bytes that are not UTF-8, or a JSON array whose
 * structure is broken; problems inside a record are for `parseRecord`.
 */
export function* scanRecords(files: readonly string[], opts: ScanOptions = {}): Generator<RecordBatch | FileEnd> {
  for (let i = 0; i < files.length; i++) yield* scanFile(files[i] as string, i, opts);
}

/**
 * Gathers records into a batch. The batch's bytes are the window's region [start, cut): every byte of the
 * file passes through a region once and is checked to be UTF-8 there (a cut always falls between
 * characters: after a line end, a comma, or before an element).
 */
class Batcher {
  start: number;
  private line: number;
  private spans: Int32Array;
  count = 0;
  records = 0;

  constructor(
    private readonly w: Window,
    private readonly fileIndex: number,
    private readonly kind: "json" | "jsonl",
    private readonly max: number,
    start: number,
    line: number,
  ) {
    this.start = start;
    this.line = line;
    this.spans = new Int32Array(max * 4);
  }

  add(start: number, end: number, line: number): void {
    const k = 4 * this.count++;
    this.spans[k] = start;
    this.spans[k + 1] = end;
    this.spans[k + 2] = line;
    this.spans[k + 3] = this.records++;
  }

  /** The region up to `cut` (checked), as a batch when it holds records; the next region starts there. */
  take(cut: number, lineAtCut: number): RecordBatch | undefined {
    const bytes = this.w.buf.subarray(this.start, cut);
    if (!isUtf8(bytes)) throw badEncoding(this.w.file, bytes, this.line);
    let out: RecordBatch | undefined;
    if (this.count > 0) {
      const own = new Uint8Array(bytes.length);
      own.set(bytes);
      const spans = this.spans.subarray(0, 4 * this.count);
      for (let k = 0; k < spans.length; k += 4) {
        spans[k] = (spans[k] as number) - this.start;
        spans[k + 1] = (spans[k + 1] as number) - this.start;
      }
      out = {
        type: "batch",
        fileIndex: this.fileIndex,
        kind: this.kind,
        bytes: own,
        spans,
        count: this.count,
        offset: this.w.start + cut,
      };
      this.spans = new Int32Array(this.max * 4);
    }
    this.count = 0;
    this.start = cut;
    this.line = lineAtCut;
    return out;
  }

  /** How far the window moved in the last `more` (positions into it shift back by this much). */
  moved = 0;

  /** Reads more of the file, dropping the bytes before the region; false at the end of the file. */
  more(): boolean {
    const before = this.w.start;
    const got = this.w.more(this.start);
    this.moved = this.w.start - before;
    this.start -= this.moved;
    return got;
  }

  /** Before a structural error: the rest of the file must be UTF-8 too (that problem is named first). */
  checkRest(): void {
    const decoder = new TextDecoder("utf-8", { fatal: true });
    for (;;) {
      const bytes = this.w.buf.subarray(this.start, this.w.len);
      try {
        decoder.decode(bytes, { stream: true });
      } catch {
        throw badEncoding(this.w.file, bytes, this.line);
      }
      for (const b of bytes) if (b === 0x0a) this.line++;
      this.start = this.w.len;
      if (!this.more()) break;
    }
    try {
      decoder.decode();
    } catch {
      throw badEncoding(this.w.file, new Uint8Array([0xff]), this.line);
    }
  }
}

function* scanFile(file: string, fileIndex: number, opts: ScanOptions): Generator<RecordBatch | FileEnd> {
  const batchRecords = opts.batchRecords ?? 512;
  const batchBytes = opts.batchBytes ?? 1 << 20;
  const w = new Window(file, opts.readBytes ?? 4 << 20, opts.hash ?? false);
  try {
    // The byte order mark, then the first character that is not whitespace: `[` makes a JSON array.
    while (w.len < 3 && w.more(0));
    const bom = w.len >= 3 && w.buf[0] === 0xef && w.buf[1] === 0xbb && w.buf[2] === 0xbf;
    const first = bom ? 3 : 0;
    let pos = first;
    let line = 1;
    let kind: "json" | "jsonl" = "jsonl";
    for (;;) {
      if (pos >= w.len && !w.more(0)) break;
      if (pos >= w.len) continue;
      const c = w.buf[pos] as number;
      if (isAsciiSpace(c)) {
        if (c === 0x0a) line++;
        pos++;
        continue;
      }
      if (c < 0x80) {
        kind = c === 0x5b ? "json" : "jsonl";
        break;
      }
      // A non-ASCII character: whitespace to JavaScript (U+3000, U+00A0, …) is stepped over like a space.
      while (w.len - pos < 4 && w.more(0));
      const ch = String.fromCodePoint(w.buf.toString("utf8", pos, Math.min(w.len, pos + 4)).codePointAt(0) as number);
      if (!/\s/.test(ch)) break;
      pos += Buffer.byteLength(ch);
    }
    let records: number;
    if (kind === "jsonl") {
      const b = new Batcher(w, fileIndex, kind, batchRecords, first, 1);
      yield* scanLines(w, b, batchRecords, batchBytes);
      records = b.records;
    } else {
      const b = new Batcher(w, fileIndex, kind, batchRecords, pos, line);
      yield* new ArrayScanner(file, pos + 1, line).run(w, b, batchRecords, batchBytes);
      records = b.records;
    }
    yield {
      type: "end",
      fileIndex,
      info: { path: file, sha256: w.digest(), bytes: w.start + w.len, kind, records, bom },
    };
  } finally {
    w.close();
  }
}

/** JSON Lines: one record per line that is not blank; a trailing "\r" is the line end's. */
function* scanLines(w: Window, b: Batcher, batchRecords: number, batchBytes: number): Generator<RecordBatch> {
  let pos = b.start;
  let line = 1;
  for (;;) {
    let nl = w.buf.indexOf(0x0a, pos);
    if (nl < 0 || nl >= w.len) {
      // An incomplete last line: the batch so far goes out, then the window moves on.
      const out = b.take(pos, line);
      if (out) yield out;
      const got = b.more();
      pos -= b.moved;
      if (got) continue;
      if (pos >= w.len) return;
      nl = w.len;
    }
    const end = nl > pos && w.buf[nl - 1] === 0x0d ? nl - 1 : nl;
    if (!blank(w.buf, pos, end)) b.add(pos, end, line);
    line++;
    pos = Math.min(nl + 1, w.len);
    if (b.count >= batchRecords || pos - b.start >= batchBytes) {
      const out = b.take(pos, line);
      if (out) yield out;
    }
  }
}

/** A JSONL line that holds only whitespace (JavaScript's, as `trim` sees it) is skipped. */
function blank(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = buf[i] as number;
    if (c >= 0x80) return buf.toString("utf8", start, end).trim() === "";
    if (!isAsciiSpace(c)) return false;
  }
  return true;
}

function badEncoding(file: string, bytes: Uint8Array, firstLine: number): LorakitError {
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("utf8");
  const at = text.indexOf("\uFFFD");
  return new LorakitError("DATA_BAD_ENCODING", "the file is not valid UTF-8", {
    where: { file, line: lineAt(text, Math.max(0, at), 0, firstLine) },
    hint: "Save the file as UTF-8 (e.g. `iconv -f gbk -t utf-8 in.json > out.json`).",
  });
}

/**
 * The elements of a JSON array, found by bracket depth byte by byte (strings skipped, escapes honoured):
 * `[a, b]` gives the spans of `a` and ` b` (an element ends at the comma or bracket that closes it).
 */
class ArrayScanner {
  private depth = 0;
  private start = -1;
  private startLine = 0;
  private inString = false;
  private escape = false;

  constructor(
    private readonly file: string,
    private pos: number,
    private line: number,
  ) {}

  private fail(b: Batcher, line: number, why: string): LorakitError {
    b.checkRest();
    return new LorakitError("DATA_BAD_JSON", `malformed JSON array: ${why}`, {
      where: { file: this.file, line },
      hint: "The file must be one JSON array of objects (or JSON Lines: one object per line).",
    });
  }

  *run(w: Window, b: Batcher, batchRecords: number, batchBytes: number): Generator<RecordBatch> {
    for (;;) {
      if (this.pos >= w.len) {
        // Out of bytes: the complete elements go out; an element in progress stays in the window.
        const out = this.start >= 0 ? b.take(this.start, this.startLine) : b.take(this.pos, this.line);
        if (out) yield out;
        const got = b.more();
        this.pos -= b.moved;
        if (this.start >= 0) this.start -= b.moved;
        if (!got) break;
        continue;
      }
      const c = w.buf[this.pos] as number;
      if (c === 0x0a) this.line++;
      if (this.inString) {
        if (this.escape) this.escape = false;
        else if (c === 0x5c) this.escape = true;
        else if (c === 0x22) this.inString = false;
        this.pos++;
        continue;
      }
      if (c === 0x22) {
        if (this.start < 0) [this.start, this.startLine] = [this.pos, this.line];
        this.inString = true;
        this.pos++;
        continue;
      }
      if (isJsonSpace(c)) {
        this.pos++;
        continue;
      }
      if (this.depth === 0 && (c === 0x2c || c === 0x5d)) {
        if (this.start >= 0) b.add(this.start, this.pos, this.startLine);
        else if (c === 0x2c || b.records > 0)
          throw this.fail(b, this.line, "an empty element (two commas, or a trailing comma)");
        this.start = -1;
        this.pos++;
        if (c === 0x5d) {
          const out = b.take(this.pos, this.line);
          if (out) yield out;
          this.tail(w, b);
          return;
        }
        if (b.count >= batchRecords || this.pos - b.start >= batchBytes) {
          const out = b.take(this.pos, this.line);
          if (out) yield out;
        }
        continue;
      }
      if (this.start < 0) [this.start, this.startLine] = [this.pos, this.line];
      if (c === 0x7b || c === 0x5b) this.depth++;
      else if (c === 0x7d || c === 0x5d) this.depth--;
      if (this.depth < 0) throw this.fail(b, this.line, `an unmatched '${String.fromCharCode(c)}'`);
      this.pos++;
    }
    if (this.inString) throw this.fail(b, this.startLine, "a string is never closed");
    throw this.fail(b, this.start >= 0 ? this.startLine : this.line, "the array is never closed with ]");
  }

  /** After the closing bracket only whitespace (JavaScript's, as `trim` sees it) may follow. */
  private tail(w: Window, b: Batcher): void {
    for (;;) {
      while (this.pos < w.len) {
        const c = w.buf[this.pos] as number;
        if (c >= 0x80) {
          // Non-ASCII: read the rest (checked to be UTF-8) and judge it as text.
          const line = this.line;
          b.more();
          this.pos -= b.moved;
          while (w.more(0));
          b.take(w.len, line);
          const rest = w.buf.toString("utf8", this.pos, w.len);
          const first = rest.trim()[0];
          if (first === undefined) return;
          throw this.fail(b, lineAt(rest, rest.indexOf(first), 0, line), "text after the closing ]");
        }
        if (!isAsciiSpace(c)) throw this.fail(b, this.line, "text after the closing ]");
        if (c === 0x0a) this.line++;
        this.pos++;
      }
      b.take(this.pos, this.line);
      const got = b.more();
      this.pos -= b.moved;
      if (!got) return;
    }
  }
}
