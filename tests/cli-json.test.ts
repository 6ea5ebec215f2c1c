// `--json` answers in JSON, always: every outcome of doctor, data and tokenize — a data stage that stops
// (empty response, malformed JSONL line, nothing trained, a template needing tokens the vocabulary lacks),
// config errors, a missing model folder, a crashing engine, a usage error, Ctrl-C, a bug — is one
// `{findings, summary}` document on stdout, findings in the doctor's shape, and a non-zero exit.
import { chmodSync, writeFileSync } from "node:fs";
import path from "node:path";
import { PassThrough } from "node:stream";
import { describe, expect, it } from "vitest";
import type { Command } from "../src/cli/command.js";
import type { Io } from "../src/cli/io.js";
import { runJson } from "../src/cli/main.js";
import { LorakitError } from "../src/errors.js";
import { STAGES } from "../src/findings/index.js";
import { fixture, runCli, tmpDir } from "./helpers.js";

const dir = tmpDir("lorakit-json-");
const chatglm = fixture("models", "chatglm3-single");
const llama = fixture("models", "tiny-llama");

const alpaca = (i: number, output = `answer ${i}`) => JSON.stringify({ instruction: `q${i}`, input: "", output });

function write(name: string, text: string): string {
  writeFileSync(path.join(dir, name), text);
  return name;
}

function config(name: string, model: string, data: string[], rest: string[] = []): string {
  return write(name, [`model: ${model}`, "data:", ...data.map((l) => `  ${l}`), ...rest, ""].join("\n"));
}

interface Doc {
  findings: {
    code: string;
    severity: string;
    title: string;
    evidence: Record<string, unknown>;
    fix: string;
    stage: string;
  }[];
  summary: { ok: boolean; errors: number; command?: string };
}

/** The run's stdout is exactly one JSON document of the finding shape; returns it. */
function one(stdout: string): Doc {
  const doc = JSON.parse(stdout) as Doc; // throws on text, on two documents, on anything after the first
  expect(Object.keys(doc).sort()).toEqual(["findings", "summary"]);
  for (const f of doc.findings) {
    expect(Object.keys(f).sort()).toEqual(["code", "evidence", "fix", "severity", "stage", "title"]);
    expect(f.code).toMatch(/^[A-Z][A-Z0-9_]+$/);
    expect(STAGES).toContain(f.stage);
    expect(f.fix.length).toBeGreaterThan(5);
  }
  return doc;
}

async function json(argv: string[], env: NodeJS.ProcessEnv = {}) {
  const r = await runCli(argv, { cwd: dir, env });
  return { ...r, doc: one(r.stdout) };
}

