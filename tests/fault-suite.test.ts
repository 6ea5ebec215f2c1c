// The fault suite: a real CPU run on the tiny Llama, killed with SIGKILL at every phase — the lorakit CLI while
// it prepares data, trains and writes the report; the engine mid-step, between a checkpoint's files, before a
// checkpoint's rename, between the adapter's files and before its rename — plus a second Ctrl-C, each time
// followed by `--resume`, until the run completes. The kills come from outside the product: the CLI through
// tests/fault/preload.mjs, the engine through engine/tests/fixtures/fault (see both for the points).
//
// After each fault: every checkpoint and prepared file that existed before it is byte for byte still there, the
// run is failed (or stopped) in the store with a reason that names the cause, the lock is released or taken over
// with a message; after the last resume: the losses, learning rates, gradient norms and eval losses of all 12
// steps equal those of a run never interrupted (1e-5), so do its checkpoints and adapter, and no temporary file
// is left. The table printed at the end sums it up. Bounded: 12 steps of a 2-layer model, loopback only, in
// temporary folders removed at the end.
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../src/config/load.js";
import { loadTokenizer } from "../src/data/index.js";
import { readCheckpoint } from "../src/models/checkpoint.js";
import { LOCK_FILE, type LockHolder } from "../src/runs/lock.js";
import { liveness, type ProcessId } from "../src/runs/owner.js";
import { prepareForRun } from "../src/train/prepare-run.js";
import { buildCli, Lorakit, runLorakit } from "./fault/cli.js";
import { fixture, tmpDir, writeCodeWords } from "./helpers.js";

const TOTAL = 12;
let cli: string;
let work: string; // the faulted run
let ref: string; // the same run, never interrupted
let refDone: Promise<void>;
const runDir = () => path.join(work, "runs", "run");

function writeRun(dir: string): void {
  writeCodeWords(dir);
  const cfg = {
    model: fixture("models", "tiny-llama"),
    data: { train: "train.json", eval_split: 0.2, system: "You are terse.", max_length: 96 },
    lora: { r: 4, alpha: 8, dropout: 0.1 }, // dropout on: the RNG state must come back too
    train: {
      epochs: 2,
      max_steps: TOTAL,
      batch_size: 2,
      grad_accum: 1,
      lr: 5e-3,
      log_every: 1,
      save_every: 2,
      eval_every: 4,
      keep_checkpoints: 20,
    },
    samples: { count: 1, max_new_tokens: 4 },
  };
  writeFileSync(path.join(dir, "run.yaml"), JSON.stringify(cfg, null, 1));
}

// ---------------------------------------------------------------- reading what a run left

function walk(dir: string, base = dir): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) => {
    const p = path.join(dir, d.name);
    return d.isDirectory() ? walk(p, base) : [path.relative(base, p)];
  });
}

const sha = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");

/** Work that is done and must never be lost: complete checkpoints, complete prepared entries, a complete adapter
 * (its README.md, the model card, is rewritten with each run's numbers). path → [sha256, bytes]. */
function durable(dir: string): Map<string, [string, number]> {
  const out = new Map<string, [string, number]>();
  for (const rel of walk(dir)) {
    const keep =
      /^runs\/run\/checkpoints\/step-\d+\//.test(rel) ||
      (/^runs\/run\/adapter\//.test(rel) && !rel.endsWith("README.md")) ||
      /^prepared\/[0-9a-f]{16}\//.test(rel);
    if (keep) out.set(rel, [sha(path.join(dir, rel)), statSync(path.join(dir, rel)).size]);
  }
  return out;
}

/** Bytes of `before` that are gone or changed now. */
function bytesLost(before: Map<string, [string, number]>, dir: string): { bytes: number; files: string[] } {
  const now = durable(dir);
  const files = [...before].filter(([rel, [h]]) => now.get(rel)?.[0] !== h).map(([rel]) => rel);
  return { bytes: files.reduce((n, rel) => n + (before.get(rel)?.[1] ?? 0), 0), files };
}

/** What a kill or a write leaves behind until the next start clears it. */
function leftovers(dir: string): string[] {
  return walk(dir).filter((rel) =>
    /(^prepared\/\.tmp-|\/checkpoints\/\.tmp-|\/\.tmp-adapter\/|\/\.lorakit-tmp-|\/run\.lock|^runs\/run\/smoke\/)/.test(
      rel,
    ),
  );
}

const completeSteps = (dir: string) =>
  readdirSync(path.join(dir, "runs", "run", "checkpoints"))
    .filter((n) => /^step-\d+$/.test(n))
    .map((n) => Number(n.slice(5)))
    .sort((a, b) => a - b);

interface Row {
  status: string;
  error: string | null;
  owner_pid: number | null;
}

/** The run's row as it is on disk (read-only: reading does not settle it). */
function row(dir: string): Row | undefined {
  const file = path.join(dir, "runs", "lorakit.db");
  if (!existsSync(file)) return undefined;
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare("SELECT status, error, owner_pid FROM runs WHERE name='run'").get() as Row | undefined;
  } finally {
    db.close();
  }
}

