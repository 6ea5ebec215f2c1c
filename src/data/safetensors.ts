// The safetensors format, written and read by our own code: 8 bytes little-endian header length, a
// JSON header ({name: {dtype, shape, data_offsets}}, optional `__metadata__` of strings) padded with
// spaces so the data starts 8-byte aligned, then the tensors' bytes, contiguous, in header order.
import { closeSync, openSync, readFileSync, readSync, statSync, writeSync } from "node:fs";
import os from "node:os";
import { LorakitError } from "../errors.js";
import { HashedFile } from "../files/atomic.js";

export type Dtype = "I32" | "I64" | "F32";
export type TensorData = Int32Array | BigInt64Array | Float32Array;

export interface Tensor {
  dtype: Dtype;
  shape: number[];
  data: TensorData;
}

const SIZE: Record<Dtype, number> = { I32: 4, I64: 8, F32: 4 };

function dtypeOf(data: TensorData): Dtype {
  if (data instanceof Int32Array) return "I32";
  if (data instanceof BigInt64Array) return "I64";
  return "F32";
}

function checkEndianness(): void {
  if (os.endianness() !== "LE") throw new Error("safetensors needs a little-endian machine");
}

/** A 1-D tensor of the typed array's dtype. */
export function flat(data: TensorData): Tensor {
  return { dtype: dtypeOf(data), shape: [data.length], data };
}

/** A tensor whose bytes were written to a file of their own (a spool), copied into place when written. */
export interface SpooledTensor {
  dtype: Dtype;
  shape: number[];
  /** The file holding the tensor's bytes, little-endian, nothing else. */
  file: string;
}

const isSpooled = (t: Tensor | SpooledTensor): t is SpooledTensor => "file" in t;

/**
 * Write tensors (wider dtypes first, so every tensor starts aligned to its element size). A spooled
 * tensor's bytes are copied from its file in pieces, so the result does not depend on where they were. The
 * file is synced; its size and sha256 (hashed as it is written, for SHA256SUMS) are returned.
 */
