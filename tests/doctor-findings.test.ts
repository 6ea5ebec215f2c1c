// The finding registry and its renderings, and the README documents every code. (The engine emits codes from
// protocol/findings.json, exported from this registry: tests/config.test.ts checks that export is current.)
import { readFileSync } from "node:fs";
import path from "node:path";
import { PassThrough } from "node:stream";
import { describe, expect, it } from "vitest";
import { renderFinding, renderFindings, toJson } from "../src/cli/findings-view.js";
import type { Io } from "../src/cli/io.js";
import { FindingEvent } from "../src/config/schema.js";
import { ROOT } from "../src/engine/python.js";
import { LorakitError } from "../src/errors.js";
import {
  CODES,
  type CodeSpec,
  countFindings,
  fill,
  findingsError,
  findingsOfError,
  fromEvent,
  fromRow,
  makeFinding,
  STAGES,
  stageOf,
  toEvent,
} from "../src/findings/index.js";
import { findingsTable } from "../src/report/findings-table.js";

const ALL = Object.entries(CODES as Record<string, CodeSpec>);

function io(tty: boolean, env: NodeJS.ProcessEnv = {}): Io {
  const stdout = Object.assign(new PassThrough(), { isTTY: tty });
  return { stdout, stderr: new PassThrough(), stdin: new PassThrough(), env, cwd: ROOT };
}

describe("registry", () => {
  it("gives every code a stage, a severity, a title and a one-sentence fix", () => {
    expect(ALL.length).toBeGreaterThan(50);
    for (const [code, s] of ALL) {
      expect(code).toMatch(/^[A-Z][A-Z0-9_]+$/);
      expect(STAGES).toContain(s.stage);
      expect(["error", "warning", "info"]).toContain(s.severity);
      expect(s.title.length).toBeGreaterThan(5);
      expect(s.fix === "{suggestion}" || /\.$/.test(s.fix), `${code}: ${s.fix}`).toBe(true);
      expect(s.row.length).toBeGreaterThan(2);
    }
  });

  it("answers every row of the DOCTOR.md catalogue", () => {
    const rows = [
      "role markers as text",
      "no end-of-turn learned",
      "prompt trained",
      "nothing trained",
      "truncation",
      "template mismatch",
      "vocabulary",
      "dirty data",
      "targets not found",
      "targets partly matched",
      "nothing trainable / base trainable",
      "adapter never learned",
      "adapter not loaded",
      "half-precision adapters",
      "divergence",
      "plateau",
      "loss at 0",
      "overfitting",
      "NVML",
      "no GPU",
      "no bf16",
      "memory",
      "disk",
      "remote code",
    ];
    const covered = new Set(ALL.map(([, s]) => s.row));
    expect(rows.filter((r) => !covered.has(r))).toEqual([]);
  });

  it("fills titles and fixes from the evidence", () => {
    const f = makeFinding("CONFIG_TARGETS_WRONG_FAMILY", {
      targets: ["q_proj", "v_proj"],
      family: "chatglm",
      suggestion: ["query_key_value"],
    });
    expect(f.title).toBe("LoRA targets q_proj, v_proj are other families' names; chatglm calls them query_key_value");
    expect(f.fix).toBe("Set lora.targets: [query_key_value] (or leave lora.targets out for the family's set).");
    expect(f).toMatchObject({ severity: "error", stage: "config" });
    expect(fill("{a} and {missing}", { a: 0.000123456 })).toBe("0.000123 and {missing}");
  });

  it("round-trips through the wire shape and the store's row", () => {
    const f = makeFinding("TRAIN_LOSS_SPIKE", { step: 37, loss: 10 });
    const e = toEvent(f);
    expect(FindingEvent.parse(e)).toEqual(e);
    expect(fromEvent(e)).toEqual(f);
    expect(fromRow({ ...e, stage: "training", evidence_json: JSON.stringify(e.evidence) })).toEqual(f);
    expect(stageOf("ADAPTER_RELOAD_MISMATCH")).toBe("outputs");
    expect(stageOf("SOMETHING_NEW_FROM_THE_ENGINE")).toBe("training");
  });

  it("converts a LorakitError with every problem it carries to findings, where it happened in the evidence", () => {
    const err = LorakitError.fromList([
      new LorakitError("CONFIG_BAD_VALUE", "bad lr\nmore", {
        where: { file: "/x/run.yaml", line: 4, key: "train.lr" },
      }),
      new LorakitError("DATA_BAD_JSON", "not JSON", { hint: "Fix the line." }),
    ]);
    const [a, b] = findingsOfError(err);
    expect(a).toMatchObject({ code: "CONFIG_BAD_VALUE", severity: "error", stage: "config" });
    expect(a?.title).toBe("/x/run.yaml:4, key train.lr: bad lr");
    expect(a?.evidence).toEqual({ message: "bad lr\nmore", file: "/x/run.yaml", line: 4, key: "train.lr" });
    expect(b).toMatchObject({ code: "DATA_BAD_JSON", stage: "data", title: "not JSON", fix: "Fix the line." });
  });

  it("turns error findings into one LorakitError for the road", () => {
    const list = [
      makeFinding("CONFIG_LR_HIGH", { lr: 0.003, r: 8, scale: 4 }),
      makeFinding("MODEL_NOTHING_TRAINABLE", {}),
      makeFinding("CONFIG_BF16_UNSUPPORTED", { device: "Tesla V100", capability: "7.0" }),
    ];
    const e = findingsError(list);
    expect(e?.all().map((x) => x.code)).toEqual(["MODEL_NOTHING_TRAINABLE", "CONFIG_BF16_UNSUPPORTED"]);
    expect(findingsError(list.slice(0, 1))).toBeNull();
  });
});

