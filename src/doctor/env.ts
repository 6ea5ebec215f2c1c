// The environment check: runs the engine's probe (`python -m lorakit_engine.probe`) and explains which layer
// fails — the driver library (NVML), the torch build, or the devices made visible — and, for a run on the CPU,
// how long training would take and how that figure was derived. Also free disk against what the run writes.
import type { PythonEnv } from "../engine/python.js";
import { runEngineJson } from "../engine/supervisor.js";
import { type Finding, makeFinding } from "../findings/index.js";
import { fmtBytes } from "../format.js";
import type { Precision } from "../plan/index.js";

// ---------------------------------------------------------------- the probe's JSON (engine/lorakit_engine/probe.py)

export interface NvmlDevice {
  index: number;
  name?: string;
  uuid?: string;
  memory_total?: number;
  memory_free?: number;
  mig_mode?: boolean | null;
  errors: Record<string, string>;
}

export interface CudaDevice {
  index: number;
  name?: string;
  capability?: [number, number];
  bf16?: boolean;
  memory_free?: number;
  memory_total?: number;
  errors: Record<string, string>;
}

export interface Probe {
  version: number;
  python: string;
  platform: string;
  torch: { version: string | null; cuda_compiled: string | null; hip: string | null; import_error: string | null };
  nvml: {
    lib: string;
    loaded: boolean;
    load_error: string | null;
    init: boolean;
    init_error: string | null;
    init_code: number | null;
    driver_version: string | null;
    cuda_driver_version: string | null;
    device_count: number | null;
    devices: NvmlDevice[];
    errors: Record<string, string>;
  };
  cuda: {
    is_available: boolean | null;
    device_count: number | null;
    devices: CudaDevice[];
    errors: Record<string, string>;
  };
  env: Record<string, string | null>;
  disk: { path: string; measured_at: string; free_bytes?: number; total_bytes?: number; error?: string };
  memory: { total?: number; available?: number };
  cpu: {
    count: number | null;
    usable: number | null;
    machine: string;
    bench?: {
      /** The median of all_threads_gflops (probe.py bench_cpu). */
      matmul_gflops?: number;
      all_threads_gflops?: number[];
      one_thread_gflops?: number[];
      size?: number;
      runs?: number;
      seconds?: number;
      threads?: number;
      error?: string;
    };
  };
}