export function writeSafetensors(
  file: string,
  tensors: Record<string, Tensor | SpooledTensor>,
  metadata?: Record<string, string>,
): { bytes: number; sha256: string } {
  checkEndianness();
  const names = Object.keys(tensors).sort((a, b) => {
    const d = SIZE[(tensors[b] as Tensor).dtype] - SIZE[(tensors[a] as Tensor).dtype];
    return d !== 0 ? d : a < b ? -1 : a > b ? 1 : 0;
  });
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const name of names) {
    const t = tensors[name] as Tensor | SpooledTensor;
    const count = t.shape.reduce((a, b) => a * b, 1);
    let bytes: number;
    if (isSpooled(t)) {
      bytes = statSync(t.file).size;
      if (bytes !== count * SIZE[t.dtype])
        throw new Error(
          `tensor ${name}: shape ${JSON.stringify(t.shape)} needs ${count * SIZE[t.dtype]} bytes, ${t.file} has ${bytes}`,
        );
    } else {
      if (dtypeOf(t.data) !== t.dtype) throw new Error(`tensor ${name}: data is not ${t.dtype}`);
      if (count !== t.data.length)
        throw new Error(
          `tensor ${name}: shape ${JSON.stringify(t.shape)} holds ${count} values, data ${t.data.length}`,
        );
      bytes = t.data.byteLength;
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = Buffer.from(JSON.stringify(header), "utf8");
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const out = new HashedFile(file);
  try {
    out.write(len);
    out.write(json);
    for (const name of names) {
      const t = tensors[name] as Tensor | SpooledTensor;
      if (isSpooled(t)) copyInto(out, t.file);
      else out.write(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    }
    return out.finish();
  } finally {
    out.close();
  }
}

/** Large buffers in pieces: writeSync may write fewer bytes than asked. */
export function writeAll(fd: number, view: Uint8Array): void {
  let at = 0;
  while (at < view.length) at += writeSync(fd, view, at, Math.min(view.length - at, 1 << 30));
}

function copyInto(out: HashedFile, from: string): void {
  const src = openSync(from, "r");
  try {
    const buf = Buffer.allocUnsafe(8 << 20);
    for (;;) {
      const n = readSync(src, buf, 0, buf.length, null);
      if (n === 0) break;
      out.write(buf.subarray(0, n));
    }
  } finally {
    closeSync(src);
  }
}

export interface SafetensorsFile {
  tensors: Record<string, Tensor>;
  metadata: Record<string, string>;
}

/** A file that is not the safetensors this reader takes: the error names the file, the byte offset and the tensor. */
function bad(file: string, what: string, offset: number, key?: string): LorakitError {
  return new LorakitError("SAFETENSORS_INVALID", `${file} is not a valid safetensors file: ${what}`, {
    where: { file, offset, ...(key !== undefined ? { key } : {}) },
    hint: "The file is damaged or incomplete (a Git LFS pointer is not the file): write it again (for prepared data, delete its folder and prepare again).",
  });
}

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
/** A header value as the message shows it (an absent one as "none"). */
function shown(v: unknown): string {
  if (v === undefined) return "none";
  try {
    const s = JSON.stringify(v);
    return s.length > 80 ? `${s.slice(0, 79)}…` : s;
  } catch {
    return "a value nested too deep to show";
  }
}

export function readSafetensors(file: string): SafetensorsFile {
  checkEndianness();
  let buf: Buffer;
  try {
    buf = readFileSync(file);
  } catch (e) {
    throw new LorakitError("SAFETENSORS_INVALID", `cannot read ${file}: ${(e as Error).message}`, {
      where: { file },
      hint: "Check that the file exists and is readable.",
    });
  }
  if (buf.length < 8) throw bad(file, `${buf.length} bytes, too short for the 8-byte header length`, 0);
  const big = buf.readBigUInt64LE(0);
  if (big > BigInt(buf.length - 8))
    throw bad(file, `the header length ${big} runs past the end (${buf.length} bytes)`, 0);
  const n = Number(big);
  const base = 8 + n;
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(buf.subarray(8, base));
  } catch {
    throw bad(file, "the header is not UTF-8", 8);
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    const at = /position (\d+)/.exec((e as Error).message);
    throw bad(
      file,
      `the header is not JSON (${(e as Error).message})`,
      8 + Buffer.byteLength(text.slice(0, Number(at?.[1] ?? 0))),
    );
  }
  if (!header || typeof header !== "object" || Array.isArray(header))
    throw bad(file, "the header is not a JSON object", 8);
  const out: SafetensorsFile = { tensors: {}, metadata: {} };
  for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (!v || typeof v !== "object" || Array.isArray(v) || !Object.values(v).every((x) => typeof x === "string"))
        throw bad(file, "`__metadata__` is not a map of strings", 8, name);
      out.metadata = v as Record<string, string>;
      continue;
    }
    const t = (v ?? {}) as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const { dtype, shape, data_offsets: offsets } = t;
    if (typeof dtype !== "string" || !(dtype in SIZE))
      throw bad(
        file,
        `tensor ${JSON.stringify(name)} has the dtype ${shown(dtype)} (this reader takes I32, I64, F32)`,
        8,
        name,
      );
    if (!Array.isArray(shape) || !shape.every(isCount))
      throw bad(file, `tensor ${JSON.stringify(name)} has the shape ${shown(shape)}`, 8, name);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount))
      throw bad(file, `tensor ${JSON.stringify(name)} has the data_offsets ${shown(offsets)}`, 8, name);
    const [a, b] = offsets as [number, number];
    if (a > b || base + b > buf.length)
      throw bad(
        file,
        `tensor ${JSON.stringify(name)}'s bytes [${a}, ${b}) are not inside the file's ${buf.length - base} data bytes`,
        8,
        name,
      );
    const size = SIZE[dtype as Dtype];
    const count = (shape as number[]).reduce((x, y) => x * y, 1);
    if (count * size !== b - a)
      throw bad(
        file,
        `tensor ${JSON.stringify(name)} of shape ${shown(shape)} needs ${count * size} bytes, its offsets hold ${b - a}`,
        base + a,
        name,
      );
    // Copy into an aligned buffer (the file's bytes are only aligned when the writer aligned them).
    const bytes = new Uint8Array(b - a);
    bytes.set(buf.subarray(base + a, base + b));
    const data =
      dtype === "I32"
        ? new Int32Array(bytes.buffer)
        : dtype === "I64"
          ? new BigInt64Array(bytes.buffer)
          : new Float32Array(bytes.buffer);
    out.tensors[name] = { dtype: dtype as Dtype, shape: shape as number[], data };
  }
  return out;
}