describe("doctor --json when the data stage stops", () => {
  it("an empty response: DATA_EMPTY_RESPONSE at its file and line", async () => {
    write("empty.jsonl", `${alpaca(0)}\n${alpaca(1, "")}\n`);
    const r = await json(["doctor", config("empty.yaml", chatglm, ["train: empty.jsonl"]), "--json"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe("");
    const [f] = r.doc.findings;
    expect(f).toMatchObject({ code: "DATA_EMPTY_RESPONSE", severity: "error", stage: "data" });
    expect(f?.evidence).toMatchObject({ file: path.join(dir, "empty.jsonl"), line: 2 });
    expect(f?.title).toContain("empty.jsonl:2");
    expect(r.doc.summary).toMatchObject({ ok: false, errors: 1, command: "doctor" });
  });

  it("a malformed JSONL line: DATA_BAD_JSON, every bad line", async () => {
    write("bad.jsonl", `${alpaca(0)}\n{"instruction": "q1", \n${alpaca(2)}\nnot json\n`);
    const r = await json(["doctor", config("bad.yaml", chatglm, ["train: bad.jsonl"]), "--json"]);
    expect(r.code).toBe(1);
    expect(r.doc.findings.map((f) => [f.code, f.evidence.line])).toEqual([
      ["DATA_BAD_JSON", 2],
      ["DATA_BAD_JSON", 4],
    ]);
  });

  it("nothing trained: DATA_NOTHING_TRAINED", async () => {
    write("long.jsonl", `${[0, 1, 2].map((i) => alpaca(i, "word ".repeat(60))).join("\n")}\n`);
    const r = await json(["doctor", config("short.yaml", chatglm, ["train: long.jsonl", "max_length: 8"]), "--json"]);
    expect(r.code).toBe(1);
    expect(r.doc.findings.map((f) => f.code)).toEqual(["DATA_NOTHING_TRAINED"]);
  });

  it("a template that needs tokens the vocabulary lacks: TEMPLATE_TOKEN_MISSING", async () => {
    write("ok.jsonl", `${alpaca(0)}\n${alpaca(1)}\n`);
    const r = await json(["doctor", config("tmpl.yaml", llama, ["train: ok.jsonl", "template: chatglm3"]), "--json"]);
    expect(r.code).toBe(1);
    expect(r.doc.findings[0]).toMatchObject({ code: "TEMPLATE_TOKEN_MISSING", stage: "data" });
  });
});

describe("doctor --json on other outcomes", () => {
  it("config errors, every one, with their lines", async () => {
    write("ok2.jsonl", `${alpaca(0)}\n`);
    const name = config("typo.yaml", chatglm, ["train: ok2.jsonl"], ["train:", "  lrr: 0.1", "  epochs: zero"]);
    const r = await json(["doctor", name, "--json"]);
    expect(r.code).toBe(1);
    const codes = r.doc.findings.map((f) => [f.code, f.stage, f.evidence.line]);
    expect(codes).toEqual(
      expect.arrayContaining([
        ["CONFIG_UNKNOWN_KEY", "config", 5],
        ["CONFIG_WRONG_TYPE", "config", 6],
      ]),
    );
  });

  it("a missing config file and a missing model folder", async () => {
    const missing = await json(["doctor", "nope.yaml", "--json"]);
    expect(missing.code).toBe(1);
    expect(missing.doc.findings[0]).toMatchObject({ code: "CONFIG_NOT_FOUND", stage: "config" });
    const noModel = await json([
      "doctor",
      config("nomodel.yaml", path.join(dir, "no-such-model"), ["train: ok.jsonl"]),
      "--json",
    ]);
    expect(noModel.code).toBe(1);
    expect(noModel.doc.findings.map((f) => f.code)).toContain("CONFIG_MISSING_PATH");
  });

  it("a usage error: CLI_BAD_ARGS, exit 2", async () => {
    const r = await json(["doctor", "--json"]);
    expect(r.code).toBe(2);
    expect(r.doc.findings[0]).toMatchObject({ code: "CLI_BAD_ARGS", stage: "config" });
    const unknown = await json(["doctor", "x.yaml", "--json", "--frobnicate"]);
    expect(unknown.code).toBe(2);
    const command = await json(["doctr", "--json"]);
    expect(command.code).toBe(2);
    expect(command.doc.findings[0]?.title).toContain("did you mean 'doctor'");
  });

  it("an engine that crashes: ENV_PROBE_FAILED as a finding, the other steps still reported", async () => {
    // An interpreter that answers lorakit's package check but dies (SIGSEGV) when the probe starts.
    const crashing = path.join(dir, "crashing-python");
    writeFileSync(
      crashing,
      `#!/bin/sh\ncase "$*" in *lorakit_engine.probe*) kill -SEGV $$ ;; esac\nexec ${process.env.LORAKIT_PYTHON} "$@"\n`,
    );
    chmodSync(crashing, 0o755);
    write("ok3.jsonl", `${Array.from({ length: 40 }, (_, i) => alpaca(i)).join("\n")}\n`);
    const name = config("crash.yaml", chatglm, ["train: ok3.jsonl"]);
    const r = await json(["doctor", name, "--json", "--skip-model"], { LORAKIT_PYTHON: crashing });
    expect(r.code).toBe(1);
    const probe = r.doc.findings.find((f) => f.code === "ENV_PROBE_FAILED");
    expect(String(probe?.evidence.error)).toContain("killed by SIGSEGV");
  });

  it("Ctrl-C: INTERRUPTED, exit 130", async () => {
    const ac = new AbortController();
    ac.abort();
    const r = await runCli(["doctor", "typo.yaml", "--json"], { cwd: dir, signal: ac.signal });
    expect(r.code).toBe(130);
    expect(one(r.stdout).findings[0]).toMatchObject({ code: "INTERRUPTED", severity: "error" });
  });
});

describe("data and tokenize --json", () => {
  it("data: the same documents for the same failures", async () => {
    const r = await json(["data", "bad.yaml", "--json"]);
    expect(r.code).toBe(1);
    expect(r.doc.findings.map((f) => f.code)).toEqual(["DATA_BAD_JSON", "DATA_BAD_JSON"]);
    expect(r.doc.summary.command).toBe("data");
  });

  it("tokenize: a folder without a tokenizer, a --chat file that is not JSON", async () => {
    const noTok = await json(["tokenize", "--model", dir, "--json", "hi"]);
    expect(noTok.code).toBe(1);
    expect(noTok.doc.findings[0]).toMatchObject({ code: "TOKENIZER_NOT_FOUND", stage: "data" });
    const chat = write("chat.json", "{not json");
    const bad = await json(["tokenize", "--model", chatglm, "--chat", chat, "--json"]);
    expect(bad.doc.findings[0]?.code).toBe("DATA_BAD_JSON");
    const usage = await json(["tokenize", "--json", "hi"]);
    expect(usage.code).toBe(2);
  });
});

describe("runJson", () => {
  function io(signal?: AbortSignal): { io: Io; stdout: () => string } {
    const stdout = new PassThrough();
    let text = "";
    stdout.on("data", (d) => {
      text += d;
    });
    return {
      io: {
        stdout,
        stderr: new PassThrough(),
        stdin: new PassThrough(),
        env: {},
        cwd: dir,
        ...(signal ? { signal } : {}),
      },
      stdout: () => text,
    };
  }
  const cmd = (run: Command["run"]): Command => ({
    name: "test",
    summary: "",
    options: {},
    positionals: [0, 9],
    examples: [],
    run,
  });

  it("a bug is INTERNAL_ERROR with the stack; what the command printed before is not shown", async () => {
    const t = io();
    const code = await runJson(
      cmd(async (_a, cio) => {
        cio.stdout.write('{"half": ');
        throw new TypeError("x is undefined");
      }),
      "doctor",
      [],
      t.io,
    );
    expect(code).toBe(1);
    const [f] = one(t.stdout()).findings;
    expect(f).toMatchObject({ code: "INTERNAL_ERROR", severity: "error" });
    expect(String(f?.evidence.stack)).toContain("TypeError: x is undefined");
  });

  it("after Ctrl-C nothing more is printed, whatever the command still writes", async () => {
    const ac = new AbortController();
    const t = io(ac.signal);
    let late: (() => void) | undefined;
    const finished = new Promise<void>((resolve) => {
      late = resolve;
    });
    const code = runJson(
      cmd(async (_a, cio) => {
        ac.abort(); // Ctrl-C while the command works …
        await new Promise((r) => setTimeout(r, 0));
        cio.stdout.write('{"late": true}\n'); // … which still ends and writes
        late?.();
        return 0;
      }),
      "data",
      [],
      t.io,
    );
    expect(await code).toBe(130);
    await finished;
    expect(one(t.stdout()).findings[0]?.code).toBe("INTERRUPTED");
  });

  it("a LorakitError carrying several problems: one finding each", async () => {
    const t = io();
    const err = LorakitError.fromList([
      new LorakitError("DATA_BAD_JSON", "malformed JSON line", {
        where: { file: "a.jsonl", line: 3 },
        hint: "Fix it.",
      }),
      new LorakitError("DATA_MISSING_FIELD", "alpaca sample lacks `output`", {
        where: { file: "a.jsonl", line: 9, key: "output" },
      }),
    ]);
    expect(
      await runJson(
        cmd(async () => {
          throw err;
        }),
        "data",
        [],
        t.io,
      ),
    ).toBe(1);
    const doc = one(t.stdout());
    expect(doc.findings).toEqual([
      {
        code: "DATA_BAD_JSON",
        severity: "error",
        title: "a.jsonl:3: malformed JSON line",
        evidence: { message: "malformed JSON line", file: "a.jsonl", line: 3 },
        fix: "Fix it.",
        stage: "data",
      },
      expect.objectContaining({ code: "DATA_MISSING_FIELD", evidence: expect.objectContaining({ key: "output" }) }),
    ]);
  });
});
