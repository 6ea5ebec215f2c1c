// The safetensors format, written and read by our own code: 8 bytes little-endian header length, a
// JSON header ({name: {dtype, shape, data_offsets}}, optional `__metadata__` of strings) padded with
// spaces so the data starts 8-byte aligned, then the tensors' bytes, contiguous, in header order.
import { closeSync, openSync, readFileSync, readSync, statSync, writeSync } from "node:fs";
import os from "node:os";

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
 * tensor's bytes are copied from its file in pieces, so the result does not depend on where they were.
 */
export function writeSafetensors(
  file: string,
  tensors: Record<string, Tensor | SpooledTensor>,
  metadata?: Record<string, string>,
): void {
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
  const fd = openSync(file, "w");
  try {
    writeAll(fd, len);
    writeAll(fd, json);
    for (const name of names) {
      const t = tensors[name] as Tensor | SpooledTensor;
      if (isSpooled(t)) copyInto(fd, t.file);
      else writeAll(fd, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    }
  } finally {
    closeSync(fd);
  }
}

/** Large buffers in pieces: writeSync may write fewer bytes than asked. */
export function writeAll(fd: number, view: Uint8Array): void {
  let at = 0;
  while (at < view.length) at += writeSync(fd, view, at, Math.min(view.length - at, 1 << 30));
}

function copyInto(fd: number, from: string): void {
  const src = openSync(from, "r");
  try {
    const buf = Buffer.allocUnsafe(8 << 20);
    for (;;) {
      const n = readSync(src, buf, 0, buf.length, null);
      if (n === 0) break;
      writeAll(fd, buf.subarray(0, n));
    }
  } finally {
    closeSync(src);
  }
}

export interface SafetensorsFile {
  tensors: Record<string, Tensor>;
  metadata: Record<string, string>;
}

export function readSafetensors(file: string): SafetensorsFile {
  checkEndianness();
  const buf = readFileSync(file);
  if (buf.length < 8) throw new Error(`${file}: too short for safetensors`);
  const n = Number(buf.readBigUInt64LE(0));
  if (8 + n > buf.length) throw new Error(`${file}: header length ${n} runs past the end`);
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, unknown>;
  const base = 8 + n;
  const out: SafetensorsFile = { tensors: {}, metadata: (header.__metadata__ as Record<string, string>) ?? {} };
  for (const [name, v] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const { dtype, shape, data_offsets } = v as { dtype: Dtype; shape: number[]; data_offsets: [number, number] };
    const [a, b] = data_offsets;
    if (!(dtype in SIZE)) throw new Error(`${file}: tensor ${name} has unsupported dtype ${dtype}`);
    if (base + b > buf.length || a > b) throw new Error(`${file}: tensor ${name} offsets out of range`);
    // Copy into an aligned buffer (the file's bytes are only aligned when the writer aligned them).
    const bytes = new Uint8Array(b - a);
    bytes.set(buf.subarray(base + a, base + b));
    const data =
      dtype === "I32"
        ? new Int32Array(bytes.buffer)
        : dtype === "I64"
          ? new BigInt64Array(bytes.buffer)
          : new Float32Array(bytes.buffer);
    out.tensors[name] = { dtype, shape, data };
  }
  return out;
}
