// Finding titles and fixes are templates filled from the evidence in both languages: src/findings/finding.ts
// `fill` here, engine/lorakit_engine/findings.py `fill` in engine/tests/test_findings.py, both held to
// tests/fixtures/fill-golden.json (numbers, lists, objects, missing keys, cut values).
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../src/engine/python.js";
import { fill } from "../src/findings/finding.js";

interface Case {
  name: string;
  template: string;
  evidence: Record<string, unknown>;
  filled: string;
}
const golden = JSON.parse(readFileSync(path.join(ROOT, "tests", "fixtures", "fill-golden.json"), "utf8")) as {
  cases: Case[];
};

describe("fill, against the golden vector the engine shares", () => {
  it.each(golden.cases.map((c) => [c.name, c] as const))("%s", (_name, c) => {
    expect(fill(c.template, c.evidence)).toBe(c.filled);
  });
});
