import { writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { renderReport } from "../src/report/html.js";
import { chromium } from "./browser.js";
import { tmpDir } from "./helpers.js";

function renderInBrowser(file: string): string {
  return chromium(["--dump-dom", `file://${file}`]);
}

describe("report.html", () => {
  it("renders charts, findings and samples in Chromium, escaping what the data says", () => {
    const html = renderReport({
      name: "t",
      status: "completed",
      configYaml: "model: x\n",
      metrics: [1, 2, 3, 4].map((step) => ({
        step,
        kind: "train" as const,
        loss: 2 / step,
        lr: 1e-4,
        grad_norm: 1,
        tokens: 10,
        tokens_per_s: 100,
        memory_bytes: null,
      })),
      findings: [
        {
          stage: "data",
          code: "DATA_ROLE_TOKEN_AS_TEXT",
          severity: "warning",
          title: "role markers typed as text",
          evidence_json: JSON.stringify({ sample: 3 }),
          fix: "remove them",
        },
      ],
      samples: [
        { phase: "before", idx: 0, prompt: "<script>alert(1)</script>", output: "nope", reference: "yes", stopped: 0 },
        { phase: "after", idx: 0, prompt: "<script>alert(1)</script>", output: "yes", reference: "yes", stopped: 1 },
      ],
      summary: { "held-out exact match": "before 0.0% → after 100.0% (1 samples)" },
    });
    const file = path.join(tmpDir(), "report.html");
    writeFileSync(file, html);
    const dom = renderInBrowser(file);
    expect(dom.match(/<svg/g)?.length).toBe(2);
    expect(dom).toMatch(/<path data-series="train" d="M[\d.]+,[\d.]+L/); // the loss line was drawn
    expect(dom).toContain("DATA_ROLE_TOKEN_AS_TEXT");
    expect(dom).toContain('class="out match"');
    expect(dom).toContain('class="out miss"');
    expect(dom).not.toContain("<script>alert(1)</script>"); // escaped: shown, never run
    expect(dom).toContain("&lt;script&gt;alert(1)&lt;/script&gt;");
  });
});
