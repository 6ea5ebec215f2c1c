// Numbers as a person reads them in lorakit's messages, reports and evidence: shares as percentages,
// byte counts in KiB/MiB/GiB, durations as 5s / 1m01s / 1h05m.

/** A share (0–1) as a percentage with `digits` decimals; "—" when unknown. */
export function pct(x: number | null, digits = 1): string {
  return x === null ? "—" : `${(100 * x).toFixed(digits)}%`;
}

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

/** A byte count in GiB (one decimal), MiB or KiB. */
export function fmtBytes(n: number): string {
  if (n >= GiB) return `${(n / GiB).toFixed(1)} GiB`;
  if (n >= MiB) return `${(n / MiB).toFixed(0)} MiB`;
  return `${Math.max(0, Math.round(n / 1024))} KiB`;
}

/** "1 error", "3 errors": a count with its noun. */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** Seconds as 5s, 1m01s or 1h05m; "?" when unknown. */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "?";
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = Math.floor(s % 60);
  if (h > 0) return `${h}h${String(m).padStart(2, "0")}m`;
  if (m > 0) return `${m}m${String(sec).padStart(2, "0")}s`;
  return `${sec}s`;
}
