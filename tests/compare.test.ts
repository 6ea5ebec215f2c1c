import { closeSync, cpSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { modelIdentity } from "../src/models/identity.js";
import { diffFacts, type RunSummary, verdict } from "../src/runs/compare.js";
import type { Aspect, Fact } from "../src/runs/facts.js";
import { chromium } from "./browser.js";
import { fixture, runCli, tmpDir } from "./helpers.js";

/** What the page shows, read by a script in a copy of it (the page itself runs none). */
interface Probe {
  verdict: string;
  origin: string[];
  findingCounts: string[];
  diff: { key: string; cls: string; a: string; b: string }[];
  sameSummary: string;
  sampleHeader: string[];
  references: { text: string; width: number }[];
  findings: string[];
}

const PROBE = `<script>
const q = (s) => [...document.querySelectorAll(s)];
const text = (e) => (e ? e.textContent.trim() : "");
const row = (name) => q("table.summary tr").find((tr) => text(tr.querySelector("th")) === name);
const probe = {
  verdict: text(document.querySelector(".verdict")),
  origin: [...row("origin").querySelectorAll("td")].map(text),
  findingCounts: [...row("findings").querySelectorAll("td")].map(text),
  diff: q("table.diff tr[data-key]").map((tr) => ({ key: tr.dataset.key, cls: tr.className, a: text(tr.cells[2]), b: text(tr.cells[3]) })),
  sameSummary: text(document.querySelector("details.same summary")),
  sampleHeader: q("table.samples tr:first-child th").map(text),
  references: q("table.samples td.reference").map((td) => ({ text: text(td), width: td.getBoundingClientRect().width })),
  findings: q("table.findings tr").filter((tr) => tr.cells[0].tagName === "TD").map((tr) => text(tr.cells[0]) + " " + text(tr.cells[2])),
};
const pre = document.createElement("pre");
pre.id = "probe";
pre.textContent = JSON.stringify(probe);
document.body.append(pre);
</script>`;

/** Loads `file` in Chromium: the DOM read back by the probe, and a screenshot written beside it. */
function inBrowser(file: string): { probe: Probe; screenshot: string } {
  const copy = file.replace(/\.html$/, ".probe.html");
  writeFileSync(copy, readFileSync(file, "utf8").replace("</body>", `${PROBE}</body>`));
  const dom = chromium(["--dump-dom", `file://${copy}`]);
  const m = /<pre id="probe">([^<]*)<\/pre>/.exec(dom);
  if (!m) throw new Error(`the probe did not run in ${copy}`);
  const fromHtml = (s: string) =>
    s
      .replace(/&quot;/g, '"')
      .replace(/&lt;/g, "<")
      .replace(/&gt;/g, ">")
      .replace(/&amp;/g, "&");
  const screenshot = file.replace(/\.html$/, ".png");
  chromium([`--screenshot=${screenshot}`, "--window-size=1280,3600", "--hide-scrollbars", `file://${file}`]);
  return { probe: JSON.parse(fromHtml(m[1] as string)) as Probe, screenshot };
}

function writeRecipes(dir: string, recipes: Record<string, { model: string; lr: number; epochs?: number }>): void {
  const records = Array.from({ length: 12 }, (_, i) => ({
    instruction: `say ${i % 3}`,
    input: "",
    output: `word ${i % 3}`,
  }));
  writeFileSync(path.join(dir, "train.json"), JSON.stringify(records));
  for (const [file, r] of Object.entries(recipes))
    writeFileSync(
      path.join(dir, file),
      JSON.stringify({
        model: r.model,
        data: { train: "train.json", eval_split: 0.25, max_length: 64 },
        train: { epochs: r.epochs ?? 1, batch_size: 4, grad_accum: 1, lr: r.lr, log_every: 1 },
        samples: { count: 2, max_new_tokens: 4 },
      }),
    );
}

/** The lines of a terminal section: after its heading, up to the next blank line or heading. */
function section(stdout: string, heading: string): string[] {
  const lines = stdout.split("\n");
  const at = lines.findIndex((l) => l === heading || l.startsWith(`${heading}:`));
  const rest = lines.slice(at + 1);
  const end = rest.findIndex((l) => l === "" || !l.startsWith(" "));
  return at < 0 ? [] : rest.slice(0, end < 0 ? rest.length : end);
}

const FINDING_COUNTS = /^(none|(\d+ (errors?|warnings?|notes?))(, \d+ (errors?|warnings?|notes?))*)$/;
const grammatical = (s: string) =>
  FINDING_COUNTS.test(s) &&
  !/\b1 (errors|warnings|notes)\b/.test(s) &&
  !/\b([02-9]|\d\d+) (error|warning|note)\b(?!s)/.test(s);

describe("lorakit compare", () => {
  it("the same recipe on two models: a model verdict, each finding named, the page with references", async () => {
    const dir = tmpDir();
    const recipe = { lr: 1e-3 };
    writeRecipes(dir, {
      "llama.yaml": { model: fixture("models", "tiny-llama"), ...recipe },
      "glm.yaml": { model: fixture("models", "chatglm3-single"), ...recipe },
    });
    const r = await runCli(["compare", "llama.yaml", "glm.yaml", "--out", "cmp.html"], { cwd: dir });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/final train loss\s+\d\.\d{4}\s+\d\.\d{4}/);
    expect(r.stdout).toMatch(/^origin\s+trained now\s+trained now$/m);
    // What differs: the model (and what follows from it), never a setting of the recipe.
    const differs = section(r.stdout, "what differs");
    expect(differs[0]).toMatch(/^ {2}model\s+tiny-llama \([0-9a-f]{8}\)\s+chatglm3-single \([0-9a-f]{8}\)$/);
    expect(differs.filter((l) => !/^ {2}(model|tokenizer)\s|\(follows\)/.test(l))).toEqual([]);
    expect(differs.join("\n")).toMatch(/template \(follows\)\s+jinja \(auto\)\s+chatglm3 \(auto\)/);
    const verdictText = r.stdout.slice(r.stdout.indexOf("verdict"));
    expect(verdictText).toMatch(
      /^verdict {2}different models \(A tiny-llama \([0-9a-f]{8}\), B chatglm3-single \([0-9a-f]{8}\)\), same recipe and data \(each with its own template\)(: a model problem, not a pipeline problem — [AB] fares worse \(|, and they behave alike \()best eval loss/,
    );
    expect(verdictText).toContain("the tokenizers differ, so per-token losses compare only roughly");
    expect(verdictText).not.toContain("the weaker model (or its template)");
    // Counts in words, then every finding by code and title.
    const counts = /^findings\s+(.+?)\s{2,}(.+)$/m.exec(r.stdout);
    expect(counts && grammatical(counts[1] as string) && grammatical(counts[2] as string), counts?.[0]).toBe(true);
    const named = section(r.stdout, "findings");
    expect(named.length).toBeGreaterThan(0);
    for (const l of named) expect(l).toMatch(/^ {2}(both|A|B)\s+[·!✗] (info|warning|error)\s+[A-Z][A-Z0-9_]+ {2}\S/);

    const page = inBrowser(path.join(dir, "cmp.html"));
    const p = page.probe;
    expect(statSync(page.screenshot).size).toBeGreaterThan(10_000);
    expect(p.verdict).toMatch(/^different models \(A tiny-llama/);
    expect(p.origin).toEqual(["trained now", "trained now"]);
    expect(p.findingCounts.every(grammatical)).toBe(true);
    expect(p.diff[0]).toMatchObject({ key: "model", cls: "changed" });
    expect(p.diff.filter((d) => d.cls === "changed").map((d) => d.key)).toEqual(["model", "tokenizer"]);
    expect(p.diff.find((d) => d.key === "template")).toMatchObject({ cls: "follows" });
    expect(p.sameSummary).toMatch(/^\d+ settings are the same in both runs$/);
    expect(p.sampleHeader).toEqual(["#", "prompt", "reference", "A after", "B after"]);
    expect(p.references.length).toBeGreaterThan(0);
    for (const ref of p.references) {
      expect(ref.text).toMatch(/^word [012]$/); // the held-out answer of the training records
      expect(ref.width).toBeGreaterThan(30);
    }
    expect(p.findings.length).toBeGreaterThan(0);
    for (const f of p.findings) expect(f).toMatch(/^(both|A|B) [A-Z][A-Z0-9_]+$/);
    expect(p.findings).toContain("B MODEL_REMOTE_CODE"); // only the ChatGLM3 checkpoint names remote code

    // Finished runs are read back, not trained again, and the terminal says so.
    const again = await runCli(["compare", "llama.yaml", "glm.yaml", "--no-train", "--out", "cmp2.html"], { cwd: dir });
    expect(again.code).toBe(0);
    expect(again.stdout).not.toMatch(/^[AB]: training/m);
    expect(again.stdout).toContain(
      "A: run 'llama' (llama.yaml) finished earlier: reused from the store, not retrained",
    );
    expect(again.stdout).toContain("B: run 'glm' (glm.yaml) finished earlier: reused from the store, not retrained");
    expect(again.stdout).toMatch(/^origin\s+reused from the store\s+reused from the store$/m);
    const html = readFileSync(path.join(dir, "cmp2.html"), "utf8");
    expect(html).toMatch(/reused from the store, finished \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; not retrained/);
  }, 400_000);

  it("one setting on one model: the verdict names it, run A reused and B trained now, a changed config told", async () => {
    const dir = tmpDir();
    const model = fixture("models", "tiny-llama");
    writeRecipes(dir, {
      "a.yaml": { model, lr: 0.05, epochs: 2 },
      "b.yaml": { model, lr: 1e-5, epochs: 2 },
    });
    const trained = await runCli(["train", "a.yaml", "--no-smoke"], { cwd: dir });
    expect(trained.code, trained.stderr).toBe(0);
    const r = await runCli(["compare", "a.yaml", "b.yaml", "--out", "cmp.html"], { cwd: dir });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("A: run 'a' (a.yaml) finished earlier: reused from the store, not retrained");
    expect(r.stdout).toContain("B: training b (b.yaml)");
    expect(r.stdout).toMatch(/^origin\s+reused from the store\s+trained now$/m);
    expect(section(r.stdout, "what differs")).toEqual([expect.stringMatching(/^ {2}train\.lr\s+0\.05\s+1e-5$/)]);
    expect(r.stdout).toMatch(/^the same: model tiny-llama \([0-9a-f]{8}\); tokenizer .*; data\.train train\.json/m);
    // 0.05 learns within 6 steps, 1e-5 barely moves: a difference the verdict puts on the learning rate.
    expect(r.stdout).toMatch(
      /^verdict {2}same model, template and data; only train\.lr differs \(0\.05 vs 1e-5\): the difference is the learning rate's \(best eval loss \d+\.\d{4} vs \d+\.\d{4}/m,
    );
    expect(r.stdout).not.toContain("model (or its template)");
    const p = inBrowser(path.join(dir, "cmp.html")).probe;
    expect(p.diff).toEqual([{ key: "train.lr", cls: "changed", a: "0.05", b: "1e-5" }]);
    expect(p.origin[0]).toMatch(/^reused from the store, finished .* UTC; not retrained$/);
    expect(p.origin[1]).toBe("trained now");
    expect(p.verdict).toContain("the difference is the learning rate's");

    // a.yaml edited after its run finished: the stored run is what is compared, and the terminal says so.
    writeRecipes(dir, { "a.yaml": { model, lr: 0.01, epochs: 2 } });
    const stale = await runCli(["compare", "a.yaml", "b.yaml", "--no-train", "--out", "cmp2.html"], { cwd: dir });
    expect(stale.code).toBe(0);
    expect(stale.stdout).toContain(
      "A: a.yaml has changed since 'a' was trained (train.lr 0.05 then, 0.01 now); this compares what was trained.",
    );
    expect(section(stale.stdout, "what differs")).toEqual([expect.stringMatching(/^ {2}train\.lr\s+0\.05\s+1e-5$/)]);
  }, 400_000);
});

describe("the compare verdict follows from what differs", () => {
  const fact = (key: string, aspect: Aspect, value: string, extra: Partial<Fact> = {}): Fact => ({
    key,
    aspect,
    value,
    shown: value,
    short: value,
    decides: true,
    ...extra,
  });
  const base = [
    fact("model", "model", "m1"),
    fact("tokenizer", "model", "t1"),
    fact("template", "template", "chatml", { auto: true }),
    fact("data.train", "data", "d1"),
    fact("data.max_length", "data", "512"),
    fact("train.lr", "recipe", "1e-4"),
    fact("train.epochs", "recipe", "3"),
    fact("train.seed", "recipe", "42"),
    fact("samples.count", "evaluation", "4"),
    fact("data.prepared", "data", "p1", { decides: false }),
  ];
  const run = (label: string, facts: Fact[], loss: number): RunSummary => ({
    label,
    name: label.toLowerCase(),
    model: "/m",
    status: "completed",
    metrics: [],
    findings: [],
    samples: [],
    finalLoss: loss,
    bestEval: { step: 10, loss },
    exactMatch: { before: null, after: null },
    origin: { kind: "trained" },
    facts,
  });
  const with_ = (changes: Record<string, Partial<Fact>>) =>
    base.map((f) => (changes[f.key] ? { ...f, ...changes[f.key], short: changes[f.key]?.value ?? f.short } : f));
  const judge = (b: Fact[], lossB = 1.0) => {
    const a = run("A", base, 1.0);
    const rb = run("B", b, lossB);
    return verdict(a, rb, diffFacts(a.facts, rb.facts));
  };

  it("names the one aspect that changed, or says none can be blamed", () => {
    expect(judge(with_({ "train.lr": { value: "5e-5" } }), 2.0)[0]).toBe(
      "same model, template and data; only train.lr differs (1e-4 vs 5e-5): the difference is the learning rate's (best eval loss 1.0000 vs 2.0000)",
    );
    expect(judge(with_({ "train.lr": { value: "5e-5" } }), 1.02)[0]).toMatch(
      /only train\.lr differs \(1e-4 vs 5e-5\): it makes little difference/,
    );
    expect(judge(with_({ "train.epochs": { value: "5" }, "train.lr": { value: "5e-5" } }), 2.0)[0]).toMatch(
      /only train\.lr \(1e-4 vs 5e-5\) and train\.epochs \(3 vs 5\) differ: the difference is these hyperparameters'/,
    );
    expect(judge(with_({ "train.seed": { value: "7" } }), 2.0)[0]).toMatch(
      /the difference is the seed's: run-to-run noise/,
    );
    expect(judge(with_({ "data.train": { value: "d2" }, "data.prepared": { value: "p2" } }), 2.0)[0]).toBe(
      "same model, template and recipe; only data.train differs (d1 vs d2): the difference is the data's (best eval loss 1.0000 vs 2.0000)",
    );
    expect(judge(with_({ template: { value: "chatglm3", auto: false } }), 2.0)[0]).toMatch(
      /^same model, data and recipe; only template differs \(chatml vs chatglm3\): the difference is the template's/,
    );
    // A template chosen per model follows the model; the verdict is the model's.
    const models = judge(with_({ model: { value: "m2" }, template: { value: "chatglm3" } }), 2.0);
    expect(models[0]).toMatch(
      /^different models \(A m1, B m2\), same recipe and data \(each with its own template\): a model problem, not a pipeline problem — B fares worse/,
    );
    expect(judge(with_({ model: { value: "m2" } }), 1.0)[0]).toMatch(
      /, same template, recipe and data, and they behave alike \(.*\): a problem both show is in the pipeline/,
    );
    const several = judge(with_({ model: { value: "m2" }, "train.lr": { value: "5e-5" } }), 2.0)[0];
    expect(several).toMatch(/^the runs differ in model and recipe \(model \(m1 vs m2\); train\.lr \(1e-4 vs 5e-5\)\)/);
    expect(several).toContain("no one of them can be blamed");
    expect(judge(base, 1.0)[0]).toMatch(/^nothing that shapes training differs.*the results agree/);
    expect(judge(base, 2.0)[0]).toMatch(/yet the results differ .*nondeterminism/);
    const sampling = judge(with_({ "samples.count": { value: "8" } }), 1.0);
    expect(sampling[1]).toBe(
      "the sampling differs too (samples.count (4 vs 8)): exact match is scored on different prompts",
    );
  });
});

describe("a model's identity", () => {
  it("is the same for a copy, and changes with config.json or the weights, read whole or at fixed places", () => {
    const original = fixture("models", "chatglm3-6b-tiny"); // two 8 MB .bin shards
    const copy = path.join(tmpDir(), "copy");
    cpSync(original, copy, { recursive: true });
    for (const fullBytes of [undefined, 0]) {
      const a = modelIdentity(original, { fullBytes });
      expect(a).toMatchObject({ files: 2, sampled: fullBytes === 0 });
      expect(modelIdentity(copy, { fullBytes })?.hash).toBe(a?.hash);
    }
    const whole = modelIdentity(copy)?.hash;
    const sampled = modelIdentity(copy, { fullBytes: 0 })?.hash;
    const shard = path.join(copy, "pytorch_model-00002-of-00002.bin");
    const flip = (at: number) => {
      const fd = openSync(shard, "r+");
      const b = Buffer.alloc(1);
      b[0] = (readFileSync(shard)[at] as number) ^ 0xff;
      writeSync(fd, b, 0, 1, at);
      closeSync(fd);
    };
    flip(Math.floor(statSync(shard).size / 2) + 12_345); // read whole: any byte counts
    expect(modelIdentity(copy)?.hash).not.toBe(whole);
    flip(1000); // within the head every sampled read covers
    expect(modelIdentity(copy, { fullBytes: 0 })?.hash).not.toBe(sampled);
    const config = path.join(original, "config.json");
    const other = path.join(tmpDir(), "other");
    cpSync(original, other, { recursive: true });
    writeFileSync(path.join(other, "config.json"), readFileSync(config, "utf8").replace(/\}\s*$/, ', "x": 1}'));
    expect(modelIdentity(other)?.hash).not.toBe(modelIdentity(original)?.hash);
    expect(modelIdentity(path.join(tmpDir(), "gone"))).toBeNull();
  });
});
