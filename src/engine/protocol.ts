// The JSON Schema export of the boundary (protocol/*.schema.json) and the parsers the product
// uses on what the engine writes.
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { z } from "zod";
import { Event, PROTOCOL } from "../config/schema.js";

export function protocolSchemas(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, schema] of Object.entries(PROTOCOL)) {
    // The run config is what people write, so its schema describes the input side (defaults optional).
    const io = name === "run-config" ? "input" : "output";
    const json = z.toJSONSchema(schema, { io, target: "draft-2020-12" });
    out[`${name}.schema.json`] = `${JSON.stringify({ title: `lorakit ${name}`, ...json }, null, 2)}\n`;
  }
  return out;
}

/** Names of the files under `dir` that differ from the schema (empty when up to date). */
export async function staleProtocolFiles(dir: string): Promise<string[]> {
  const stale: string[] = [];
  for (const [file, text] of Object.entries(protocolSchemas())) {
    const onDisk = await readFile(path.join(dir, file), "utf8").catch(() => null);
    if (onDisk !== text) stale.push(file);
  }
  return stale;
}

export async function writeProtocol(dir: string): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const files = protocolSchemas();
  for (const [file, text] of Object.entries(files)) await writeFile(path.join(dir, file), text);
  return Object.keys(files);
}

/** Parses one line of engine output; a line that is not an event is returned as null. */
export function parseEventLine(line: string): Event | null {
  const trimmed = line.trim();
  if (!trimmed.startsWith("{")) return null;
  let raw: unknown;
  try {
    raw = JSON.parse(trimmed);
  } catch {
    return null;
  }
  const parsed = Event.safeParse(raw);
  return parsed.success ? parsed.data : null;
}
