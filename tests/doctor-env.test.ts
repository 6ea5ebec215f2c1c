// The environment check. Failures are simulated where they happen — the NVML library the probe loads
// (LORAKIT_NVML_LIB → a missing file, or a small library built here with gcc) and CUDA_VISIBLE_DEVICES — and
// the probe runs for real. Probes recorded on an H200 (tests/fixtures/doctor-probe-h200*.json: plain, with
// NVML pointed at a missing file, with CUDA_VISIBLE_DEVICES empty and 3) cover the GPU side.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  type CpuWork,
  cpuEstimate,
  cudaUsable,
  envFindings,
  hardwareOf,
  type Probe,
  runProbe,
  visibleDevices,
} from "../src/doctor/env.js";
import { ensurePython, type PythonEnv, ROOT } from "../src/engine/python.js";
import { resolvePrecision } from "../src/plan/index.js";
import { tmpDir } from "./helpers.js";

const recorded = (name: string) =>
  JSON.parse(readFileSync(path.join(ROOT, "tests", "fixtures", `doctor-probe-${name}.json`), "utf8")) as Probe;
const codes = (fs: { code: string }[]) => fs.map((f) => f.code);
const auto = { device: "auto" as const, precision: "auto" as const };
const work: CpuWork = { tokens: 20_000, tokensBasis: "test", flopsPerToken: 4 * 200_000 };

describe("probes recorded on an H200", () => {
  it("a healthy GPU machine reports nothing", () => {
    const p = recorded("h200");
    expect(envFindings(p, { ...auto, cpuWork: work, diskNeed: 1e9 })).toEqual([]);
    const hw = hardwareOf(p, "auto");
    expect(hw).toMatchObject({ device: "cuda", name: "NVIDIA H200", bf16: true, capability: [9, 0] });
    expect(hw.free).toBe(149_557_477_376);
    expect(resolvePrecision("auto", hw)).toBe("bf16");
  });

  it("NVML failing while torch.cuda works is explained as the driver library's problem", () => {
    const [f, ...rest] = envFindings(recorded("h200-no-nvml"), auto);
    expect(rest).toEqual([]);
    expect(f).toMatchObject({ code: "ENV_NVML_FAILED", severity: "warning", stage: "env" });
    expect(String(f?.evidence.explanation)).toContain(
      "/nonexistent/libnvidia-ml.so.1 cannot be loaded while torch 2.11.0+cu130 runs CUDA 13.0",
    );
    expect(f?.evidence.torch_cuda).toBe("ok: 1 device(s)");
  });

  it("CUDA_VISIBLE_DEVICES hiding the GPU: empty, or an index past the last", () => {
    const [empty] = envFindings(recorded("h200-cvd-empty"), auto);
    expect(empty?.code).toBe("ENV_DEVICES_HIDDEN");
    expect(empty?.title).toBe('CUDA_VISIBLE_DEVICES="" hides every GPU the driver lists: it is set to an empty string');
    const three = envFindings(recorded("h200-cvd-3"), { ...auto, cpuWork: work });
    expect(codes(three)).toEqual(["ENV_DEVICES_HIDDEN", "ENV_CPU_ESTIMATE"]);
    expect(three[0]?.evidence.explanation).toBe("index 3 but the driver lists 1 GPU(s) (0–0)");
    // The run falls back to the CPU: the estimate uses the CPU rate the probe measured there.
    expect(String(three[1]?.evidence.throughput_basis)).toMatch(
      /^measured: 512×512 fp32 matmul at 89\d\.\d GFLOP\/s on 16 threads/,
    );
    expect(envFindings(recorded("h200-cvd-3"), { device: "cuda", precision: "auto" })[0]?.severity).toBe("error");
  });

  it("no bf16 on a pre-Ampere GPU is a note under precision auto", () => {
    const p = recorded("h200");
    const v100: Probe = {
      ...p,
      cuda: { ...p.cuda, devices: [{ index: 0, name: "Tesla V100", capability: [7, 0], bf16: false, errors: {} }] },
    };
    const [f] = envFindings(v100, auto);
    expect(f).toMatchObject({ code: "ENV_NO_BF16", severity: "info" });
    expect(resolvePrecision("auto", hardwareOf(v100, "auto"))).toBe("fp16");
    expect(envFindings(v100, { device: "auto", precision: "fp16" })).toEqual([]);
  });

  it("checks free disk against what the run writes", () => {
    const p = recorded("h200"); // 68.7 GB free at /tmp
    expect(envFindings(p, { ...auto, diskNeed: 50e9 })[0]).toMatchObject({ code: "ENV_LOW_DISK", severity: "warning" });
    expect(envFindings(p, { ...auto, diskNeed: 80e9 })[0]).toMatchObject({ code: "ENV_LOW_DISK", severity: "error" });
  });
});

