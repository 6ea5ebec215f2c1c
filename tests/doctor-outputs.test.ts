// After-run sample checks: generation that never stops, answers identical to the base model's.
import { describe, expect, it } from "vitest";
import { type OutputSample, outputFindings } from "../src/doctor/outputs.js";

const pair = (idx: number, before: string, after: string, stopped = true): OutputSample[] => [
  { phase: "before", idx, output: before, stopped: 1 },
  { phase: "after", idx, output: after, stopped: stopped ? 1 : 0 },
];

describe("outputFindings", () => {
  it("a run that learned: answers changed and stop on their own → nothing", () => {
    const s = [0, 1, 2, 3].flatMap((i) => pair(i, `base ${i}`, `tuned ${i}`, i !== 3));
    expect(outputFindings(s)).toEqual([]);
  });

  it("flags after-samples that do not stop, listing them", () => {
    const s = [0, 1, 2, 3].flatMap((i) => pair(i, `base ${i}`, `tuned ${i}`, i === 0));
    const [f, ...rest] = outputFindings(s);
    expect(rest).toEqual([]);
    expect(f).toMatchObject({ code: "OUTPUT_NO_STOP", severity: "warning", stage: "outputs" });
    expect(f?.evidence).toMatchObject({
      stopped: 1,
      total: 4,
      share: 0.25,
      not_stopped: [1, 2, 3],
      before_stopped: "4 of 4",
    });
    expect(f?.title).toBe("only 1 of 4 samples after training stop on their own");
  });

  it("flags answers identical to before (text, whitespace aside, or ids)", () => {
    const text = [0, 1, 2, 3, 4].flatMap((i) => pair(i, `same ${i}`, i === 4 ? "changed" : ` same ${i}\n`));
    const [f] = outputFindings(text);
    expect(f).toMatchObject({
      code: "OUTPUT_UNCHANGED",
      evidence: { identical: 4, pairs: 5, share: 0.8, samples: [0, 1, 2, 3] },
    });
    const ids: OutputSample[] = [
      { phase: "before", idx: 7, output: [5, 6, 2], stopped: true },
      { phase: "after", idx: 7, output: [5, 6, 2], stopped: true },
    ];
    expect(outputFindings(ids).map((x) => x.code)).toEqual(["OUTPUT_UNCHANGED"]);
    expect(outputFindings(text, { maxUnchangedShare: 0.9 })).toEqual([]);
  });

  it("needs after-samples to say anything", () => {
    expect(outputFindings([{ phase: "before", idx: 0, output: "x", stopped: 0 }])).toEqual([]);
  });
});
