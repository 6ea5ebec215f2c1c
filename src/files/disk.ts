// A full disk, said once and the same way everywhere lorakit writes: what could not be written, where, what it
// needed against what is free, and what is left intact (the engine says it the same way: files.py).
import { statfsSync } from "node:fs";
import path from "node:path";
import { LorakitError } from "../errors.js";
import { fmtBytes } from "../format.js";

/**
 * Node's ENOSPC/EDQUOT, SQLite's SQLITE_FULL (better-sqlite3's SqliteError), or a DISK_FULL already said by a
 * write inside this one (the outer write says it again with what it was writing), anywhere in the causes.
 */
export function isDiskFull(e: unknown): boolean {
  for (let x = e as { code?: unknown; cause?: unknown } | undefined, n = 0; x && n < 8; x = x.cause as typeof x, n++) {
    if (typeof x.code === "string" && /^(ENOSPC|EDQUOT|SQLITE_FULL|DISK_FULL)$/.test(x.code)) return true;
  }
  return false;
}

/** Free bytes (for an unprivileged user) where `p` is, or would be (its nearest existing parent); null unknown. */
export function freeBytes(p: string): number | null {
  let at = path.resolve(p);
  for (;;) {
    try {
      const s = statfsSync(at);
      return s.bavail * s.bsize;
    } catch (e) {
      const parent = path.dirname(at);
      if ((e as NodeJS.ErrnoException).code !== "ENOENT" || parent === at) return null;
      at = parent;
    }
  }
}

export interface DiskFull {
  /** What could not be written: "the prepared data", "the report". */
  what: string;
  /** The folder it was written in. */
  dir: string;
  /** The file being written when the disk filled, when known. */
  writing?: string;
  /** Bytes the write needs, and how that was found ("its text", "the tokens so far, twice"). */
  need?: number;
  basis?: string;
  /** What is left as it was: "the report written before is intact." */
  kept: string;
  hint?: string;
}

/** DISK_FULL, located at the folder, with the need and the free space (measured now). */
export function diskFullError(d: DiskFull): LorakitError {
  const free = freeBytes(d.dir);
  const at = d.writing ? ` (writing ${path.basename(d.writing)})` : "";
  const need = d.need !== undefined ? `it needs about ${fmtBytes(d.need)}${d.basis ? ` (${d.basis})` : ""}, ` : "";
  return new LorakitError(
    "DISK_FULL",
    `no space left for ${d.what} in ${d.dir}${at}: ${need}${free !== null ? fmtBytes(free) : "an unknown amount"} free on that filesystem. Nothing of it was kept; ${d.kept}`,
    {
      where: { file: d.writing ?? d.dir },
      hint: d.hint ?? "Free space on that disk (or write to a larger one), then run the same command again.",
    },
  );
}

/** Runs `write`; a full disk becomes DISK_FULL (after `cleanup`, so the free space is what is left). */
export function whileWriting<T>(d: () => DiskFull, write: () => T, cleanup: () => void = () => {}): T {
  try {
    return write();
  } catch (e) {
    cleanup();
    if (isDiskFull(e)) throw diskFullError(d());
    throw e;
  }
}