describe("CUDA_VISIBLE_DEVICES as CUDA reads it", () => {
  const devices = recorded("h200").nvml.devices;
  const two = [...devices, { ...devices[0], index: 1, uuid: "GPU-ffff", errors: {} }];
  it.each([
    [undefined, 2, "not set"],
    ["0", 1, "1 of 2 GPU(s) visible"],
    ["1,0", 2, "2 of 2 GPU(s) visible"],
    ["GPU-04ae3513", 1, "1 of 2 GPU(s) visible"],
    ["0,5,1", 1, "index 5 but the driver lists 2 GPU(s) (0–1); CUDA stops reading there (1 visible before it)"],
    ["-1", 0, "'-1' is neither an index nor a GPU-/MIG- UUID"],
    ["MIG-6a1b", 0, "MIG-6a1b names a MIG instance, but no GPU has MIG mode enabled"],
    ["GPU-0000", 0, "UUID GPU-0000 matches no GPU the driver lists"],
  ])("%j → %i visible", (value, visible, explanation) => {
    expect(visibleDevices(value, two)).toEqual({ visible, explanation });
  });
});

describe("CPU time", () => {
  it("uses the measured matmul rate, or an assumed one, and says which", () => {
    const p = recorded("h200-cvd-empty");
    const measured = cpuEstimate(p, work);
    const gflops = p.cpu.bench?.matmul_gflops as number;
    expect(measured.seconds).toBeCloseTo((20_000 * 800_000) / (gflops * 1e9 * 0.5), 9);
    const assumed = cpuEstimate({ ...p, cpu: { ...p.cpu, bench: undefined } }, work);
    expect(assumed.evidence.throughput_basis).toBe(
      "assumed: 10 GFLOP/s per core × 16 cores, × 0.5 for a whole training step (0.25–1 for the range)",
    );
    expect(assumed.seconds).toBeCloseTo((20_000 * 800_000) / (160e9 * 0.5), 9);
  });

  it("warns when a CPU run would take hours (ChatGLM3-6B, the Self-LLM data, 3 epochs)", () => {
    const p = recorded("h200-cvd-empty");
    const big: CpuWork = { tokens: 3729 * 150 * 3, tokensBasis: "test", flopsPerToken: 6 * 5.98e9 };
    const [hidden, slow] = envFindings(p, { ...auto, cpuWork: big });
    expect(hidden?.code).toBe("ENV_DEVICES_HIDDEN");
    expect(slow).toMatchObject({ code: "ENV_CPU_SLOW", severity: "warning" });
    expect(slow?.title).toMatch(
      /^training on the CPU would take about \d+\.\d (h|days), between \d+(\.\d)? (h|days) and \d+\.\d (h|days)$/,
    );
  });

  it("says its range; a busy CPU (all threads slower together than one alone) widens it upward only", () => {
    // Timings of probe.py's bench_cpu on one 2-core machine shared with other jobs, and idle: all threads'
    // median read 7.7 and 118 GFLOP/s (a 15× swing in the estimate); one thread's stays near 60.
    const cpu = (all: number[], one: number[]) => {
      const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[2] as number;
      return {
        ...recorded("h200-cvd-empty"),
        cpu: {
          count: 2,
          usable: 2,
          machine: "x86_64",
          bench: {
            matmul_gflops: med(all),
            all_threads_gflops: all,
            one_thread_gflops: one,
            size: 512,
            threads: 2,
          },
        },
      } as Probe;
    };
    const busy = cpuEstimate(cpu([4.1, 7.7, 11.3, 5.0, 9.0], [52.7, 58.2, 79.7, 60.0, 55.0]), work);
    const idle = cpuEstimate(cpu([110, 118, 121, 115, 119], [60, 62, 58, 61, 59]), work);
    expect(idle.seconds / busy.seconds).toBeGreaterThan(0.5); // within a factor of 2 of each other
    const [lo, hi] = idle.evidence.range_seconds as [number, number];
    expect(lo).toBe(Math.round(idle.seconds / 2));
    expect(hi).toBe(Math.round(idle.seconds * 2));
    expect(idle.evidence.duration).toMatch(/^\d+ s, between \d+ s and \d+ s$/);
    const [, busyHi] = busy.evidence.range_seconds as [number, number];
    expect(busyHi).toBeGreaterThan(2 * busy.seconds);
    expect(busy.evidence.duration).toContain("the CPU is busy");
  });
});

