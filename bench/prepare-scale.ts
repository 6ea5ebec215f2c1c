// Data preparation at scale, side by side on one machine: `lorakit data run.yaml` (the product's own
// preparation: stream, render with ChatGLM3's template, label, write tokens.safetensors) on a generated chat
// JSONL — first run, cached run, and on one core — against Python doing the same tokenization with the
// `sentencepiece` (C++) and `tokenizers` (Rust) libraries (bench/prepare_baseline.py), whose input_ids and
// labels must come out byte for byte the same. Then the tokenizers alone on every text of the records:
// lorakit's SentencePiece, sentencepiece, tokenizers, and @huggingface/tokenizers (lorakit's tokenizer.json
// path) on a tokenizer.json made from the same tokenizer.model.
//
// Each command runs as its own process under /usr/bin/time (wall, user+system CPU, peak RSS).
//
//   npm run build
//   npx vite-node bench/prepare-scale.ts -- --samples 50000
//   npx vite-node bench/prepare-scale.ts -- --samples 1000000 --out /tmp/lorakit-1m
//
// Options: --model DIR (ChatGLM3-6B folder, default ../shared/models/chatglm3-6b), --python PY (default: the
// engine's venv), --skip-python, --skip-tokenize, --skip-one-core, --hf-prepare (tokenizers' full preparation
// too; slow). Results: a table on stdout and results.json in --out.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadTokenizer } from "../src/data/tokenizer.js";
import { ROOT } from "../src/engine/python.js";

const argv = process.argv;
const arg = (name: string, def: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? (argv[i + 1] as string) : def;
};
const flag = (name: string) => argv.includes(`--${name}`);
const SYSTEM = "现在你要扮演皇帝身边的女人--甄嬛";

/** Every text the ChatGLM3 template encodes for the records (contents and the "\n" after each role). */
function textsOf(file: string): string[] {
  const texts: string[] = [];
  for (const line of readFileSync(file, "utf8").split("\n")) {
    if (!line.trim()) continue;
    const r = JSON.parse(line) as { instruction: string; input?: string; output: string; history?: string[][] };
    texts.push(r.instruction, r.input ?? "", r.output, "\n", ...(r.history ?? []).flat());
  }
  return texts.filter((t) => t.length > 0);
}

// A child mode: the TypeScript tokenizers on the texts, one thread, CPU-timed (stdout: one JSON line).
if (flag("child-tokenize")) {
  const texts = textsOf(arg("data", ""));
  const out: Record<string, unknown> = { texts: texts.length };
  /** The best of `reps` runs (the least disturbed by the machine's other work); the ids hashed once. */
  const time = async (name: string, dir: string, some: string[], reps = 3) => {
    const tok = await loadTokenizer(dir);
    const h = createHash("sha256");
    for (const t of some) h.update(`${tok.encode(t).join(",")};`);
    let [wall, cpu, n] = [Number.POSITIVE_INFINITY, Number.POSITIVE_INFINITY, 0];
    for (let r = 0; r < reps; r++) {
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      n = 0;
      for (const t of some) n += tok.encode(t).length;
      const c = process.cpuUsage(c0);
      wall = Math.min(wall, (performance.now() - t0) / 1000);
      cpu = Math.min(cpu, (c.user + c.system) / 1e6);
    }
    out[name] = {
      texts: some.length,
      tokens: n,
      wall_s: +wall.toFixed(2),
      cpu_s: +cpu.toFixed(2),
      tokens_per_s: Math.round(n / wall),
      tokens_per_cpu_s: Math.round(n / cpu),
      sha256: h.digest("hex"),
    };
  };
  await time("lorakit_sentencepiece", arg("model", ""), texts);
  // The same split as prepare_baseline.py's: texts with a CJK character, and the others.
  const cjk = /[\u4e00-\u9fff]/;
  await time(
    "lorakit_sentencepiece_zh",
    arg("model", ""),
    texts.filter((t) => cjk.test(t)),
  );
  await time(
    "lorakit_sentencepiece_en",
    arg("model", ""),
    texts.filter((t) => !cjk.test(t)),
  );
  const json = arg("json", "");
  if (json) await time("huggingface_tokenizers_js", json, texts.slice(0, Number(arg("json-limit", "20000"))), 1);
  console.log(JSON.stringify(out));
  process.exit(0);
}

interface Measured {
  wall_s: number;
  cpu_s: number;
  peak_rss_mib: number;
  stdout: string;
  code: number;
}