/** The probe, run with the engine's interpreter; `env` reaches the probe (CUDA_VISIBLE_DEVICES, LORAKIT_NVML_LIB). */
export async function runProbe(
  py: PythonEnv,
  outputDir: string,
  opts: { env?: NodeJS.ProcessEnv; bench?: boolean; timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<{ probe: Probe | null; finding: Finding | null }> {
  const args = ["--output-dir", outputDir, ...(opts.bench === false ? ["--no-bench"] : [])];
  const r = await runEngineJson<Probe>(py, "lorakit_engine.probe", args, {
    env: opts.env,
    ...(opts.signal ? { signal: opts.signal } : {}),
    timeoutMs: opts.timeoutMs ?? 120_000,
  });
  if (r.json) return { probe: r.json, finding: null };
  return {
    probe: null,
    finding: makeFinding("ENV_PROBE_FAILED", {
      error: r.error ?? "no output",
      python: py.python,
      stderr: r.stderrTail,
    }),
  };
}

// ---------------------------------------------------------------- what the run will train on

export type DeviceWanted = "auto" | "cpu" | "cuda";

export interface Hardware {
  device: "cuda" | "cpu";
  name: string;
  /** null on the CPU. */
  bf16: boolean | null;
  capability: [number, number] | null;
  /** Free memory on the device (GPU memory, or available RAM), when known. */
  free: number | null;
  total: number | null;
  cores: number;
}

export function cudaUsable(p: Probe): boolean {
  return p.cuda.is_available === true && (p.cuda.device_count ?? 0) > 0;
}

/** The device a run trains on (as the plan resolves `train.device`) and what the doctor knows of it. */
export function hardwareOf(p: Probe, want: DeviceWanted): Hardware {
  const cores = p.cpu.usable ?? p.cpu.count ?? 1;
  const dev = p.cuda.devices[0];
  if (want !== "cpu" && cudaUsable(p) && dev) {
    return {
      device: "cuda",
      name: dev.name ?? "cuda:0",
      bf16: dev.bf16 ?? null,
      capability: dev.capability ?? null,
      free: dev.memory_free ?? p.nvml.devices[0]?.memory_free ?? null,
      total: dev.memory_total ?? null,
      cores,
    };
  }
  return {
    device: "cpu",
    name: `CPU (${cores} cores)`,
    bf16: null,
    capability: null,
    free: p.memory.available ?? null,
    total: p.memory.total ?? null,
    cores,
  };
}

// ---------------------------------------------------------------- CUDA_VISIBLE_DEVICES

/**
 * The GPUs CUDA will show for a CUDA_VISIBLE_DEVICES value, given the driver's list. CUDA reads the
 * comma-separated entries in order and stops at the first invalid one (an index out of range, an unknown
 * UUID, "-1", an empty string).
 */
export function visibleDevices(
  value: string | null | undefined,
  devices: readonly NvmlDevice[],
): { visible: number; explanation: string } {
  if (value === null || value === undefined) return { visible: devices.length, explanation: "not set" };
  const entries = value.split(",").map((e) => e.trim());
  let visible = 0;
  for (const e of entries) {
    if (/^\d+$/.test(e)) {
      if (Number(e) < devices.length) {
        visible++;
        continue;
      }
      return done(`index ${e} but the driver lists ${devices.length} GPU(s) (0–${devices.length - 1})`);
    }
    if (/^GPU-/i.test(e)) {
      if (devices.some((d) => d.uuid?.toLowerCase().startsWith(e.toLowerCase()))) {
        visible++;
        continue;
      }
      return done(`UUID ${e} matches no GPU the driver lists`);
    }
    if (/^MIG-/i.test(e)) {
      if (devices.some((d) => d.mig_mode === true)) {
        visible++;
        continue;
      }
      return done(`${e} names a MIG instance, but no GPU has MIG mode enabled`);
    }
    return done(e === "" ? "it is set to an empty string" : `'${e}' is neither an index nor a GPU-/MIG- UUID`);
  }
  return { visible, explanation: `${visible} of ${devices.length} GPU(s) visible` };

  function done(why: string) {
    return {
      visible,
      explanation: visible > 0 ? `${why}; CUDA stops reading there (${visible} visible before it)` : why,
    };
  }
}

// ---------------------------------------------------------------- CPU time

export interface CpuWork {
  /** Tokens the run trains on (all epochs). */
  tokens: number;
  /** How `tokens` was obtained, for the evidence. */
  tokensBasis: string;
  /** Training FLOPs per token (frozen base: forward 2N + activation gradients 2N, + 2N recompute). */
  flopsPerToken: number;
}

/** A whole training step reaches about this share of the bare matmul rate on a CPU (assumed)… */
export const CPU_STEP_EFFICIENCY = 0.5;
/** …and somewhere between these: the estimate's range, a factor of 2 either way. */
export const CPU_STEP_EFFICIENCY_RANGE = [0.25, 1] as const;
/** On an idle CPU each of torch's threads keeps at least this share of one thread's matmul rate (assumed). */
export const CPU_THREAD_SCALING_FLOOR = 0.6;
/** When the probe could not time the CPU: GFLOP/s per core (assumed, fp32, AVX2-class). */
export const CPU_GFLOPS_PER_CORE_ASSUMED = 10;
export const CPU_SLOW_SECONDS = 3600;

export function fmtDuration(s: number): string {
  if (s < 90) return `${Math.max(1, Math.round(s))} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 2 * 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} days`;
}

const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

/**
 * How long the run's training takes on this CPU: its FLOPs at the CPU's matmul rate × the share a whole step
 * reaches. The rate is what the CPU can do, not what it did in a busy moment: all threads' median, but at least
 * one thread's median × threads × CPU_THREAD_SCALING_FLOOR (one thread's rate holds steady while other jobs
 * share the CPU; all threads' can drop tenfold). The range is the step share's (a factor of 2 either way), and
 * further up when all threads ran slower together than one alone while measured (a busy CPU).
 */
export function cpuEstimate(p: Probe, work: CpuWork): { seconds: number; evidence: Record<string, unknown> } {
  const bench = p.cpu.bench;
  const measured = bench?.matmul_gflops;
  const cores = p.cpu.usable ?? p.cpu.count ?? 1;
  const all = bench?.all_threads_gflops?.length ? median(bench.all_threads_gflops) : null;
  const one = bench?.one_thread_gflops?.length ? median(bench.one_thread_gflops) : null;
  const threads = bench?.threads ?? cores;
  const gflops =
    all !== null && one !== null
      ? Math.max(all, one * threads * CPU_THREAD_SCALING_FLOOR)
      : (measured ?? CPU_GFLOPS_PER_CORE_ASSUMED * cores);
  const basis =
    measured !== undefined
      ? `measured: ${bench?.size}×${bench?.size} fp32 matmul at ${measured.toFixed(1)} GFLOP/s${
          all !== null && one !== null
            ? ` (medians of ${bench?.all_threads_gflops?.length} timings: ${all.toFixed(1)} on ${threads} threads, ${one.toFixed(1)} on one)`
            : ` on ${bench?.threads} threads`
        }, × ${CPU_STEP_EFFICIENCY} for a whole training step (${CPU_STEP_EFFICIENCY_RANGE.join("–")} for the range)`
      : `assumed: ${CPU_GFLOPS_PER_CORE_ASSUMED} GFLOP/s per core × ${cores} cores, × ${CPU_STEP_EFFICIENCY} for a whole training step (${CPU_STEP_EFFICIENCY_RANGE.join("–")} for the range)`;
  const flops = work.tokens * work.flopsPerToken;
  const seconds = flops / (gflops * 1e9 * CPU_STEP_EFFICIENCY);
  const low = flops / (gflops * 1e9 * CPU_STEP_EFFICIENCY_RANGE[1]);
  let high = flops / (gflops * 1e9 * CPU_STEP_EFFICIENCY_RANGE[0]);
  const busy = all !== null && one !== null && all < one;
  if (busy) high = Math.max(high, flops / (all * 1e9 * CPU_STEP_EFFICIENCY));
  return {
    seconds,
    evidence: {
      duration: `${fmtDuration(seconds)}, between ${fmtDuration(low)} and ${fmtDuration(high)}${busy ? " (the CPU is busy: its threads ran slower together than one alone)" : ""}`,
      seconds: Math.round(seconds),
      range_seconds: [Math.round(low), Math.round(high)],
      tokens: work.tokens,
      tokens_basis: work.tokensBasis,
      flops_per_token: work.flopsPerToken,
      throughput_gflops: Number((gflops * CPU_STEP_EFFICIENCY).toFixed(2)),
      throughput_basis: basis,
    },
  };
}

// ---------------------------------------------------------------- findings

export interface EnvContext {
  device: DeviceWanted;
  precision: "auto" | Precision;
  /** Bytes the run will write under output_dir. */
  diskNeed?: number;
  /** The work, for a CPU run's time estimate. */
  cpuWork?: CpuWork;
}

function versionAtLeast(have: string, want: string): boolean {
  const [a = 0, b = 0] = have.split(".").map(Number);
  const [c = 0, d = 0] = want.split(".").map(Number);
  return a > c || (a === c && b >= d);
}

export function envFindings(p: Probe, ctx: EnvContext): Finding[] {
  const out: Finding[] = [];
  if (p.torch.import_error) {
    return [makeFinding("ENV_TORCH_MISSING", { error: p.torch.import_error, python: p.python })];
  }
  const torch = p.torch.version ?? "?";
  const build = p.torch.cuda_compiled;
  const nv = p.nvml;
  const gpus = nv.device_count ?? 0;
  const strict = ctx.device === "cuda"; // no CUDA is an error only when the config asks for it
  const sev = (base: "warning" | "info") => (strict ? "error" : base);
  const cudaErrors = Object.entries(p.cuda.errors).map(([k, v]) => `${k}: ${v}`);
  const layers = {
    nvml_lib: nv.lib,
    nvml: nv.init
      ? `ok: driver ${nv.driver_version}, CUDA ${nv.cuda_driver_version}, ${gpus} GPU(s)`
      : (nv.load_error ?? nv.init_error ?? "not initialised"),
    torch,
    torch_cuda_build: build ?? "none (CPU build)",
    torch_cuda: cudaUsable(p)
      ? `ok: ${p.cuda.device_count} device(s)`
      : `not available${cudaErrors.length ? ` (${cudaErrors.join("; ")})` : ""}`,
    CUDA_VISIBLE_DEVICES: p.env.CUDA_VISIBLE_DEVICES ?? null,
  };

  if (ctx.device !== "cpu") {
    if (cudaUsable(p)) {
      if (!nv.init) {
        const explanation = nv.load_error
          ? `${nv.lib} cannot be loaded while torch ${torch} runs CUDA ${build}: the driver's user-space library is missing from this container or library path`
          : `${nv.init_error} while torch.cuda works: the driver library and the kernel module differ (a driver upgrade without a reboot)`;
        out.push(makeFinding("ENV_NVML_FAILED", { explanation, ...layers, nvml_code: nv.init_code }));
      }
      const dev = p.cuda.devices[0];
      if (dev && dev.bf16 === false && ctx.precision === "auto") {
        out.push(
          makeFinding("ENV_NO_BF16", {
            device: dev.name ?? "cuda:0",
            capability: dev.capability ? dev.capability.join(".") : "?",
          }),
        );
      }
    } else if (nv.init && gpus > 0) {
      const vis = visibleDevices(p.env.CUDA_VISIBLE_DEVICES, nv.devices);
      const names = nv.devices.map((d) => d.name ?? `GPU ${d.index}`);
      if (vis.visible === 0) {
        out.push(
          makeFinding(
            "ENV_DEVICES_HIDDEN",
            {
              visible: JSON.stringify(p.env.CUDA_VISIBLE_DEVICES),
              explanation: vis.explanation,
              gpus: names,
              ...layers,
            },
            { severity: sev("warning") },
          ),
        );
      }
      if (!build) {
        out.push(
          makeFinding(
            "ENV_TORCH_CPU_BUILD",
            { ...layers, gpus, driver: nv.driver_version },
            {
              severity: sev("warning"),
            },
          ),
        );
      } else if (vis.visible > 0) {
        const driverCuda = nv.cuda_driver_version;
        const explanation =
          driverCuda && !versionAtLeast(driverCuda, build)
            ? `the driver (${nv.driver_version}) supports CUDA up to ${driverCuda}, but torch ${torch} was built for CUDA ${build}`
            : `torch.cuda reports ${cudaErrors.length ? cudaErrors.join("; ") : "no device"} although the driver lists ${names.join(", ")}`;
        out.push(
          makeFinding(
            "ENV_CUDA_INIT_FAILED",
            { explanation, driver_cuda: driverCuda ?? "?", gpus: names, ...layers },
            { severity: sev("warning") },
          ),
        );
      }
    } else if (nv.loaded && !nv.init) {
      const explanation = `${nv.lib} loads but ${nv.init_error}, and torch.cuda sees no device: a driver/library mismatch after an upgrade (reboot), or a container without the NVIDIA runtime's device files`;
      out.push(
        makeFinding(
          "ENV_CUDA_INIT_FAILED",
          { explanation, driver_cuda: "?", ...layers, nvml_code: nv.init_code },
          {
            severity: sev("warning"),
            fix: "Reboot after a driver upgrade, or start the container with the NVIDIA runtime (--gpus all); nvidia-smi must work.",
          },
        ),
      );
    } else {
      const explanation = nv.init
        ? `the NVIDIA driver is loaded but lists no GPU`
        : build
          ? `no NVIDIA driver library (${nv.lib}) was found: no driver, or a container started without the NVIDIA runtime (--gpus all)`
          : `no NVIDIA driver library (${nv.lib}) and torch ${torch} is a CPU build: a machine or container without a GPU`;
      out.push(makeFinding("ENV_NO_CUDA", { explanation, ...layers }, { severity: strict ? "error" : "info" }));
    }
  }

  const hw = hardwareOf(p, ctx.device);
  if (hw.device === "cpu" && ctx.cpuWork) {
    const est = cpuEstimate(p, ctx.cpuWork);
    out.push(makeFinding(est.seconds > CPU_SLOW_SECONDS ? "ENV_CPU_SLOW" : "ENV_CPU_ESTIMATE", est.evidence));
  }

  const free = p.disk.free_bytes;
  if (ctx.diskNeed !== undefined && free !== undefined && free < 2 * ctx.diskNeed) {
    out.push(
      makeFinding(
        "ENV_LOW_DISK",
        {
          free: fmtBytes(free),
          need: fmtBytes(ctx.diskNeed),
          path: p.disk.measured_at,
          free_bytes: free,
          need_bytes: ctx.diskNeed,
        },
        { severity: free < ctx.diskNeed ? "error" : "warning" },
      ),
    );
  }
  return out;
}

/** One line about the machine for the doctor's step list. */
export function envSummary(p: Probe, hw: Hardware): string {
  if (hw.device === "cuda") {
    const cap = hw.capability ? `, sm ${hw.capability.join(".")}` : "";
    return `${hw.name}${cap}, ${hw.free !== null ? `${fmtBytes(hw.free)} free` : "memory unknown"}; torch ${p.torch.version} (CUDA ${p.torch.cuda_compiled})`;
  }
  const g = p.cpu.bench?.matmul_gflops;
  return `CPU only: ${hw.cores} cores${g ? ` (${g.toFixed(0)} GFLOP/s measured)` : ""}; torch ${p.torch.version}`;
}