interface Metric {
  step: number;
  kind: string;
  loss: number;
  lr: number | null;
  grad_norm: number | null;
}

function metrics(dir: string): Metric[] {
  const db = new Database(path.join(dir, "runs", "lorakit.db"), { readonly: true });
  try {
    return db.prepare("SELECT step, kind, loss, lr, grad_norm FROM metrics ORDER BY kind, step").all() as Metric[];
  } finally {
    db.close();
  }
}

/** Metrics of the faulted run that differ from the uninterrupted run's (steps it has not reached are skipped). */
function metricsOff(): string[] {
  const want = new Map(metrics(ref).map((m) => [`${m.kind}:${m.step}`, m]));
  const off: string[] = [];
  for (const m of metrics(work)) {
    const r = want.get(`${m.kind}:${m.step}`);
    const close = (a: number | null, b: number | null | undefined) =>
      a === null ? b === null : b !== null && b !== undefined && Math.abs(a - b) <= 1e-5;
    if (!r || !close(m.loss, r.loss) || !close(m.lr, r.lr) || !close(m.grad_norm, r.grad_norm))
      off.push(`${m.kind} step ${m.step}: ${JSON.stringify(m)} vs ${JSON.stringify(r)}`);
  }
  return off;
}

function storeRows(dir: string): string[] {
  const db = new Database(path.join(dir, "runs", "lorakit.db"), { readonly: true });
  try {
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name").all() as {
      name: string;
    }[];
    return tables.flatMap((t) =>
      (db.prepare(`SELECT * FROM ${t.name}`).all() as unknown[]).map((r) => `${t.name} ${JSON.stringify(r)}`),
    );
  } finally {
    db.close();
  }
}

const trainSteps = (dir: string) =>
  metrics(dir)
    .filter((m) => m.kind === "train")
    .map((m) => m.step);

const engineLog = () => readFileSync(path.join(runDir(), "engine.log"), "utf8");

// ---------------------------------------------------------------- the table

interface Fault {
  fault: string;
  killed: string;
  injected: boolean;
  causeNamed: boolean;
  bytesLost: number;
  /** Whether the run resumed from the fault with the uninterrupted run's numbers (set by the next link). */
  resumedExactly: boolean | null;
}
const faults: Fault[] = [];

function resumedExactly(): void {
  const last = faults.at(-1);
  if (last) last.resumedExactly = metricsOff().length === 0;
}

const run = (args: string[], env: Record<string, string> = {}) => new Lorakit(cli, args, { cwd: work, env });
const TRAIN = ["train", "run.yaml", "--no-smoke"];
const RESUME = [...TRAIN, "--resume"];

/** Records a fault once its run has ended: what it lost, and the previous fault's resume verdict. */
function recordFault(f: Omit<Fault, "bytesLost" | "resumedExactly">, before: Map<string, [string, number]>): void {
  const lost = bytesLost(before, work);
  expect(lost.files).toEqual([]);
  resumedExactly();
  faults.push({ ...f, bytesLost: lost.bytes, resumedExactly: null });
}

