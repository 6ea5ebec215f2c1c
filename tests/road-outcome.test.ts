// A run that completed with an error finding (a failed adapter reload check, say) must say so wherever it
// says "completed": the report's status badge, the run store's note, the end-of-run terminal line.
import { describe, expect, it } from "vitest";
import { renderReport } from "../src/report/html.js";
import { outcomeText } from "../src/train/road.js";

describe("the run's outcome in words", () => {
  it("names the error findings beside 'completed'", () => {
    expect(outcomeText("completed", [])).toBe("completed");
    expect(outcomeText("completed", [{ code: "ADAPTER_RELOAD_MISMATCH" }])).toBe(
      "completed with 1 error finding: ADAPTER_RELOAD_MISMATCH",
    );
    expect(
      outcomeText("completed", [
        { code: "TRAIN_LOSS_ZERO" },
        { code: "ADAPTER_RELOAD_MISMATCH" },
        { code: "TRAIN_LOSS_ZERO" },
      ]),
    ).toBe("completed with 3 error findings: TRAIN_LOSS_ZERO, ADAPTER_RELOAD_MISMATCH");
    expect(outcomeText("failed", [{ code: "X" }])).toBe("failed");
    expect(outcomeText("stopped", [])).toBe("stopped");
  });

  it("shows it in the report's status badge, styled as an error", () => {
    const status = outcomeText("completed", [{ code: "ADAPTER_RELOAD_MISMATCH" }]);
    const html = renderReport({
      name: "r",
      status,
      statusClass: "error",
      configYaml: "",
      metrics: [],
      findings: [],
      samples: [],
      summary: {},
    });
    expect(html).toContain('<span class="status error">completed with 1 error finding: ADAPTER_RELOAD_MISMATCH</span>');
    const plain = renderReport({
      name: "r",
      status: "completed",
      configYaml: "",
      metrics: [],
      findings: [],
      samples: [],
      summary: {},
    });
    expect(plain).toContain('<span class="status ok">completed</span>');
  });
});
