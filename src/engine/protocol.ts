// What the product exports for the engine under protocol/ — the JSON Schema of the boundary
// (*.schema.json), the code catalogue (findings.json) and the family registry (families.json) — and
// the parser the product uses on what the engine writes.
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { z } from "zod";
import { Event, PROTOCOL } from "../config/schema.js";
import { findingsJson } from "../findings/index.js";
import { familiesJson } from "../models/families.js";

const jsonText = (value: unknown) => `${JSON.stringify(value, null, 2)}\n`;

/** Every file under protocol/, by name, as it should read. */
export function protocolFiles(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, schema] of Object.entries(PROTOCOL)) {
    // The run config is what people write, so its schema describes the input side (defaults optional).
    const io = name === "run-config" ? "input" : "output";
    const json = z.toJSONSchema(schema, { io, target: "draft-2020-12" });
    out[`${name}.schema.json`] = jsonText({ title: `lorakit ${name}`, ...json });
  }
  out["findings.json"] = jsonText(findingsJson());
  out["families.json"] = jsonText(familiesJson());
  return out;
}

/** Names of the files under `dir` that differ from what protocolFiles() says (empty when up to date). */
export async function staleProtocolFiles(dir: string): Promise<string[]> {
  const stale: string[] = [];
  for (const [file, text] of Object.entries(protocolFiles())) {
    const onDisk = await readFile(path.join(dir, file), "utf8").catch(() => null);
    if (onDisk !== text) stale.push(file);
  }
  return stale;
}

export async function writeProtocol(dir: string): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const files = protocolFiles();
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
