// The charts of report.html and the compare page: the tick algorithm with exact expectations, then both
// pages in headless Chromium at a 1,400 px window — what the browser computed for the legend squares, how
// wide it laid the charts out, the tick labels it shows, the eval markers — and a screenshot of each.
import { writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { renderCompare } from "../src/report/compare.js";
import { renderReport } from "../src/report/html.js";
import { formatCount, formatTick, linearAxis, logAxis, niceStep, spansDecades } from "../src/report/ticks.js";
import { diffFacts, type RunSummary } from "../src/runs/compare.js";
import type { MetricRow } from "../src/runs/store.js";
import { probePage } from "./browser.js";
import { tmpDir } from "./helpers.js";

describe("ticks", () => {
  it("step linear axes by 1, 2 or 5 × 10^k and round the ends out to a tick", () => {
    expect(niceStep(10, 5)).toEqual([2, 0]);
    expect(niceStep(1000, 1)).toEqual([1, 3]);
    expect(niceStep(2.347, 5)).toEqual([5, -1]);
    // The loss of the issue (2.54 … 0.193) on a linear axis: 0 to 3 by 0.5, not 0.193 / 1.36 / 2.54.
    expect(linearAxis(0.193, 2.54, 5)).toEqual({ domain: [0, 3], ticks: [0, 0.5, 1, 1.5, 2, 2.5, 3], log: false });
    expect(linearAxis(1, 30, 10, 1).ticks).toEqual([0, 5, 10, 15, 20, 25, 30]);
    expect(linearAxis(1, 200, 10, 1).ticks).toEqual([0, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200]);
    expect(linearAxis(1, 4, 10, 1).ticks).toEqual([1, 2, 3, 4]); // steps are whole: never 1.5
    // Built from integers: 0.3 is the double spelled 0.3, not 0.30000000000000004.
    expect(linearAxis(0.1, 0.7, 6).ticks).toEqual([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]);
    expect(linearAxis(0, 9.7e-5, 5).ticks).toEqual([0, 2e-5, 4e-5, 6e-5, 8e-5, 1e-4]);
    expect(linearAxis(-3, 7, 5).ticks).toEqual([-4, -2, 0, 2, 4, 6, 8]);
    expect(linearAxis(2.61, 2.59, 5).ticks).toEqual([2.59, 2.595, 2.6, 2.605, 2.61]);
    expect(linearAxis(5, 5).ticks).toEqual([4.4, 4.6, 4.8, 5, 5.2, 5.4, 5.6]); // a flat line is widened
    expect(Object.is(linearAxis(-0.2, 0.2).ticks[2], 0)).toBe(true); // never -0
  });

  it("tick log axes at 1, 2 and 5 × 10^k, or at the powers of ten over many decades", () => {
    expect(logAxis(0.193, 2.54)).toEqual({ domain: [0.1, 5], ticks: [0.1, 0.2, 0.5, 1, 2, 5], log: true });
    expect(logAxis(0.02, 3).ticks).toEqual([0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5]);
    expect(logAxis(1, 10).ticks).toEqual([1, 2, 5, 10]);
    expect(logAxis(1e-4, 10).ticks).toEqual([1e-4, 1e-3, 0.01, 0.1, 1, 10]);
    expect(() => logAxis(0, 1)).toThrow(/positive/);
    expect(spansDecades([2.54, 1.2, 0.193])).toBe(true);
    expect(spansDecades([2.5, 1.4])).toBe(false);
    expect(spansDecades([3, 0, 0.01])).toBe(false); // a zero has no place on a log axis
  });

  it("label ticks with the digits the step needs, and token counts in a few characters", () => {
    const labels = (ticks: number[]) => ticks.map((v) => formatTick(v, (ticks[1] as number) - (ticks[0] as number)));
    expect(labels(linearAxis(0.193, 2.54, 5).ticks)).toEqual(["0", "0.5", "1", "1.5", "2", "2.5", "3"]);
    expect(labels(linearAxis(0, 9.7e-5, 5).ticks)).toEqual(["0", "2e-5", "4e-5", "6e-5", "8e-5", "1e-4"]);
    expect(labels(linearAxis(2.61, 2.59, 5).ticks)).toEqual(["2.59", "2.595", "2.6", "2.605", "2.61"]);
    expect(logAxis(0.02, 3).ticks.map((v) => formatTick(v, v))).toEqual([
      "0.02",
      "0.05",
      "0.1",
      "0.2",
      "0.5",
      "1",
      "2",
      "5",
    ]);
    expect(formatTick(1.2e-4, 2e-5)).toBe("1.2e-4");
    expect(formatTick(2e6, 1e6)).toBe("2e6");
    expect([0, 950, 1000, 12_345, 999_950, 4.5e6, 1.2e9].map(formatCount)).toEqual([
      "0",
      "950",
      "1k",
      "12.3k",
      "1M",
      "4.5M",
      "1.2B",
    ]);
  });
});

/** What Chromium shows of each chart. */
interface ChartProbe {
  caption: string;
  width: number;
  contentWidth: number;
  yTitle: string;
  yTicks: string[];
  xTicks: string[];
  tokenRows: { title: string; labels: string[] }[];
  legend: { series: string; fill: string | null; line: string | null }[];
  markers: Record<string, number>;
}

const PROBE = `[...document.querySelectorAll("figure.chart")].map((fig) => {
  const svg = fig.querySelector("svg");
  const cs = getComputedStyle(document.body);
  const texts = (sel) => [...fig.querySelectorAll(sel)].map((t) => t.textContent);
  const titles = [...fig.querySelectorAll("text.axis-title")].filter((t) => t.getAttribute("text-anchor") === "end");
  const rows = new Map();
  for (const t of fig.querySelectorAll("text.tick.tokens")) {
    const y = t.getAttribute("y");
    rows.set(y, [...(rows.get(y) || []), t.textContent]);
  }
  const seriesOf = (el) => el.getAttribute("data-series");
  const markers = {};
  for (const m of fig.querySelectorAll(".marker")) markers[seriesOf(m)] = (markers[seriesOf(m)] || 0) + 1;
  return {
    caption: fig.querySelector("figcaption").textContent,
    width: svg ? svg.getBoundingClientRect().width : 0,
    contentWidth: document.body.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight),
    yTitle: texts("text.axis-title[transform]").join(""),
    // (or, on a page without tick classes, the labels at the y axis: how the old charts wrote them)
    yTicks: fig.querySelector("text.tick.y") ? texts("text.tick.y") : texts("text[text-anchor=end]"),
    xTicks: texts("text.tick.x"),
    tokenRows: titles.slice(1).map((t) => ({ title: t.textContent, labels: rows.get(t.getAttribute("y")) || [] })),
    // (or, on a page without legend items, the "■ label" texts the old charts drew)
    legend: !fig.querySelector(".legend-item")
      ? [...fig.querySelectorAll("svg text")].filter((t) => t.textContent.startsWith("■")).map((t) => ({
          series: t.textContent.slice(2),
          fill: getComputedStyle(t).fill,
          line: t.getAttribute("fill"),
        }))
      : [...fig.querySelectorAll(".legend-item")].map((g) => {
      const swatch = g.querySelector(".swatch");
      const line = [...fig.querySelectorAll("path[data-series], circle.marker[data-series]")].find((p) => seriesOf(p) === seriesOf(g));
      return {
        series: seriesOf(g),
        fill: swatch ? getComputedStyle(swatch).fill : null,
        line: line ? (line.tagName === "path" ? getComputedStyle(line).stroke : getComputedStyle(line).fill) : null,
      };
    }),
    markers,
  };
})`;

const rgb = (hex: string) => `rgb(${[1, 3, 5].map((i) => Number.parseInt(hex.slice(i, i + 2), 16)).join(", ")})`;

/** Labels that are whole multiples of one 1-2-5 step (linear), or each 1, 2 or 5 × 10^k (log). */
function oneTwoFive(labels: string[], log: boolean): boolean {
  const v = labels.map(Number);
  if (v.length < 2 || v.some((x) => !Number.isFinite(x))) return false;
  const mantissaOk = (x: number) => {
    const m = Math.abs(x) / 10 ** Math.floor(Math.log10(Math.abs(x)) + 1e-9);
    return [1, 2, 5, 10].some((n) => Math.abs(m - n) < 1e-6);
  };
  if (log) return v.every(mantissaOk);
  const step = (v[1] as number) - (v[0] as number);
  return (
    mantissaOk(step) &&
    v.every((x, i) => i === 0 || Math.abs(x - (v[i - 1] as number) - step) < 1e-9 * Math.abs(step) * 1e3) &&
    v.every((x) => Math.abs(x / step - Math.round(x / step)) < 1e-6)
  );
}

function metrics(n: number, loss: (s: number) => number, opts: { tokens?: number; evalEvery?: number } = {}) {
  const rows: MetricRow[] = [];
  for (let step = 1; step <= n; step++) {
    const warm = Math.min(1, step / 3);
    rows.push({
      step,
      kind: "train",
      loss: loss(step),
      lr: 1e-4 * warm * (0.5 + 0.5 * Math.cos((Math.PI * step) / n)),
      grad_norm: 1,
      tokens: opts.tokens ?? 100,
      tokens_per_s: 1000,
      memory_bytes: null,
    });
    if (step % (opts.evalEvery ?? 10) === 0)
      rows.push({
        step,
        kind: "eval",
        loss: loss(step) * 1.1,
        lr: null,
        grad_norm: null,
        tokens: 400,
        tokens_per_s: null,
        memory_bytes: null,
      });
  }
  return rows;
}

/** 2.54 at step 1 down to 0.193 at step 30, as in the issue. */
const falling = (s: number) => 2.54 * (0.193 / 2.54) ** ((s - 1) / 29);

/** Soft: a page that fails several of these says which, all at once. */
function expectReadable(c: ChartProbe, log: boolean): void {
  expect.soft(c.width, `${c.caption}: ${c.width} of ${c.contentWidth} px`).toBeGreaterThanOrEqual(0.8 * c.contentWidth);
  expect.soft(c.yTitle.includes("(log scale)")).toBe(log);
  expect.soft(oneTwoFive(c.yTicks, log), `${c.caption} y ticks ${c.yTicks.join(" / ")}`).toBe(true);
  expect.soft(oneTwoFive(c.xTicks, false), `${c.caption} x ticks ${c.xTicks.join(" / ")}`).toBe(true);
  expect.soft(c.legend.length).toBeGreaterThan(0);
  for (const l of c.legend) {
    expect.soft(l.fill, `legend square of ${l.series}`).not.toBeNull();
    expect.soft(l.fill, `legend square of ${l.series}`).toBe(l.line?.startsWith("#") ? rgb(l.line) : l.line);
  }
}

describe("charts in Chromium", () => {
  it("report.html: full width, 1-2-5 ticks, log loss over a decade, eval markers, step and tokens", () => {
    const html = renderReport({
      name: "charts",
      status: "completed",
      configYaml: "model: x\n",
      metrics: metrics(30, falling, { tokens: 100 }),
      findings: [],
      samples: [],
      summary: {},
    });
    const file = path.join(tmpDir("lorakit-charts-"), "report.html");
    writeFileSync(file, html);
    const { value: charts, screenshot } = probePage<ChartProbe[]>(file, PROBE);
    console.log(`screenshot: ${screenshot}`);
    const [loss, lr] = charts as [ChartProbe, ChartProbe];
    expect(loss.caption).toBe("Loss");
    expectReadable(loss, true);
    expect(loss.yTicks).toEqual(["0.1", "0.2", "0.5", "1", "2", "5"]);
    expect(loss.xTicks).toEqual(["0", "5", "10", "15", "20", "25", "30"]);
    expect(loss.tokenRows).toEqual([{ title: "tokens", labels: ["0", "500", "1k", "1.5k", "2k", "2.5k", "3k"] }]);
    expect(loss.markers).toEqual({ eval: 3 }); // steps 10, 20, 30
    expect(loss.legend.map((l) => [l.series, l.fill])).toEqual([
      ["train", rgb("#2563eb")],
      ["eval", rgb("#dc2626")],
    ]);
    expectReadable(lr, false);
    expect(lr.yTicks).toEqual(["0", "2e-5", "4e-5", "6e-5", "8e-5", "1e-4"]);
    expect(lr.legend.map((l) => [l.series, l.fill])).toEqual([["lr", rgb("#059669")]]);

    // A loss that stays within a decade is drawn on a linear axis, still in 1-2-5 steps.
    const flat = renderReport({
      name: "flat",
      status: "completed",
      configYaml: "",
      metrics: metrics(200, (s) => 2.5 - s / 180, { tokens: 2048, evalEvery: 50 }),
      findings: [],
      samples: [],
      summary: {},
    });
    const flatFile = path.join(path.dirname(file), "report-flat.html");
    writeFileSync(flatFile, flat);
    const [flatLoss] = probePage<ChartProbe[]>(flatFile, PROBE).value as [ChartProbe];
    expectReadable(flatLoss, false);
    expect(flatLoss.yTicks).toEqual(["1", "1.5", "2", "2.5"]);
    expect(flatLoss.xTicks).toEqual(["0", "20", "40", "60", "80", "100", "120", "140", "160", "180", "200"]);
    expect(flatLoss.tokenRows[0]?.labels.slice(0, 3)).toEqual(["0", "41k", "81.9k"]);
    expect(flatLoss.markers).toEqual({ eval: 4 });
  });

  it("the compare page: the same chart, each run's legend square in its colour, tokens per run", () => {
    const run = (label: "A" | "B", m: MetricRow[], loss: number): RunSummary => ({
      label,
      name: label.toLowerCase(),
      model: "/m",
      status: "completed",
      metrics: m,
      findings: [],
      samples: [],
      finalLoss: loss,
      bestEval: { step: 30, loss },
      exactMatch: { before: null, after: null },
      origin: { kind: "trained" },
      facts: [],
    });
    const a = run("A", metrics(30, falling, { tokens: 100 }), 0.19);
    const b = run(
      "B",
      metrics(30, (s) => falling(s) * 1.3, { tokens: 120 }),
      0.25,
    );
    const html = renderCompare({ a, b, diff: diffFacts(a.facts, b.facts), verdict: ["x"] });
    const file = path.join(tmpDir("lorakit-charts-"), "compare.html");
    writeFileSync(file, html);
    const { value: charts, screenshot } = probePage<ChartProbe[]>(file, PROBE);
    console.log(`screenshot: ${screenshot}`);
    const [loss] = charts as [ChartProbe];
    expectReadable(loss, true);
    expect(loss.legend.map((l) => l.series)).toEqual(["A train", "B train", "A eval", "B eval"]);
    expect(new Set(loss.legend.map((l) => l.fill)).size).toBe(4);
    expect(loss.markers).toEqual({ "A eval": 3, "B eval": 3 });
    expect(loss.tokenRows).toEqual([
      { title: "A tokens", labels: ["0", "500", "1k", "1.5k", "2k", "2.5k", "3k"] },
      { title: "B tokens", labels: ["0", "600", "1.2k", "1.8k", "2.4k", "3k", "3.6k"] },
    ]);
  });
});