describe("rendering", () => {
  const list = [
    makeFinding("ENV_NO_CUDA", { explanation: "no driver" }),
    makeFinding("MODEL_TARGETS_NOT_FOUND", { targets: ["q_proj"], recommended: ["query_key_value"] }),
    makeFinding("DATA_ROLE_MARKERS_AS_TEXT", { samples: 3, example: "<|user|> hi" }),
    makeFinding("CONFIG_STEPS_FEW", { steps: 4 }),
  ];

  it("prints ✗/!/· lines with evidence and fix, colour only on a terminal", () => {
    const plain = renderFinding(list[1] as (typeof list)[number], io(false));
    expect(plain).toBe(
      [
        "✗ error   MODEL_TARGETS_NOT_FOUND  no module of this model is named q_proj",
        "  evidence targets: q_proj; recommended: query_key_value",
        "  fix      Set lora.targets to the family's set [query_key_value] or to names from the model's linear modules.",
      ].join("\n"),
    );
    expect(renderFinding(list[0] as (typeof list)[number], io(false))).toBe(
      "· info    ENV_NO_CUDA  no CUDA device: no driver",
    );
    expect(renderFinding(list[1] as (typeof list)[number], io(true))).toContain("\x1b[31m");
    expect(renderFinding(list[1] as (typeof list)[number], io(true, { NO_COLOR: "1" }))).not.toContain("\x1b[");
    const grouped = renderFindings(list, io(false));
    expect(grouped.split("\n").filter((l) => !l.startsWith(" "))).toEqual(["env", "config", "data", "model"]);
  });

  it("prints {findings, summary} for --json", () => {
    const j = toJson(list, { config: "run.yaml" });
    expect(j.findings.map((f) => f.code)).toEqual([
      "ENV_NO_CUDA",
      "CONFIG_STEPS_FEW",
      "DATA_ROLE_MARKERS_AS_TEXT",
      "MODEL_TARGETS_NOT_FOUND",
    ]);
    expect(j.summary).toMatchObject({ ok: false, errors: 1, warnings: 2, info: 1, config: "run.yaml" });
    expect(j.summary.byStage.model).toEqual({ errors: 1, warnings: 0, info: 0 });
    expect(countFindings([])).toEqual({ errors: 0, warnings: 0, info: 0 });
  });

  it("writes one escaped HTML table for the report and the comparison page", () => {
    const html = findingsTable(list, { empty: "No findings.", evidence: true });
    expect(html.startsWith('<table class="findings"><tr><th>severity</th><th>code</th>')).toBe(true);
    expect(html).toContain("&lt;|user|&gt; hi");
    expect(html).not.toContain("<|user|>");
    expect(html).toContain('<tr class="error"><td>error</td><td><code>MODEL_TARGETS_NOT_FOUND</code>');
    const runs = findingsTable(list.slice(0, 1), { empty: "-", runs: ["a<b"] });
    expect(runs).toContain("<th>run</th>");
    expect(runs).toContain('<tr class="info"><td>a&lt;b</td><td>info</td>');
    expect(runs).not.toContain("<th>evidence</th>");
    expect(findingsTable([], { empty: "No findings." })).toBe('<p class="ok">No findings.</p>');
  });
});

describe("documentation", () => {
  it("documents every code in the README", () => {
    const doc = readFileSync(path.join(ROOT, "README.md"), "utf8");
    expect(ALL.map(([c]) => c).filter((c) => !doc.includes(`\`${c}\``))).toEqual([]);
  });
});
