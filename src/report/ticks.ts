// Axis ticks a person can read: linear axes step by 1, 2 or 5 × 10^k and their ends are rounded out to a
// tick; log axes (a loss that falls through a decade or more) tick at 1, 2 and 5 × 10^k. Values are built
// from integers (i × m / 10^j), so a tick is the double nearest its decimal spelling: 0.6, never
// 0.6000000000000001.

export interface Axis {
  /** The drawn range: the data's, rounded out to the first tick at or beyond each end. */
  domain: [number, number];
  ticks: number[];
  log: boolean;
}

const MANTISSAS = [1, 2, 5] as const;

/** m × 10^k as the double nearest its decimal spelling. */
function decimal(m: number, k: number): number {
  return k < 0 ? m / 10 ** -k : m * 10 ** k;
}

/** The smallest 1-2-5 step that cuts `span` into at most `count` intervals, as [mantissa, exponent]. */
export function niceStep(span: number, count: number): [number, number] {
  const raw = span / Math.max(1, count);
  let k = Math.floor(Math.log10(raw));
  // log10 rounds: 1000 can come out as 2.9999999999999996.
  if (decimal(1, k + 1) <= raw) k += 1;
  for (const m of MANTISSAS) if (decimal(m, k) >= raw) return [m, k];
  return [1, k + 1];
}

/**
 * Ticks for a linear axis over [lo, hi]: about `count` intervals of a 1-2-5 step, the domain rounded out to
 * whole steps. `minStep` floors the step (optimizer steps are whole numbers: 1). A flat range is widened.
 */
export function linearAxis(lo: number, hi: number, count = 5, minStep = 0): Axis {
  if (!(Number.isFinite(lo) && Number.isFinite(hi))) throw new Error(`linearAxis: ${lo}..${hi} is not finite`);
  if (hi < lo) [lo, hi] = [hi, lo];
  if (hi === lo) {
    const pad = lo === 0 ? 1 : Math.abs(lo) / 10;
    [lo, hi] = [lo - pad, hi + pad];
  }
  let [m, k] = niceStep(hi - lo, count);
  if (minStep > 0 && decimal(m, k) < minStep) [m, k] = niceStep(minStep, 1);
  const step = decimal(m, k);
  // Tick i is i × step, built from integers; the ends round out (a hair of float error never adds a tick).
  const first = Math.floor(lo / step + 1e-9);
  const last = Math.ceil(hi / step - 1e-9);
  const at = (i: number) => (k < 0 ? (i * m) / 10 ** -k : i * m * 10 ** k);
  const ticks: number[] = [];
  for (let i = first; i <= last; i++) ticks.push(at(i) + 0); // + 0: no -0
  return { domain: [at(first) + 0, at(last) + 0], ticks, log: false };
}

/**
 * Ticks for a log axis over [lo, hi] (both > 0): every 1, 2 and 5 × 10^k inside the domain, which is
 * rounded out to the nearest of them; past `maxTicks` of those, the powers of ten alone.
 */
export function logAxis(lo: number, hi: number, maxTicks = 12): Axis {
  if (!(lo > 0 && hi > 0 && Number.isFinite(lo) && Number.isFinite(hi)))
    throw new Error(`logAxis: ${lo}..${hi} is not a positive range`);
  if (hi < lo) [lo, hi] = [hi, lo];
  const k0 = Math.floor(Math.log10(lo)) - 1;
  const k1 = Math.ceil(Math.log10(hi)) + 1;
  const pick = (mantissas: readonly number[]): Axis => {
    const all: number[] = [];
    for (let k = k0; k <= k1; k++) for (const m of mantissas) all.push(decimal(m, k));
    const below = all.filter((v) => v <= lo);
    const above = all.filter((v) => v >= hi);
    const a = below[below.length - 1] as number;
    const b = above[0] as number;
    return { domain: [a, b], ticks: all.filter((v) => v >= a && v <= b), log: true };
  };
  const fine = pick(MANTISSAS);
  return fine.ticks.length <= maxTicks ? fine : pick([1]);
}

/** Whether values are best drawn on a log axis: all positive, spanning a factor of `ratio` (10) or more. */
export function spansDecades(values: readonly number[], ratio = 10): boolean {
  if (values.length === 0 || values.some((v) => !(v > 0))) return false;
  return Math.max(...values) / Math.min(...values) >= ratio;
}

/** A tick's label: as few digits as the step needs (0.5, 1, 1.5), exponents for the very small or large. */
export function formatTick(v: number, step: number): string {
  if (v === 0) return "0";
  const s = Math.abs(step) || Math.abs(v);
  if (s >= 1e-3 && Math.abs(v) < 1e6) {
    const decimals = Math.max(0, -Math.floor(Math.log10(s) + 1e-9));
    return String(Number(v.toFixed(decimals)));
  }
  return Number(v.toPrecision(12)).toExponential().replace("e+", "e");
}

/** A token count in a few characters: 950, 12.3k, 4.5M, 1.2B. */
export function formatCount(n: number): string {
  const units: [number, string][] = [
    [1e3, "k"],
    [1e6, "M"],
    [1e9, "B"],
  ];
  if (Math.abs(Math.round(n)) < 1000) return String(Math.round(n));
  for (const [u, suffix] of units) {
    const r = Number((n / u).toPrecision(3));
    if (Math.abs(r) < 1000 || suffix === "B") return `${r}${suffix}`;
  }
  return String(n);
}
