// Reading sample files: a JSON array or JSON Lines, UTF-8 (a BOM is stripped and counted), CRLF or LF.
// Every record keeps its origin: the file, the 1-based line (the JSONL line, or the line where an array
// element starts: every element of a minified one-line array is on line 1) and `sample`, the record's
// 0-based index in its file, which is what identifies a record. Malformed records are all reported at
// once; with `skipBadLines` they are skipped, and each skip is returned so that nothing is ever dropped
// silently.
//
// Files are streamed: `scanRecords` reads a few MiB at a time and hands out batches of raw records (their
// bytes, line and index), so a file of any size is read in bounded memory and never held as one string.
// The bytes are checked to be UTF-8 as they pass; a JSON array is cut into elements by bracket depth.
// `parseRecord` turns one raw record into a value or a located problem; `readSamples` does both for small
// files (tests, `lorakit tokenize`).// The records and their parsing are in record.ts, the streaming in scan.ts.
import { LorakitError } from "../errors.js";
import {
  type BadRecord,
  checkWholeObject,
  ProblemList,
  parseRecord,
  type RawRecord,
  type ReadResult,
} from "./record.js";
import { type RecordBatch, type ScanOptions, scanRecords } from "./scan.js";

export {
  type BadRecord,
  checkWholeObject,
  errorFromList,
  type FileInfo,
  MAX_DEPTH,
  MAX_LISTED,
  type Origin,
  ProblemList,
  parseRecord,
  type RawRecord,
  type ReadResult,
  type SkippedLine,
} from "./record.js";
export { type FileEnd, type RecordBatch, type ScanOptions, scanRecords } from "./scan.js";

/** Decodes and parses the records of a batch (`parseRecord` for each). */
export function parseBatch(batch: RecordBatch, file: string): (RawRecord | BadRecord)[] {
  const out: (RawRecord | BadRecord)[] = [];
  const buf = Buffer.from(batch.bytes.buffer, batch.bytes.byteOffset, batch.bytes.byteLength);
  const s = batch.spans;
  for (let k = 0; k < batch.count; k++) {
    const text = buf.toString("utf8", s[4 * k], s[4 * k + 1]);
    out.push(parseRecord(text, batch.kind, file, s[4 * k + 2] as number, s[4 * k + 3] as number));
  }
  return out;
}

export const isBad = (r: RawRecord | BadRecord): r is BadRecord => "error" in r;

export interface ReadOptions {
  skipBadLines?: boolean;
  /** How the files are read (sizes of reads and batches; the records are the same whatever they are). */
  scan?: ScanOptions;
}

/** The error for a file with no records. */
export function emptyFile(file: string): LorakitError {
  return new LorakitError("DATA_EMPTY_FILE", "the data file holds no records", {
    where: { file },
    hint: "Point data.train at a JSON array or a JSONL file with at least one sample.",
  });
}

/** Read one or more sample files. Throws one LorakitError listing every malformed record unless skipBadLines. */
export function readSamples(files: readonly string[], opts: ReadOptions = {}): ReadResult {
  const result: ReadResult = { records: [], skipped: [], files: [], bomFiles: 0 };
  const errors = new ProblemList();
  let bad = 0;
  for (const ev of scanRecords(files, { ...opts.scan, hash: true })) {
    const file = files[ev.fileIndex] as string;
    if (ev.type === "batch") {
      for (const r of parseBatch(ev, file)) {
        if (!isBad(r)) result.records.push(r);
        else if (opts.skipBadLines) result.skipped.push({ ...r.origin, reason: r.reason });
        else errors.push(r.error);
        if (isBad(r)) bad++;
      }
      continue;
    }
    if (ev.info.kind === "jsonl" && bad > 0) checkWholeObject(file, ev.info.bytes);
    if (ev.info.records === 0) errors.push(emptyFile(file));
    if (ev.info.bom) result.bomFiles++;
    result.files.push({ ...ev.info, records: ev.info.records - bad });
    bad = 0;
  }
  const error = errors.error();
  if (error) throw error;
  return result;
}