describe("the probe run for real, failures simulated at the library boundary", () => {
  let py: PythonEnv;
  let libs: { ok: string; mismatch: string } | null = null;
  let gpuHere = false;
  const out = tmpDir("lorakit-doctor-env-");

  beforeAll(async () => {
    py = await ensurePython({ env: process.env });
    const src = path.join(ROOT, "tests", "fixtures", "doctor-fake-nvml.c");
    const ok = path.join(out, "libfake-nvml-ok.so");
    const mismatch = path.join(out, "libfake-nvml-mismatch.so");
    const a = spawnSync("gcc", ["-shared", "-fPIC", "-o", ok, src]);
    const b = spawnSync("gcc", ["-shared", "-fPIC", "-DINIT_CODE=18", "-o", mismatch, src]);
    if (a.status === 0 && b.status === 0) libs = { ok, mismatch };
    const plain = await runProbe(py, out, { bench: false });
    gpuHere = plain.probe ? cudaUsable(plain.probe) : false;
  });

  const probe = async (env: NodeJS.ProcessEnv) => {
    const r = await runProbe(py, path.join(out, "runs"), { env, bench: false });
    expect(r.finding).toBeNull();
    return r.probe as Probe;
  };

  it("no driver library: no CUDA, a note under device auto, an error under device cuda", async ({ skip }) => {
    if (gpuHere) skip();
    const p = await probe({ LORAKIT_NVML_LIB: "/nonexistent/libnvidia-ml.so.1" });
    const [f] = envFindings(p, auto);
    expect(f).toMatchObject({ code: "ENV_NO_CUDA", severity: "info" });
    expect(String(f?.evidence.nvml)).toContain("/nonexistent/libnvidia-ml.so.1");
    expect(envFindings(p, { device: "cuda", precision: "auto" })[0]).toMatchObject({
      code: "ENV_NO_CUDA",
      severity: "error",
    });
  });

  it("nvmlInit_v2 failing (driver/library mismatch) with no CUDA device", async ({ skip }) => {
    if (gpuHere || !libs) skip();
    const p = await probe({ LORAKIT_NVML_LIB: libs?.mismatch });
    const [f] = envFindings(p, auto);
    expect(f).toMatchObject({ code: "ENV_CUDA_INIT_FAILED", severity: "warning" });
    expect(f?.evidence.nvml_code).toBe(18);
    expect(String(f?.evidence.explanation)).toContain("NVML_ERROR_LIB_RM_VERSION_MISMATCH");
  });

  it("the driver sees a GPU but this torch is a CPU build", async ({ skip }) => {
    if (gpuHere || !libs) skip();
    const p = await probe({ LORAKIT_NVML_LIB: libs?.ok });
    if (p.torch.cuda_compiled) skip(); // a CUDA build of torch on a machine without a GPU: another case
    const [f] = envFindings(p, auto);
    expect(f?.code).toBe("ENV_TORCH_CPU_BUILD");
    expect(f?.title).toBe(`this torch is a CPU build (${p.torch.version}) but the driver sees 1 GPU(s)`);
  });

  it("CUDA_VISIBLE_DEVICES empty hides the GPU the driver sees", async ({ skip }) => {
    if (gpuHere || !libs) skip();
    const p = await probe({ LORAKIT_NVML_LIB: libs?.ok, CUDA_VISIBLE_DEVICES: "" });
    const found = envFindings(p, { device: "cuda", precision: "auto" });
    expect(found[0]).toMatchObject({ code: "ENV_DEVICES_HIDDEN", severity: "error" });
    expect(found[0]?.evidence.gpus).toEqual(["Fake GPU 80GB"]);
  });
});
