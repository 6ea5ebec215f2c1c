// Files written for later reading are never seen half-written: each is written under a temporary name beside
// it, synced, and renamed over it, then its folder is synced (as the engine writes its checkpoints). A full
// disk on the way is DISK_FULL naming the file, the temporary file removed and the old file as it was.
import { createHash, type Hash, randomBytes } from "node:crypto";
import { closeSync, existsSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from "node:fs";
import path from "node:path";
import { diskFullError, isDiskFull } from "./disk.js";

/** A folder's entries (a rename into it, a file created) on disk. */
export function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** A file written piece by piece and hashed as it is written; `finish` syncs and closes it. */
export class HashedFile {
  readonly fd: number;
  private readonly hash: Hash = createHash("sha256");
  bytes = 0;
  private open = true;

  constructor(readonly file: string) {
    this.fd = openSync(file, "w");
  }

  /** All of `view` (writeSync may write less than asked: the rest follows). */
  write(view: Uint8Array): void {
    let at = 0;
    while (at < view.length) at += writeSync(this.fd, view, at, Math.min(view.length - at, 1 << 30));
    this.hash.update(view);
    this.bytes += view.length;
  }

  /** Synced and closed: its size and sha256. */
  finish(): { bytes: number; sha256: string } {
    fsyncSync(this.fd);
    this.close();
    return { bytes: this.bytes, sha256: this.hash.digest("hex") };
  }

  close(): void {
    if (this.open) closeSync(this.fd);
    this.open = false;
  }
}

/** A temporary name beside `file`, hidden, that names its process. */
export function tempBeside(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${randomBytes(3).toString("hex")}`);
}

/**
 * Writes `data` to `file` atomically: a reader sees the old file or the new one, whole. Returns its size and
 * sha256. `what` names it in a DISK_FULL error ("the report").
 */
export function writeFileAtomic(
  file: string,
  data: string | Uint8Array,
  opts: { what?: string } = {},
): { bytes: number; sha256: string } {
  const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  const tmp = tempBeside(file);
  const existed = existsSync(file);
  let out: HashedFile | undefined;
  try {
    out = new HashedFile(tmp);
    out.write(bytes);
    const done = out.finish();
    renameSync(tmp, file);
    fsyncDir(path.dirname(file));
    return done;
  } catch (e) {
    out?.close();
    rmSync(tmp, { force: true });
    if (!isDiskFull(e)) throw e;
    throw diskFullError({
      what: opts.what ?? path.basename(file),
      dir: path.dirname(file),
      writing: file,
      need: bytes.length,
      basis: "its contents",
      kept: existed ? `${file} is as it was before.` : `${file} was not written.`,
    });
  }
}
