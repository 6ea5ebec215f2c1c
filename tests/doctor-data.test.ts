// The doctor's data stage on prepared data: one cause, one finding. Samples cut by max_length lack their
// stop token because they were cut (DATA_TRUNCATED); only samples that were not cut and still do not learn
// a stop token mean the template is wrong (DATA_NO_STOP, an error).
import { writeFileSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { type PrepareOptions, prepareDataset } from "../src/data/prepare.js";
import { jinjaTemplate } from "../src/data/template.js";
import { loadTokenizer, type Tokenizer } from "../src/data/tokenizer.js";
import { dataFindings } from "../src/doctor/data.js";
import { fixture, tmpDir } from "./helpers.js";

let glm: Tokenizer;
let bl: Tokenizer;
beforeAll(async () => {
  glm = await loadTokenizer(fixture("tokenizers", "spm-chatglm3"));
  bl = await loadTokenizer(fixture("tokenizers", "bpe-bytelevel"));
});

/** 380 huanhuan-shaped samples, 30 of them (7.9%) with answers far longer than max_length 96. */
function dataset(): string {
  const file = path.join(tmpDir(), "train.json");
  const rows = Array.from({ length: 380 }, (_, i) => ({
    instruction: `第${i}个问题：你是谁？`,
    input: "",
    output: [5, 17, 29].includes(i % 38)
      ? `臣妾${"絮絮叨叨说了很多很多话，".repeat(20)}${i}`
      : `家父是大理寺少卿甄远道。${i}`,
  }));
  writeFileSync(file, JSON.stringify(rows));
  return file;
}

async function findings(opts: Partial<PrepareOptions> & Pick<PrepareOptions, "tokenizer" | "modelDir">) {
  const result = await prepareDataset({ files: [dataset()], maxLength: 96, split: 0, ...opts }, tmpDir());
  return {
    result,
    findings: dataFindings({
      result,
      tokenizer: opts.tokenizer,
      modelDir: opts.modelDir,
      vocabRows: opts.tokenizer.vocabSize,
    }),
  };
}

describe("DATA_NO_STOP", () => {
  it("stays silent on a healthy dataset with 7.9% of samples longer than max_length", async () => {
    const { result, findings: f } = await findings({
      tokenizer: glm,
      modelDir: fixture("tokenizers", "spm-chatglm3"),
      template: "chatglm3",
      system: "现在你要扮演皇帝身边的女人--甄嬛",
    });
    expect(result.train.stats.truncated.samples).toBe(30);
    expect(result.train.stats.endsWithStop).toMatchObject({ samples: 350, of: 350, share: 1 });
    const codes = f.map((x) => x.code);
    expect(codes).toContain("DATA_TRUNCATED");
    expect(codes).not.toContain("DATA_NO_STOP");
    expect(f.filter((x) => x.severity === "error")).toEqual([]);
  });

  it("fires, as an error with the samples named, when the template never trains a stop token", async () => {
    // A template with no end-of-turn token at all: the answer's last piece is the last label.
    const noStop = jinjaTemplate(
      "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}",
      bl,
    );
    const { result, findings: f } = await findings({
      tokenizer: bl,
      modelDir: fixture("tokenizers", "bpe-bytelevel"),
      template: noStop,
    });
    expect(result.train.stats.truncated.samples).toBeGreaterThan(0);
    const stop = f.find((x) => x.code === "DATA_NO_STOP");
    expect(stop).toMatchObject({ severity: "error", evidence: { share: "0.0%", split: "train" } });
    expect(stop?.evidence.samples_not_cut).toBe(380 - result.train.stats.truncated.samples);
    expect(stop?.evidence.at).toContainEqual(expect.stringMatching(/train\.json:1 \(sample 0\)$/));
  });
});
