// The run store and the run lock under what really happens to runs: a lorakit killed while its run is `running`
// (settled as failed when the store is next opened, naming the process), a store written before owners were
// recorded, several lorakit processes writing one lorakit.db at once (real processes, real SQLite: no
// "database is locked", no lost row), and the lock of a run: refused while its holder (or the holder's
// engine) lives, taken over when they are gone — by exactly one of several processes that find it at once.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../src/engine/python.js";
import { LOCK_FILE, type LockHolder, RunLock } from "../src/runs/lock.js";
import { procStart, thisProcess } from "../src/runs/owner.js";
import { RunStore } from "../src/runs/store.js";
import { bundleForNode } from "./bundle.js";
import { tmpDir } from "./helpers.js";

/** A process id that was in use a moment ago and is not any more. */
function deadPid(): number {
  const r = spawnSync("true");
  return r.pid as number;
}

/** A store as lorakit wrote it before runs had owners: one run left running, one completed. */
function writeLegacyStore(file: string): void {
  const old = new Database(file);
  old.pragma("journal_mode = WAL");
  old.exec(`CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
    config_json TEXT NOT NULL, plan_json TEXT, forced INTEGER NOT NULL DEFAULT 0, error TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')), ended_at TEXT);
    INSERT INTO runs (name, status, config_json) VALUES ('old', 'running', '{}'), ('done', 'completed', '{}');`);
  old.close();
}

let worker: string;
beforeAll(async () => {
  worker = await bundleForNode(
    path.join(ROOT, "tests", "fault", "store-worker.ts"),
    path.join(ROOT, "tests", ".fixtures", "store-worker.mjs"),
  );
});

/** Starts `n` workers at once (each told the same instant to begin) and collects their one-line answers. */
async function workers(n: number, args: (i: number) => string[]): Promise<string[]> {
  const start = String(Date.now() + 1500);
  return Promise.all(
    Array.from(
      { length: n },
      (_, i) =>
        new Promise<string>((resolve) => {
          const child = spawn(process.execPath, [worker, ...args(i), start], { stdio: ["ignore", "pipe", "pipe"] });
          let out = "";
          child.stdout.on("data", (d) => {
            out += d;
          });
          child.stderr.on("data", (d) => {
            out += d;
          });
          child.on("close", (code) => resolve(code === 0 ? out.trim() : `exit ${code}: ${out}`));
        }),
    ),
  );
}

describe("run store", () => {
  it("a run left running by a process that is gone is settled as failed on the next open, naming it", () => {
    const file = path.join(tmpDir(), "lorakit.db");
    const dead = deadPid();
    const me = thisProcess();
    // Four owners (a store opened by each), then one run each.
    const a = new RunStore(file, { ...me, pid: dead, proc_start: null });
    const b = new RunStore(file, { ...me, host: "elsewhere" });
    const c = new RunStore(file); // this process: alive
    // A live PID that started at another time than the recorded one: the number was reused.
    const d = new RunStore(file, { ...me, proc_start: "1" });
    a.openRun("killed", "{}", { resume: false });
    b.openRun("other-host", "{}", { resume: false });
    c.openRun("alive", "{}", { resume: false });
    d.openRun("reused-pid", "{}", { resume: false });
    for (const s of [a, b, d]) s.close();

    const next = new RunStore(file);
    expect(next.settled.map((s) => s.name).sort()).toEqual(["killed", "reused-pid"]);
    expect(next.getRun("killed")).toMatchObject({
      status: "failed",
      error: `the lorakit process (pid ${dead}) ended without finishing: killed or crashed`,
    });
    expect(next.getRun("killed")?.ended_at).not.toBeNull();
    expect(next.getRun("reused-pid")?.status).toBe("failed");
    expect(next.getRun("other-host")?.status).toBe("running"); // another machine's process: not judged from here
    expect(next.getRun("alive")?.status).toBe("running");
    expect(new RunStore(file).settled).toEqual([]); // settled once
    next.close();
    c.close();
    expect(procStart(process.pid)).not.toBeNull(); // the reused-pid case above ran against a real start time
  });

  it("a store written before owners were recorded gains the columns; its running runs are settled", () => {
    const file = path.join(tmpDir(), "lorakit.db");
    writeLegacyStore(file);
    const store = new RunStore(file);
    expect(store.getRun("old")).toMatchObject({ status: "failed", owner_pid: null });
    expect(store.getRun("old")?.error).toContain("ended without finishing (killed or crashed");
    expect(store.getRun("done")?.status).toBe("completed");
    const run = store.openRun("new", "{}", { resume: false });
    expect(run.owner_pid).toBe(process.pid);
    store.close();
  });

  it.each([
    ["a new store (created by the first of them)", false],
    ["a store written before owners were recorded (the first of them adds the columns)", true],
  ])("several lorakit processes write one store at once, %s: every row arrives, none fails", async (_, legacy) => {
    const file = path.join(tmpDir(), "lorakit.db");
    if (legacy) writeLegacyStore(file);
    const n = 6;
    const steps = 200;
    const answers = await workers(n, (i) => ["store", file, `run-${i}`, String(steps)]);
    expect(answers).toEqual(Array.from({ length: n }, () => "ok"));
    const db = new Database(file, { readonly: true });
    for (let i = 0; i < n; i++) {
      const run = db.prepare("SELECT id, status FROM runs WHERE name=?").get(`run-${i}`) as {
        id: number;
        status: string;
      };
      expect(run.status).toBe("completed");
      const count = (sql: string) => (db.prepare(sql).get(run.id) as { n: number }).n;
      expect(count("SELECT count(*) n FROM metrics WHERE run_id=? AND kind='train'")).toBe(steps);
      expect(count("SELECT count(*) n FROM events WHERE run_id=?")).toBe(steps);
      expect(count("SELECT count(*) n FROM samples WHERE run_id=?")).toBe(steps / 25);
    }
    db.close();
  });
});