/** A start killed by the engine fault `point`, with the checks every engine kill shares. */
async function engineKill(point: string, args: string[]): Promise<Lorakit> {
  const before = durable(work);
  const p = run(args, { LORAKIT_TEST_KILL_AT: point });
  const end = await p.ended;
  expect(end.code, p.output).toBe(1);
  const injected = engineLog().includes(`[lorakit-test-fault] SIGKILL at ${point.split(":").slice(0, 2).join(":")}`);
  expect(injected, engineLog()).toBe(true);
  expect(p.stderr).toMatch(/error ENGINE_CRASH: .*the engine was killed by SIGKILL/);
  const r = row(work);
  expect(r?.status).toBe("failed");
  const causeNamed = /^ENGINE_CRASH: the engine was killed by SIGKILL/.test(r?.error ?? "");
  expect(causeNamed, r?.error ?? "").toBe(true);
  expect(existsSync(path.join(runDir(), LOCK_FILE))).toBe(false);
  await refDone;
  expect(metricsOff()).toEqual([]);
  recordFault({ fault: `engine ${point}`, killed: "engine", injected, causeNamed }, before);
  return p;
}

/** The next start says what it found: the run row settled, the lock taken over (both naming the dead pid). */
function settledBy(p: Lorakit, deadPid: number): boolean {
  return p.output.includes(
    `run 'run' was left running: the lorakit process (pid ${deadPid}) ended without finishing: killed or crashed; marked failed`,
  );
}
const tookOver = (p: Lorakit, deadPid: number) =>
  new RegExp(
    `took over the lock of lorakit pid ${deadPid} \\(started [^)]+\\), which ended without releasing it \\(killed or crashed\\)`,
  ).test(p.output);

async function gone(pid: number, what: string): Promise<void> {
  for (let i = 0; i < 600 && liveness({ pid, host: hostname(), proc_start: null }) !== "gone"; i++)
    await new Promise((r) => setTimeout(r, 100));
  expect(liveness({ pid, host: hostname(), proc_start: null }), `${what} (pid ${pid}) still runs`).toBe("gone");
}

beforeAll(async () => {
  cli = await buildCli("lorakit-fault-suite");
  work = tmpDir("lorakit-fault-");
  ref = tmpDir("lorakit-fault-ref-");
  writeRun(work);
  writeRun(ref);
  // The uninterrupted run, alongside the first faults.
  refDone = runLorakit(cli, TRAIN, { cwd: ref }).then((r) => {
    if (r.code !== 0) throw new Error(`the uninterrupted run failed:\n${r.output}`);
  });
});

/** Engines the suite held inside a step: killed at the end if a failed test left them (they wait for a kill). */
const held: ProcessId[] = [];

afterAll(() => {
  for (const e of held) if (liveness(e) === "alive") process.kill(e.pid, "SIGKILL"); // its start time matched
  const rows = faults.map((f) => [
    f.fault,
    f.killed,
    f.injected ? "yes" : "NO",
    f.resumedExactly === null ? "—" : f.resumedExactly ? "yes" : "NO",
    String(f.bytesLost),
    f.causeNamed ? "yes" : "NO",
  ]);
  const head = ["fault", "killed", "injected", "resumed exactly", "bytes lost", "error named its cause"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] as string).length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i] as number)).join("  ");
  const sum = (f: (x: Fault) => boolean) => faults.filter(f).length;
  console.log(
    [
      "",
      "fault suite: kill -9 at every phase, then --resume",
      line(head),
      line(widths.map((w) => "-".repeat(w))),
      ...rows.map(line),
      "",
      `faults injected: ${sum((f) => f.injected)} of ${faults.length}; runs resumed exactly: ${sum((f) => f.resumedExactly === true)} of ${faults.length}; ` +
        `bytes lost: ${faults.reduce((n, f) => n + f.bytesLost, 0)}; errors that named their cause: ${sum((f) => f.causeNamed)} of ${faults.length}`,
    ].join("\n"),
  );
  for (const d of [work, ref]) if (d) rmSync(d, { recursive: true, force: true });
});

