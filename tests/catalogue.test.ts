// One catalogue of codes: every code written in src/ is in it (the doctor's CODES or ERRORS), once, under one
// name; the README's tables are generated from it and current. The engine takes its codes from the export,
// protocol/findings.json, and its own tests prove that every code it emits is there.
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../src/engine/python.js";
import { CODES, catalogue, ERRORS, isCatalogued, RENAMED, withCatalogue } from "../src/findings/index.js";

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

const sourcesOutsideTheCatalogue = () =>
  files(path.join(ROOT, "src"), ".ts").filter((f) => !f.startsWith(path.join(ROOT, "src", "findings") + path.sep));

describe("the catalogue", () => {
  it("holds every code lorakit's TypeScript writes", () => {
    // The catalogue's own prose quotes environment names in Markdown; its codes are keys, not strings.
    const found = literals(sourcesOutsideTheCatalogue());
    expect(found.size).toBeGreaterThan(90);
    // lorakit's own environment variables (LORAKIT_FAST, LORAKIT_PROFILE) are quoted in messages, not codes.
    const codes = [...found].filter(([word]) => !word.startsWith("LORAKIT_"));
    const missing = codes.filter(([code]) => !isCatalogued(code)).map(([c, at]) => `${c} (${at})`);
    expect(missing, "add them to src/findings/error-codes.ts (or a finding code to src/findings/codes/)").toEqual([]);
  });

  it("has one name per case: findings and errors apart, renamed codes gone", () => {
    expect(Object.keys(ERRORS).filter((c) => c in CODES)).toEqual([]);
    for (const [from, to] of Object.entries(RENAMED)) {
      expect(isCatalogued(from), from).toBe(false);
      expect(isCatalogued(to), to).toBe(true);
    }
    const src = literals(sourcesOutsideTheCatalogue());
    expect(Object.keys(RENAMED).filter((c) => src.has(c))).toEqual([]);
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