/** One command under /usr/bin/time: wall, CPU (user + system, children included), peak RSS. */
function measure(cmd: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Measured {
  const tfile = path.join(os.tmpdir(), `lorakit-bench-time-${process.pid}`);
  const r = spawnSync("/usr/bin/time", ["-o", tfile, "-f", "%e %U %S %M", ...cmd], {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, ...opts.env },
    encoding: "utf8",
    maxBuffer: 1 << 30,
  });
  const [wall, user, sys, rss] = readFileSync(tfile, "utf8").trim().split("\n").at(-1)?.split(" ").map(Number) ?? [];
  rmSync(tfile, { force: true });
  if (r.status !== 0) console.error(`${cmd.join(" ")} exited ${r.status}:\n${r.stderr.slice(-4000)}`);
  return {
    wall_s: wall as number,
    cpu_s: +((user as number) + (sys as number)).toFixed(2),
    peak_rss_mib: Math.round((rss as number) / 1024),
    stdout: r.stdout,
    code: r.status ?? -1,
  };
}

/** sha256 of each tensor's bytes in a safetensors file, read in pieces (the file can be gigabytes). */
function tensorSha(file: string): Record<string, string> {
  const fd = openSync(file, "r");
  try {
    const len = Buffer.alloc(8);
    readSync(fd, len, 0, 8, 0);
    const n = Number(len.readBigUInt64LE(0));
    const head = Buffer.alloc(n);
    readSync(fd, head, 0, n, 8);
    const header = JSON.parse(head.toString("utf8")) as Record<string, { data_offsets?: [number, number] }>;
    const out: Record<string, string> = {};
    const buf = Buffer.allocUnsafe(8 << 20);
    for (const [name, t] of Object.entries(header)) {
      if (!t.data_offsets) continue;
      const h = createHash("sha256");
      for (let at = t.data_offsets[0]; at < t.data_offsets[1]; ) {
        const got = readSync(fd, buf, 0, Math.min(buf.length, t.data_offsets[1] - at), 8 + n + at);
        h.update(buf.subarray(0, got));
        at += got;
      }
      out[name] = h.digest("hex");
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

const samples = Number(arg("samples", "50000"));
const out = path.resolve(arg("out", path.join(os.tmpdir(), "lorakit-prepare-scale")));
const model = path.resolve(arg("model", path.join(ROOT, "..", "shared", "models", "chatglm3-6b")));
const pythonDir = path.join(os.homedir(), ".cache", "lorakit", "python");
const python =
  arg("python", "") ||
  (existsSync(pythonDir)
    ? readdirSync(pythonDir)
        .map((h) => path.join(pythonDir, h, "bin", "python"))
        .filter((p) => existsSync(p))
        .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0]
    : undefined) ||
  "python3";
if (!existsSync(path.join(ROOT, "dist", "cli", "main.js"))) throw new Error("run `npm run build` first");
mkdirSync(out, { recursive: true });

const data = path.join(out, `chat-${samples}.jsonl`);
if (!existsSync(data)) {
  console.log(`generating ${data} …`);
  const g = spawnSync(
    path.join(ROOT, "node_modules", ".bin", "vite-node"),
    [path.join(ROOT, "bench", "gen-chat-jsonl.ts"), "--", "--samples", String(samples), "--out", data],
    { stdio: "inherit" },
  );
  if (g.status !== 0) throw new Error("generating the data failed");
}
const bytes = statSync(data).size;
const runDir = path.join(out, `run-${samples}`);
mkdirSync(runDir, { recursive: true });
writeFileSync(
  path.join(runDir, "run.yaml"),
  JSON.stringify(
    {
      model,
      data: { train: data, system: SYSTEM, max_length: 512, eval_split: 0 },
      lora: { r: 8, alpha: 32, dropout: 0.1 },
      train: { batch_size: 4, grad_accum: 2, lr: 1e-4, epochs: 1 },
    },
    null,
    1,
  ),
);
const cpus = os.availableParallelism();
console.log(
  `${samples} samples, ${(bytes / 2 ** 20).toFixed(0)} MiB, ${cpus} cores (${os.cpus()[0]?.model}), python ${python}`,
);

const rows: Record<string, unknown>[] = [];
const results: Record<string, unknown> = { samples, bytes, cores: cpus, cpu: os.cpus()[0]?.model, rows };
const row = (name: string, m: Measured, extra: Record<string, unknown>) => {
  const r = { name, wall_s: m.wall_s, cpu_s: m.cpu_s, peak_rss_mib: m.peak_rss_mib, ...extra };
  rows.push(r);
  console.log(JSON.stringify(r));
};

// lorakit: the product's CLI, first run (nothing prepared), cached run, and on one core.
const lorakit = (label: string, pin?: string) => {
  const cmd = ["node", path.join(ROOT, "bin", "lorakit.js"), "data", "run.yaml"];
  const m = measure(pin ? ["taskset", "-c", pin, ...cmd] : cmd, { cwd: runDir });
  const line = /data\s+(\d+) train \/ (\d+) eval samples, (\d+) tokens/.exec(m.stdout);
  const tokens = Number(line?.[3] ?? 0);
  const dir = /→ (\S+)/.exec(m.stdout)?.[1] ?? "";
  row(label, m, {
    samples_per_s: Math.round(samples / m.wall_s),
    tokens_per_s: Math.round(tokens / m.wall_s),
    tokens,
    reused: m.stdout.includes(", reused"),
  });
  return dir;
};
rmSync(path.join(runDir, "prepared"), { recursive: true, force: true });
const prepared = lorakit(`lorakit data, first run (${cpus} cores)`);
lorakit("lorakit data, cached run");
const shas = tensorSha(path.join(prepared, "tokens.safetensors"));
const ours = { input_ids: shas.input_ids, labels: shas.labels };
results.lorakit_sha256 = ours;
if (!flag("skip-one-core")) {
  rmSync(path.join(runDir, "prepared"), { recursive: true, force: true });
  lorakit("lorakit data, first run on 1 core (taskset -c 0)", "0");
}

// Python: the same tokenization with the reference libraries.
if (!flag("skip-python")) {
  const base = [python, path.join(ROOT, "bench", "prepare_baseline.py")];
  const common = ["--data", data, "--model", path.join(model, "tokenizer.model"), "--system", SYSTEM];
  const py = (label: string, extra: string[], pin?: string) => {
    const cmd = [...base, "prepare", ...common, "--out", path.join(out, "py"), ...extra];
    const m = measure(pin ? ["taskset", "-c", pin, ...cmd] : cmd);
    const r = JSON.parse(m.stdout.trim().split("\n").at(-1) ?? "{}") as Record<string, unknown>;
    row(label, m, {
      samples_per_s: Math.round(samples / m.wall_s),
      tokens_per_s: Math.round(Number(r.tokens) / m.wall_s),
      tokens: r.tokens,
      same_ids_as_lorakit: r.input_ids_sha256 === ours.input_ids && r.labels_sha256 === ours.labels,
    });
  };
  py("python + sentencepiece, 1 process (taskset -c 0)", ["--tok", "spm"], "0");
  py(`python + sentencepiece, ${cpus} processes`, ["--tok", "spm", "--procs", String(cpus)]);
  if (flag("hf-prepare")) py(`python + tokenizers, ${cpus} processes`, ["--tok", "hf", "--procs", String(cpus)]);
}

// The tokenizers alone, on every text the template encodes.
if (!flag("skip-tokenize")) {
  const jsonDir = path.join(out, "chatglm3-tokenizer-json");
  const tok: Record<string, unknown> = {};
  for (const threads of [1, 2]) {
    const m = measure([
      python,
      path.join(ROOT, "bench", "prepare_baseline.py"),
      "tokenize",
      "--data",
      data,
      "--model",
      path.join(model, "tokenizer.model"),
      "--hf-threads",
      String(threads),
      "--save-json",
      jsonDir,
    ]);
    Object.assign(tok, JSON.parse(m.stdout.trim().split("\n").at(-1) ?? "{}"));
  }
  const ts = measure([
    path.join(ROOT, "node_modules", ".bin", "vite-node"),
    path.join(ROOT, "bench", "prepare-scale.ts"),
    "--",
    "--child-tokenize",
    "--data",
    data,
    "--model",
    model,
    "--json",
    jsonDir,
  ]);
  Object.assign(tok, JSON.parse(ts.stdout.trim().split("\n").at(-1) ?? "{}"));
  results.tokenize = tok;
  console.log(JSON.stringify(tok));
}

writeFileSync(path.join(out, "results.json"), `${JSON.stringify(results, null, 1)}\n`);
console.log(
  `\n| run | wall s | CPU s | peak RSS MiB | samples/s | tokens/s | note |\n| --- | ---: | ---: | ---: | ---: | ---: | --- |`,
);
for (const r of rows) {
  const note = r.reused ? "reused" : r.same_ids_as_lorakit === undefined ? "" : `same ids: ${r.same_ids_as_lorakit}`;
  console.log(
    `| ${r.name} | ${r.wall_s} | ${r.cpu_s} | ${r.peak_rss_mib} | ${Number(r.samples_per_s).toLocaleString("en-US")} | ${Number(r.tokens_per_s).toLocaleString("en-US")} | ${note} |`,
  );
}
console.log(`results: ${path.join(out, "results.json")}`);