describe("fault suite: kill -9 at every phase of a run, then --resume", () => {
  let dataKill: Lorakit;

  it("lorakit killed while it prepares the data: no cache entry is half-written", async () => {
    const before = durable(work);
    dataKill = run(TRAIN, { LORAKIT_TEST_KILL_FS: "renameSync:/prepared/\\.tmp-" });
    const end = await dataKill.ended;
    expect(end.signal, dataKill.output).toBe("SIGKILL");
    const injected = dataKill.stderr.includes("[lorakit-test-fault] SIGKILL at renameSync(");
    expect(injected).toBe(true);
    const prepared = readdirSync(path.join(work, "prepared"));
    expect(prepared.filter((n) => /^[0-9a-f]{16}$/.test(n))).toEqual([]); // no entry: only its temporary folder
    expect(prepared.filter((n) => n.startsWith(".tmp-"))).toHaveLength(1);
    expect(row(work)).toBeUndefined(); // it had not reached the store
    const holder = JSON.parse(readFileSync(path.join(runDir(), LOCK_FILE), "utf8")) as LockHolder;
    expect(holder.pid).toBe(dataKill.pid); // its lock is left: the next start takes it over, and says so
    recordFault({ fault: "lorakit data:before-rename", killed: "lorakit", injected, causeNamed: false }, before);
  });

  it("the engine killed mid-step: step 2's checkpoint kept, the run failed with the cause", async () => {
    const p = await engineKill("step:mid:3", TRAIN);
    // The data fault's leftovers: its lock taken over (naming it), its temporary folder removed, the entry whole.
    (faults[0] as Fault).causeNamed = tookOver(p, dataKill.pid);
    expect(tookOver(p, dataKill.pid), p.output).toBe(true);
    expect(readdirSync(path.join(work, "prepared")).filter((n) => n.startsWith(".tmp-"))).toEqual([]);
    expect(completeSteps(work)).toEqual([2]);
    expect(trainSteps(work)).toEqual([1, 2]);
  });

  it("the engine killed between a checkpoint's files: the half-written one is never taken for a checkpoint", async () => {
    const p = await engineKill("checkpoint:between-files:4", RESUME);
    expect(p.stdout).toContain("resuming at step 2");
    expect(completeSteps(work)).toEqual([2]);
    expect(existsSync(path.join(runDir(), "checkpoints", ".tmp-step-4"))).toBe(true); // cleared by the next start
  });

  it("the engine killed before a checkpoint's rename", async () => {
    const p = await engineKill("checkpoint:before-rename:6", RESUME);
    expect(p.stdout).toContain("resuming at step 2");
    expect(completeSteps(work)).toEqual([2, 4]);
    expect(readdirSync(path.join(runDir(), "checkpoints")).filter((n) => n.startsWith(".tmp-"))).toEqual([
      ".tmp-step-6",
    ]);
  });

  let cliKill: Lorakit;
  it("lorakit killed mid-training: the run stays `running` only until the store is next opened", async () => {
    const before = durable(work);
    cliKill = run(RESUME, { LORAKIT_TEST_KILL_OUT: "^checkpoint +step 8 " });
    const holder = async () => JSON.parse(readFileSync(path.join(runDir(), LOCK_FILE), "utf8")) as LockHolder;
    await cliKill.waitFor(/step +7\/12/, "step 7");
    const engine = (await holder()).engine;
    expect(engine?.pid).toBeGreaterThan(0);
    const end = await cliKill.ended;
    expect(end.signal, cliKill.output).toBe("SIGKILL");
    const injected = cliKill.stderr.includes("[lorakit-test-fault] SIGKILL at stdout");
    // Its engine, left without a reader, ends at its next event (it writes no checkpoint after step 8).
    await gone(engine?.pid as number, "the engine");
    expect(completeSteps(work)).toEqual([2, 4, 6, 8]);
    const r = row(work);
    expect(r?.status).toBe("running");
    expect(r?.owner_pid).toBe(cliKill.pid);
    expect(trainSteps(work)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(metricsOff()).toEqual([]);
    recordFault({ fault: "lorakit mid-training", killed: "lorakit", injected, causeNamed: false }, before);
  });

  it("a second Ctrl-C quits at once and says what it gives up; a second lorakit of the run is refused meanwhile", async () => {
    const before = durable(work);
    const p = run(RESUME, { LORAKIT_TEST_HOLD_AT: "step:10" });
    await p.waitFor(/step +9\/12/, "step 9");
    for (let i = 0; i < 600 && !engineLog().includes("[lorakit-test-fault] holding at step:10"); i++)
      await new Promise((r) => setTimeout(r, 100));
    // The killed lorakit's run was settled and its lock taken over, both saying whose they were.
    (faults.at(-1) as Fault).causeNamed = settledBy(p, cliKill.pid) && tookOver(p, cliKill.pid);
    expect(settledBy(p, cliKill.pid), p.output).toBe(true);
    expect(tookOver(p, cliKill.pid), p.output).toBe(true);

    const second = await runLorakit(cli, RESUME, { cwd: work });
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(
      `error RUN_LOCKED: ${path.join(runDir(), LOCK_FILE)}: run 'run' is being trained by another lorakit: lorakit pid ${p.pid}`,
    );
    expect(second.stderr).toContain(`kill -INT ${p.pid}`);

    const engine = (JSON.parse(readFileSync(path.join(runDir(), LOCK_FILE), "utf8")) as LockHolder).engine;
    if (engine) held.push(engine);
    p.child.kill("SIGINT");
    await p.waitFor(/stopping: a training step in progress ends/, "the first Ctrl-C's message");
    p.child.kill("SIGINT");
    const end = await p.ended;
    expect(end.code, p.output).toBe(130);
    const step8 = path.join(runDir(), "checkpoints", "step-8");
    const said = `quitting now: the step in progress is not saved; the last checkpoint is step 8 (${step8}); continue with: lorakit train run.yaml --resume`;
    expect(p.stderr).toContain(said);
    await gone(engine?.pid as number, "the engine");
    expect(existsSync(path.join(runDir(), LOCK_FILE))).toBe(false);
    const r = row(work);
    expect(r?.status).toBe("stopped");
    const causeNamed =
      r?.error ===
      `quit at once (a second Ctrl-C): the step in progress is not saved; the last checkpoint is step 8 (${step8})`;
    expect(causeNamed, r?.error ?? "").toBe(true);
    recordFault({ fault: "lorakit second Ctrl-C", killed: "lorakit", injected: true, causeNamed }, before);
  });

  it("the engine killed between the adapter's files", async () => {
    const p = await engineKill("adapter:between-files", RESUME);
    expect(p.stdout).toContain("resuming at step 8");
    expect(completeSteps(work)).toEqual([2, 4, 6, 8, 10, 12]);
    expect(existsSync(path.join(runDir(), "adapter"))).toBe(false);
    expect(existsSync(path.join(runDir(), ".tmp-adapter"))).toBe(true);
  });

  it("the engine killed before the adapter's rename", async () => {
    const p = await engineKill("adapter:before-rename", RESUME);
    expect(p.stdout).toContain("resuming at step 12");
    expect(existsSync(path.join(runDir(), "adapter"))).toBe(false);
  });

  let reportKill: Lorakit;
  it("lorakit killed while it writes the report: the run is not marked completed without one", async () => {
    const before = durable(work);
    const reportBefore = readFileSync(path.join(runDir(), "report.html"), "utf8");
    reportKill = run(RESUME, { LORAKIT_TEST_KILL_FS: "renameSync:report\\.html$" });
    const end = await reportKill.ended;
    expect(end.signal, reportKill.output).toBe("SIGKILL");
    const injected = reportKill.stderr.includes("[lorakit-test-fault] SIGKILL at renameSync(");
    expect(injected).toBe(true);
    expect(readFileSync(path.join(runDir(), "report.html"), "utf8")).toBe(reportBefore); // the old one, whole
    expect(row(work)?.status).toBe("running");
    expect(readdirSync(path.join(runDir(), "adapter"))).toContain("adapter_model.safetensors");
    recordFault({ fault: "lorakit report:before-rename", killed: "lorakit", injected, causeNamed: false }, before);
  });

  it("the last --resume completes: the uninterrupted run's numbers, checkpoints and adapter; nothing left over", async () => {
    const before = durable(work);
    const p = run(RESUME);
    const end = await p.ended;
    expect(end.code, p.output).toBe(0);
    (faults.at(-1) as Fault).causeNamed = settledBy(p, reportKill.pid) && tookOver(p, reportKill.pid);
    expect(settledBy(p, reportKill.pid), p.output).toBe(true);
    expect(p.stdout).toMatch(/^run {9}completed/m);
    expect(row(work)?.status).toBe("completed");
    expect(bytesLost(before, work).files).toEqual([]);
    resumedExactly();
    expect(trainSteps(work)).toEqual(Array.from({ length: TOTAL }, (_, i) => i + 1));
    expect(metricsOff()).toEqual([]);
    expect(
      metrics(work)
        .filter((m) => m.kind === "eval")
        .map((m) => m.step),
    ).toEqual([4, 8, 12]);
    // Every checkpoint and the adapter as the uninterrupted run wrote them.
    const mine = durable(work);
    const theirs = durable(ref);
    const files = [...theirs.keys()].filter((k) => k.startsWith("runs/"));
    expect(files.length).toBeGreaterThan(0);
    expect(files.filter((k) => mine.get(k)?.[0] !== theirs.get(k)?.[0])).toEqual([]);
    expect(leftovers(work)).toEqual([]);
  });

  it("--resume of the completed run says so at once and changes nothing", async () => {
    // Every file but the store's write-ahead log and index (a connection's closing folds them into the store),
    // and every row of the store.
    const files = (dir: string) => [
      ...walk(dir)
        .filter((rel) => !/lorakit\.db-(wal|shm)$/.test(rel))
        .map((rel) => `${rel} ${statSync(path.join(dir, rel)).mtimeMs} ${sha(path.join(dir, rel))}`),
      ...storeRows(dir),
    ];
    const before = files(work);
    const p = await runLorakit(cli, RESUME, { cwd: work });
    expect(p.code, p.output).toBe(0);
    expect(p.stdout).toContain("run         'run' completed at step 12; nothing to resume");
    expect(p.output).not.toContain("doctor");
    expect(files(work)).toEqual(before);
  });

  it("a torn prepared-data entry is never trained on", async () => {
    // The run is complete: its prepared entry is cut short now, as a disk that lost the end of a write would.
    const tokens = path.join(preparedEntry(), "tokens.safetensors");
    const whole = readFileSync(tokens);
    truncateSync(tokens, whole.length - 100);
    try {
      const loaded = await loadConfig(path.join(work, "run.yaml"));
      const prepare = async () =>
        prepareForRun(loaded, readCheckpoint(loaded.modelDir), await loadTokenizer(loaded.modelDir), () => {});
      expect((await prepare()).result.reused).toBe(false); // found torn (its SHA256SUMS), prepared again
      expect(readFileSync(tokens)).toEqual(whole);
    } finally {
      writeFileSync(tokens, whole);
    }
  });

  it("a flipped byte in a prepared entry is found and the entry prepared again", async () => {
    const tokens = path.join(preparedEntry(), "tokens.safetensors");
    const whole = readFileSync(tokens);
    const flipped = Buffer.from(whole);
    flipped[flipped.length - 3] = (flipped[flipped.length - 3] as number) ^ 0xff; // inside the labels: sizes hold
    writeFileSync(tokens, flipped);
    const loaded = await loadConfig(path.join(work, "run.yaml"));
    const prepared = await prepareForRun(
      loaded,
      readCheckpoint(loaded.modelDir),
      await loadTokenizer(loaded.modelDir),
      () => {},
    );
    expect(prepared.result.reused).toBe(false);
    expect(readFileSync(tokens)).toEqual(whole);
  });
});

function preparedEntry(): string {
  const entry = readdirSync(path.join(work, "prepared")).find((n) => /^[0-9a-f]{16}$/.test(n)) as string;
  return path.join(work, "prepared", entry);
}
