import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { fixture, runCli, tmpDir } from "./helpers.js";

describe("lorakit compare", () => {
  it("trains the same recipe on two models and reports them side by side", async () => {
    const dir = tmpDir();
    const records = Array.from({ length: 12 }, (_, i) => ({
      instruction: `say ${i % 3}`,
      input: "",
      output: `word ${i % 3}`,
    }));
    writeFileSync(path.join(dir, "train.json"), JSON.stringify(records));
    const recipe = (model: string) =>
      JSON.stringify({
        model,
        data: { train: "train.json", eval_split: 0.25, max_length: 64 },
        train: { epochs: 1, batch_size: 4, grad_accum: 1, lr: 1e-3, log_every: 1 },
        samples: { count: 2, max_new_tokens: 4 },
      });
    writeFileSync(path.join(dir, "llama.yaml"), recipe(fixture("models", "tiny-llama")));
    writeFileSync(path.join(dir, "glm.yaml"), recipe(fixture("models", "chatglm3-single")));
    const r = await runCli(["compare", "llama.yaml", "glm.yaml", "--out", "cmp.html"], { cwd: dir });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/final train loss\s+\d\.\d{4}\s+\d\.\d{4}/);
    expect(r.stdout).toContain("chatglm3-single");
    const html = readFileSync(path.join(dir, "cmp.html"), "utf8");
    expect(html).toContain("<svg");
    expect(html).toContain("A train");
    // Finished runs are read back, not trained again.
    const again = await runCli(["compare", "llama.yaml", "glm.yaml", "--no-train", "--out", "cmp2.html"], { cwd: dir });
    expect(again.code).toBe(0);
    expect(again.stdout).not.toContain("training");
  });
});
