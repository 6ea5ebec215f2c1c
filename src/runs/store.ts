// The run store: runs, metrics, findings, samples and every engine event, in one SQLite file
// beside the runs (`<output_dir>/lorakit.db`). WAL mode, so a dashboard can read while a run writes.
import { mkdirSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import type { Event } from "../config/schema.js";
import { stageOf } from "../findings/index.js";

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
}

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
  ended_at TEXT
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

export class RunStore {
  readonly db: Database.Database;

  constructor(file: string) {
    mkdirSync(path.dirname(file), { recursive: true });
    this.db = new Database(file);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("foreign_keys = ON");
    this.db.pragma("busy_timeout = 5000");
    this.db.exec(SCHEMA);
  }

  static forOutputDir(outputDir: string): RunStore {
    return new RunStore(path.join(outputDir, "lorakit.db"));
  }

  close(): void {
    this.db.close();
  }

  /** Creates the run, or reopens it (resume) keeping its history. */
  openRun(name: string, configJson: string, opts: { resume: boolean; forced?: boolean }): RunRow {
    const existing = this.getRun(name);
    if (existing && opts.resume) {
      this.db
        .prepare("UPDATE runs SET status='running', error=NULL, ended_at=NULL, forced=forced OR ? WHERE id=?")
        .run(opts.forced ? 1 : 0, existing.id);
      return this.getRun(name) as RunRow;
    }
    if (existing) this.db.prepare("DELETE FROM runs WHERE id=?").run(existing.id);
    this.db
      .prepare("INSERT INTO runs (name, status, config_json, forced) VALUES (?, 'running', ?, ?)")
      .run(name, configJson, opts.forced ? 1 : 0);
    return this.getRun(name) as RunRow;
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
    tx();
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
