// One catalogue of codes: every code written in src/ or in the engine is in it (the doctor's CODES or
// ERRORS), once, under one name; the README's tables are generated from it and current.
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { catalogue, ERRORS, isCatalogued, RENAMED, withCatalogue } from "../src/doctor/catalogue.js";
import { CODES } from "../src/doctor/finding.js";
import { ENGINE_DIR, ROOT } from "../src/engine/python.js";

function files(dir: string, ext: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) return name === "__pycache__" ? [] : files(p, ext);
    return p.endsWith(ext) ? [p] : [];
  });
}

/** Every quoted UPPER_SNAKE word in the files, with where it is. */
function literals(paths: string[]): Map<string, string> {
  const found = new Map<string, string>();
  for (const file of paths) {
    const text = readFileSync(file, "utf8");
    for (const m of text.matchAll(/["'`]([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)["'`]/g)) {
      const line = text.slice(0, m.index).split("\n").length;
      if (!found.has(m[1] as string)) found.set(m[1] as string, `${path.relative(ROOT, file)}:${line}`);
    }
  }
  return found;
}

// Quoted UPPER_SNAKE words in the engine that are not codes: environment variables it reads or sets,
// nvml.h's error names, peft's task type.
const ENGINE_NOT_CODES = [
  /^LORAKIT_/,
  /^HF_/,
  /^TRANSFORMERS_/,
  /^TRITON_/,
  /^TORCH_/,
  /^PYTORCH_/,
  /^NCCL_/,
  /^NVML_ERROR_/,
  /^(CUDA_VISIBLE_DEVICES|NVIDIA_VISIBLE_DEVICES|WORLD_SIZE|LOCAL_WORLD_SIZE|LOCAL_RANK|MASTER_ADDR|MASTER_PORT)$/,
  /^CAUSAL_LM$/,
];

describe("the catalogue", () => {
  it("holds every code lorakit's TypeScript writes", () => {
    // The catalogue's own prose quotes environment names in Markdown; its codes are keys, not strings.
    const found = literals(files(path.join(ROOT, "src"), ".ts").filter((f) => !f.endsWith("catalogue.ts")));
    expect(found.size).toBeGreaterThan(90);
    const missing = [...found].filter(([code]) => !isCatalogued(code)).map(([c, at]) => `${c} (${at})`);
    expect(missing, "add them to ERRORS in src/doctor/catalogue.ts (or CODES in finding.ts)").toEqual([]);
  });

  it("holds every code the engine writes", () => {
    const found = literals(files(path.join(ENGINE_DIR, "lorakit_engine"), ".py"));
    const codes = [...found].filter(([w]) => !ENGINE_NOT_CODES.some((re) => re.test(w)));
    expect(codes.map(([c]) => c)).toEqual(expect.arrayContaining(["PLAN_INVALID", "ENGINE_CRASH", "CUDA_OOM"]));
    const missing = codes.filter(([code]) => !isCatalogued(code)).map(([c, at]) => `${c} (${at})`);
    expect(missing, "a code: add it to the catalogue; not a code (an environment name): to ENGINE_NOT_CODES").toEqual(
      [],
    );
  });

  it("has one name per case: findings and errors apart, renamed codes gone", () => {
    expect(Object.keys(ERRORS).filter((c) => c in CODES)).toEqual([]);
    for (const [from, to] of Object.entries(RENAMED)) {
      expect(isCatalogued(from), from).toBe(false);
      expect(isCatalogued(to), to).toBe(true);
    }
    const src = literals(files(path.join(ROOT, "src"), ".ts").filter((f) => !f.endsWith("catalogue.ts")));
    const engine = literals(files(path.join(ENGINE_DIR, "lorakit_engine"), ".py"));
    expect(Object.keys(RENAMED).filter((c) => src.has(c) || engine.has(c))).toEqual([]);
    const all = catalogue().map((e) => e.code);
    expect(new Set(all).size).toBe(all.length);
  });

  it("the README's code tables are generated from it and current (npm run protocol)", () => {
    const readme = readFileSync(path.join(ROOT, "README.md"), "utf8");
    expect(withCatalogue(readme) === readme, "README.md is stale: run `npm run protocol`").toBe(true);
    for (const code of ["DATA_EMPTY_RESPONSE", "DATA_BAD_JSON", "TEMPLATE_TOKEN_MISSING", "PYTHON_ENV_INCOMPLETE"]) {
      expect(readme).toContain(`| \`${code}\` |`);
    }
    expect(readme).not.toContain("| `DATA_EMPTY_OUTPUTS` |");
    expect(() => withCatalogue("# no markers\n")).toThrow(/lacks the markers/);
  });
});