describe("run lock", () => {
  const holder = (dir: string) => JSON.parse(readFileSync(path.join(dir, LOCK_FILE), "utf8")) as LockHolder;

  it("names its holder; a second taker is refused while the holder lives", () => {
    const dir = tmpDir();
    const lock = RunLock.acquire(dir, "run", { command: "lorakit train run.yaml", log: () => {} });
    expect(holder(dir)).toMatchObject({ pid: process.pid, command: "lorakit train run.yaml", engine: null });
    expect(() => RunLock.acquire(dir, "run", { command: "x", log: () => {} })).toThrow(
      `run 'run' is being trained by another lorakit: lorakit pid ${process.pid}`,
    );
    lock.release();
    expect(existsSync(path.join(dir, LOCK_FILE))).toBe(false);
    RunLock.acquire(dir, "run", { command: "x", log: () => {} }).release();
  });

  it("a stale lock is taken over, and said; one whose engine still runs is not", () => {
    const dir = tmpDir();
    const dead = deadPid();
    const stale: LockHolder = {
      ...thisProcess(),
      pid: dead,
      proc_start: null,
      command: "lorakit train a.yaml",
      engine: null,
    };
    writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify(stale));
    const said: string[] = [];
    const lock = RunLock.acquire(dir, "run", { command: "y", log: (l) => said.push(l) });
    expect(said).toEqual([
      `lock        run 'run': took over the lock of lorakit pid ${dead} (started ${stale.started_at}), which ended without releasing it (killed or crashed)`,
    ]);
    expect(holder(dir).pid).toBe(process.pid);
    lock.release();

    // The lorakit is gone, the engine it started is not (this process stands in for it).
    writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify({ ...stale, engine: thisProcess() }));
    expect(() => RunLock.acquire(dir, "run", { command: "y", log: () => {} })).toThrow(
      `run 'run' is still being written by its engine (pid ${process.pid}); the lorakit that started it (pid ${dead}) is gone`,
    );
    // Another machine's lorakit: cannot be looked at, so the lock holds, with how to clear it.
    writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify({ ...stale, host: "elsewhere" }));
    expect(() => RunLock.acquire(dir, "run", { command: "y", log: () => {} })).toThrow(/another machine/);
  });

  it("several processes that find the same stale lock: exactly one takes it", async () => {
    const dir = tmpDir();
    mkdirSync(dir, { recursive: true });
    const stale: LockHolder = { ...thisProcess(), pid: deadPid(), proc_start: null, command: "killed", engine: null };
    writeFileSync(path.join(dir, LOCK_FILE), JSON.stringify(stale));
    const answers = await workers(6, () => ["lock", dir]);
    expect(answers.filter((a) => a === "won")).toHaveLength(1);
    expect(answers.filter((a) => a !== "won").every((a) => a.startsWith("RUN_LOCKED "))).toBe(true);
    expect(existsSync(path.join(dir, LOCK_FILE))).toBe(false);
  });
});
