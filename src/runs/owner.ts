// Which process owns a run (the lorakit that trains it, and its engine), and whether that process is still
// there. A PID alone is not enough: after a crash the number can be handed to an unrelated process, so a
// process is also named by its start time as the kernel counts it (/proc/<pid>/stat), where there is one.
import { readFileSync } from "node:fs";
import os from "node:os";

export interface ProcessId {
  pid: number;
  host: string;
  /** When it started (ISO), for people. */
  started_at: string;
  /** Its start in clock ticks after boot (field 22 of /proc/<pid>/stat); null where /proc is not there. */
  proc_start: string | null;
}

/** Fields 3… of /proc/<pid>/stat (state first), or null (no /proc, or no such process). */
function statFields(pid: number): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses: count the fields after its closing one.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  } catch {
    return null;
  }
}

/** The start of `pid` in clock ticks after boot, or null (no /proc, or no such process). */
export function procStart(pid: number): string | null {
  return statFields(pid)?.[19] ?? null;
}

/** This process. */
export function thisProcess(): ProcessId {
  return {
    pid: process.pid,
    host: os.hostname(),
    started_at: new Date(Date.now() - process.uptime() * 1000).toISOString(),
    proc_start: procStart(process.pid),
  };
}

/** Another process of this host, named when it has just been started (a child: the engine). */
export function childProcess(pid: number): ProcessId {
  return { pid, host: os.hostname(), started_at: new Date().toISOString(), proc_start: procStart(pid) };
}

/**
 * "alive", "gone", or "unknown" (another host's process: lorakit cannot look). A process of another user
 * (EPERM) is alive. A PID now held by a process that started at another time is gone: its number was reused.
 */
export function liveness(p: Pick<ProcessId, "pid" | "host" | "proc_start">): "alive" | "gone" | "unknown" {
  if (p.host !== os.hostname()) return "unknown";
  if (!Number.isInteger(p.pid) || p.pid <= 0) return "gone";
  try {
    process.kill(p.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ESRCH") return "gone";
  }
  const stat = statFields(p.pid);
  // A zombie has ended; only its parent has not collected it yet (a container's init may never do so).
  if (stat && (stat[0] === "Z" || stat[0] === "X")) return "gone";
  if (stat && p.proc_start !== null && stat[19] !== p.proc_start) return "gone";
  return "alive";
}
