// The run store: runs, metrics, findings, samples and every engine event, in one SQLite file
// beside the runs (`<output_dir>/lorakit.db`). WAL mode, so a dashboard can read while a run writes, and
// several runs (several lorakit processes) write one file at once: a writer waits for another's
// transaction (BUSY_MS) instead of failing with "database is locked".
// Each running run names its owner (the lorakit process); a run left `running` by an owner that is gone
// (kill -9, a crash, a power cut) is settled as failed the next time the store is opened.
import { mkdirSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import type { Event } from "../config/schema.js";
import { stageOf } from "../findings/index.js";
import { liveness, type ProcessId, thisProcess } from "./owner.js";

export type RunStatus = "running" | "completed" | "failed" | "stopped";

export interface RunRow {
  id: number;
  name: string;
  status: RunStatus;
  config_json: string;
  plan_json: string | null;
  forced: number;
  error: string | null;
  created_at: string;
  ended_at: string | null;
  /** The lorakit process that last opened the run (null: recorded before owners were). */
  owner_pid: number | null;
  owner_host: string | null;
  owner_started_at: string | null;
  owner_proc_start: string | null;
}

/** A run found `running` whose owner is gone, and settled as failed when the store was opened. */
export interface SettledRun {
  name: string;
  pid: number | null;
  reason: string;
}

/** How long a write waits for another process's transaction before it fails (they take milliseconds). */
export const BUSY_MS = 30_000;

export interface MetricRow {
  step: number;
  kind: "train" | "eval";
  loss: number | null;
  lr: number | null;
  grad_norm: number | null;
  tokens: number | null;
  tokens_per_s: number | null;
  memory_bytes: number | null;
}

export interface FindingRow {
  stage: string;
  code: string;
  severity: "error" | "warning" | "info";
  title: string;
  evidence_json: string;
  fix: string;
}

export interface SampleRow {
  phase: "before" | "after";
  idx: number;
  prompt: string;
  output: string;
  reference: string | null;
  stopped: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  status TEXT NOT NULL,
  config_json TEXT NOT NULL,
  plan_json TEXT,
  forced INTEGER NOT NULL DEFAULT 0,
  error TEXT,
  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  ended_at TEXT,
  owner_pid INTEGER, owner_host TEXT, owner_started_at TEXT, owner_proc_start TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  step INTEGER NOT NULL,
  kind TEXT NOT NULL,
  loss REAL, lr REAL, grad_norm REAL, tokens INTEGER, tokens_per_s REAL, memory_bytes INTEGER,
  PRIMARY KEY (run_id, kind, step)
);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY,
  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
  type TEXT NOT NULL,
  json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS findings (
  id INTEGER PRIMARY KEY,
  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  stage TEXT NOT NULL, code TEXT NOT NULL, severity TEXT NOT NULL, title TEXT NOT NULL,
  evidence_json TEXT NOT NULL, fix TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  phase TEXT NOT NULL, idx INTEGER NOT NULL,
  prompt TEXT NOT NULL, output TEXT NOT NULL, reference TEXT, stopped INTEGER NOT NULL,
  PRIMARY KEY (run_id, phase, idx)
);
`;

/** Columns added to `runs` after its first version: a store written before them gains them when opened. */
const ADDED_RUN_COLUMNS: Record<string, string> = {
  owner_pid: "INTEGER",
  owner_host: "TEXT",
  owner_started_at: "TEXT",
  owner_proc_start: "TEXT",
};

/** Why a run's owner is taken to be gone, as the store records it. */
export function abandonedReason(pid: number | null): string {
  return pid === null
    ? "the lorakit process that ran it ended without finishing (killed or crashed; its process id was not recorded)"
    : `the lorakit process (pid ${pid}) ended without finishing: killed or crashed`;
}

export class RunStore {
  readonly db: Database.Database;
  /** Runs left `running` by a process that is gone, settled as failed when this store was opened. */
  readonly settled: SettledRun[];
  private readonly owner: ProcessId;

  constructor(file: string, owner: ProcessId = thisProcess()) {
    mkdirSync(path.dirname(file), { recursive: true });
    this.owner = owner;
    // better-sqlite3's `timeout` is SQLite's busy timeout, in force from the first statement on.
    this.db = new Database(file, { timeout: BUSY_MS });
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("foreign_keys = ON");
    this.db
      .transaction(() => {
        this.db.exec(SCHEMA);
        const have = new Set((this.db.pragma("table_info(runs)") as { name: string }[]).map((c) => c.name));
        for (const [col, type] of Object.entries(ADDED_RUN_COLUMNS))
          if (!have.has(col)) this.db.exec(`ALTER TABLE runs ADD COLUMN ${col} ${type}`);
      })
      .immediate();
    this.settled = this.settleAbandoned();
  }

  /** Marks failed every `running` run whose owner is gone (this host's processes only: another host's
   * cannot be looked at). */
  private settleAbandoned(): SettledRun[] {
    return this.db
      .transaction(() => {
        const running = this.db.prepare("SELECT * FROM runs WHERE status='running'").all() as RunRow[];
        const out: SettledRun[] = [];
        for (const r of running) {
          const gone =
            r.owner_pid === null ||
            liveness({ pid: r.owner_pid, host: r.owner_host ?? "", proc_start: r.owner_proc_start }) === "gone";
          if (!gone) continue;
          const reason = abandonedReason(r.owner_pid);
          this.db
            .prepare(
              "UPDATE runs SET status='failed', error=?, ended_at=strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id=? AND status='running'",
            )
            .run(reason, r.id);
          out.push({ name: r.name, pid: r.owner_pid, reason });
        }
        return out;
      })
      .immediate();
  }

  static forOutputDir(outputDir: string): RunStore {
    return new RunStore(path.join(outputDir, "lorakit.db"));
  }

  close(): void {
    this.db.close();
  }

  /** Creates the run, or reopens it (resume) keeping its history; this process becomes its owner. */
  openRun(name: string, configJson: string, opts: { resume: boolean; forced?: boolean }): RunRow {
    const o = this.owner;
    return this.db
      .transaction(() => {
        const existing = this.getRun(name);
        if (existing && opts.resume) {
          this.db
            .prepare(
              "UPDATE runs SET status='running', error=NULL, ended_at=NULL, forced=forced OR ?, owner_pid=?, owner_host=?, owner_started_at=?, owner_proc_start=? WHERE id=?",
            )
            .run(opts.forced ? 1 : 0, o.pid, o.host, o.started_at, o.proc_start, existing.id);
          return this.getRun(name) as RunRow;
        }
        if (existing) this.db.prepare("DELETE FROM runs WHERE id=?").run(existing.id);
        this.db
          .prepare(
            "INSERT INTO runs (name, status, config_json, forced, owner_pid, owner_host, owner_started_at, owner_proc_start) VALUES (?, 'running', ?, ?, ?, ?, ?, ?)",
          )
          .run(name, configJson, opts.forced ? 1 : 0, o.pid, o.host, o.started_at, o.proc_start);
        return this.getRun(name) as RunRow;
      })
      .immediate();
  }

  getRun(name: string): RunRow | undefined {
    return this.db.prepare("SELECT * FROM runs WHERE name=?").get(name) as RunRow | undefined;
  }

  listRuns(): RunRow[] {
    return this.db.prepare("SELECT * FROM runs ORDER BY id").all() as RunRow[];
  }

  setPlan(runId: number, planJson: string): void {
    this.db.prepare("UPDATE runs SET plan_json=? WHERE id=?").run(planJson, runId);
  }

  finish(runId: number, status: Exclude<RunStatus, "running">, error?: string): void {
    this.db
      .prepare("UPDATE runs SET status=?, error=?, ended_at=strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id=?")
      .run(status, error ?? null, runId);
  }

  /** Records one engine event, and its metric or finding row. */
  record(runId: number, event: Event): void {
    const tx = this.db.transaction(() => {
      this.db
        .prepare("INSERT INTO events (run_id, type, json) VALUES (?, ?, ?)")
        .run(runId, event.type, JSON.stringify(event));
      if (event.type === "step") {
        this.db
          .prepare(
            "INSERT OR REPLACE INTO metrics (run_id, step, kind, loss, lr, grad_norm, tokens, tokens_per_s, memory_bytes) VALUES (?, ?, 'train', ?, ?, ?, ?, ?, ?)",
          )
          .run(
            runId,
            event.step,
            event.loss,
            event.lr,
            event.grad_norm,
            event.tokens,
            event.tokens_per_s,
            event.memory_bytes,
          );
      } else if (event.type === "eval") {
        this.db
          .prepare("INSERT OR REPLACE INTO metrics (run_id, step, kind, loss, tokens) VALUES (?, ?, 'eval', ?, ?)")
          .run(runId, event.step, event.loss, event.tokens);
      } else if (event.type === "finding") {
        this.addFinding(runId, stageOf(event.code), event);
      }
    });
    tx.immediate();
  }

  addFinding(
    runId: number,
    stage: string,
    f: { code: string; severity: "error" | "warning" | "info"; title: string; evidence: unknown; fix: string },
  ): void {
    this.db
      .prepare(
        "INSERT INTO findings (run_id, stage, code, severity, title, evidence_json, fix) VALUES (?, ?, ?, ?, ?, ?, ?)",
      )
      .run(runId, stage, f.code, f.severity, f.title, JSON.stringify(f.evidence), f.fix);
  }

  clearFindings(runId: number): void {
    this.db.prepare("DELETE FROM findings WHERE run_id=?").run(runId);
  }

  addSample(runId: number, s: SampleRow): void {
    this.db
      .prepare(
        "INSERT OR REPLACE INTO samples (run_id, phase, idx, prompt, output, reference, stopped) VALUES (?, ?, ?, ?, ?, ?, ?)",
      )
      .run(runId, s.phase, s.idx, s.prompt, s.output, s.reference, s.stopped);
  }

  /** Metrics after `step` are dropped: a resumed run rewrites them. */
  truncateMetrics(runId: number, afterStep: number): void {
    this.db.prepare("DELETE FROM metrics WHERE run_id=? AND step>?").run(runId, afterStep);
  }

  /** Steps 1…`upTo` with no train metric: trained by an engine whose lorakit was killed before reading them. */
  missingSteps(runId: number, upTo: number): number[] {
    const have = new Set(
      (
        this.db.prepare("SELECT step FROM metrics WHERE run_id=? AND kind='train' AND step<=?").all(runId, upTo) as {
          step: number;
        }[]
      ).map((r) => r.step),
    );
    const out: number[] = [];
    for (let s = 1; s <= upTo; s++) if (!have.has(s)) out.push(s);
    return out;
  }

  metrics(runId: number, kind?: "train" | "eval"): MetricRow[] {
    const sql = kind
      ? "SELECT step, kind, loss, lr, grad_norm, tokens, tokens_per_s, memory_bytes FROM metrics WHERE run_id=? AND kind=? ORDER BY step"
      : "SELECT step, kind, loss, lr, grad_norm, tokens, tokens_per_s, memory_bytes FROM metrics WHERE run_id=? ORDER BY kind, step";
    return (kind ? this.db.prepare(sql).all(runId, kind) : this.db.prepare(sql).all(runId)) as MetricRow[];
  }

  findings(runId: number): FindingRow[] {
    return this.db
      .prepare("SELECT stage, code, severity, title, evidence_json, fix FROM findings WHERE run_id=? ORDER BY id")
      .all(runId) as FindingRow[];
  }

  samples(runId: number): SampleRow[] {
    return this.db
      .prepare(
        "SELECT phase, idx, prompt, output, reference, stopped FROM samples WHERE run_id=? ORDER BY idx, phase DESC",
      )
      .all(runId) as SampleRow[];
  }

  /** The run's latest event of a type, as the engine sent it (undefined when there is none). */
  lastEvent(runId: number, type: Event["type"]): Event | undefined {
    const row = this.db
      .prepare("SELECT json FROM events WHERE run_id=? AND type=? ORDER BY id DESC LIMIT 1")
      .get(runId, type) as { json: string } | undefined;
    return row ? (JSON.parse(row.json) as Event) : undefined;
  }

  eventCount(runId: number, type?: string): number {
    const row = (
      type
        ? this.db.prepare("SELECT count(*) AS n FROM events WHERE run_id=? AND type=?").get(runId, type)
        : this.db.prepare("SELECT count(*) AS n FROM events WHERE run_id=?").get(runId)
    ) as { n: number };
    return row.n;
  }
}
