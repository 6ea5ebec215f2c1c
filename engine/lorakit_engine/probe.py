"""`python -m lorakit_engine.probe [--output-dir DIR]`: what this machine offers for training, as one
JSON object on stdout. The doctor (src/doctor/env.ts) turns it into findings.

NVML (the driver's management library, loaded with ctypes) and torch.cuda are asked separately, so that
the doctor can say which layer fails: the driver, the torch build, or the devices made visible. Every
query sits in its own try/except and reports the exception text instead of stopping the probe.
`LORAKIT_NVML_LIB` overrides the library path (tests point it at a missing file or at a small library
that returns an error code). The NVML queries live in nvml.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .nvml import error_text, probe_nvml

BENCH_SECONDS = 0.4  # CPU matmul timing budget when no GPU is usable
BENCH_SAMPLES = 5  # timings per thread count; their median is the rate


def probe_torch() -> tuple[dict[str, Any], dict[str, Any]]:
    """torch's build, and what torch.cuda sees; each query alone in its try/except."""
    build: dict[str, Any] = {"version": None, "cuda_compiled": None, "hip": None, "import_error": None}
    cuda: dict[str, Any] = {
        "is_available": None,
        "device_count": None,
        "devices": [],
        "errors": {},
    }
    try:
        import torch
    except Exception as e:  # noqa: BLE001 — a broken torch install is a finding, not a crash
        build["import_error"] = error_text(e)
        return build, cuda
    build["version"] = torch.__version__
    build["cuda_compiled"] = getattr(torch.version, "cuda", None)
    build["hip"] = getattr(torch.version, "hip", None)
    try:
        cuda["is_available"] = bool(torch.cuda.is_available())
    except Exception as e:  # noqa: BLE001
        cuda["errors"]["is_available"] = error_text(e)
    try:
        cuda["device_count"] = int(torch.cuda.device_count())
    except Exception as e:  # noqa: BLE001
        cuda["errors"]["device_count"] = error_text(e)
    if cuda["is_available"]:
        try:
            torch.cuda.init()
        except Exception as e:  # noqa: BLE001
            cuda["errors"]["init"] = error_text(e)
    for i in range(cuda["device_count"] or 0):
        dev: dict[str, Any] = {"index": i, "errors": {}}
        queries = (
            ("name", lambda i=i: torch.cuda.get_device_name(i)),
            ("capability", lambda i=i: list(torch.cuda.get_device_capability(i))),
            ("bf16", lambda i=i: _bf16(torch, i)),
            ("mem_get_info", lambda i=i: list(torch.cuda.mem_get_info(i))),
        )
        for key, q in queries:
            try:
                dev[key] = q()
            except Exception as e:  # noqa: BLE001
                dev["errors"][key] = error_text(e)
        if isinstance(dev.get("mem_get_info"), list):
            dev["memory_free"], dev["memory_total"] = dev.pop("mem_get_info")
        cuda["devices"].append(dev)
    return build, cuda


def _bf16(torch, index: int) -> bool:
    with torch.cuda.device(index):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def bench_cpu(seconds: float = BENCH_SECONDS, samples: int = BENCH_SAMPLES) -> dict[str, Any]:
    """fp32 matmul rate on this CPU (GFLOP/s): `samples` short timings on all of torch's threads (their median
    is `matmul_gflops`) and as many on one thread, within about `seconds` in all. All threads' rate swings
    tenfold on a shared machine (threads that wait for a busy core stall the others); one thread's is steady:
    the doctor's estimate reads both (src/doctor/env.ts cpuEstimate)."""
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return {"error": error_text(e)}
    n = 512
    a, b = torch.randn(n, n), torch.randn(n, n)
    threads = torch.get_num_threads()
    runs, start = 0, time.perf_counter()

    def rates(k: int) -> list[float]:
        nonlocal runs
        torch.set_num_threads(k)
        torch.mm(a, b)  # warm-up at this thread count
        out = []
        for _ in range(samples):
            m, t0 = 0, time.perf_counter()
            while True:
                torch.mm(a, b)
                m += 1
                took = time.perf_counter() - t0
                if took >= seconds / (2 * samples) or m >= 400:
                    break
            runs += m
            out.append(2 * n**3 * m / took / 1e9)
        return out

    try:
        many = rates(threads)
        one = rates(1) if threads > 1 else many
    finally:
        torch.set_num_threads(threads)
    return {
        "matmul_gflops": statistics.median(many),
        "all_threads_gflops": [round(r, 2) for r in many],
        "one_thread_gflops": [round(r, 2) for r in one],
        "size": n,
        "runs": runs,
        "seconds": time.perf_counter() - start,
        "threads": threads,
    }


def probe_disk(output_dir: str) -> dict[str, Any]:
    """Free space where the runs go (the nearest existing folder up from it)."""
    path = Path(output_dir).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    out: dict[str, Any] = {"path": str(Path(output_dir).resolve()), "measured_at": str(path)}
    try:
        usage = shutil.disk_usage(path)
        out["free_bytes"], out["total_bytes"] = int(usage.free), int(usage.total)
    except OSError as e:
        out["error"] = error_text(e)
    return out


def probe_memory() -> dict[str, Any]:
    """System memory from /proc/meminfo (Linux); empty elsewhere."""
    out: dict[str, Any] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                out["total" if key == "MemTotal" else "available"] = int(rest.split()[0]) * 1024
    except OSError as e:
        out["error"] = error_text(e)
    return out


def probe(output_dir: str = ".", bench: bool = True) -> dict[str, Any]:
    nvml = probe_nvml()
    build, cuda = probe_torch()
    affinity = None
    if hasattr(os, "sched_getaffinity"):
        try:
            affinity = len(os.sched_getaffinity(0))
        except OSError:
            affinity = None
    cpu: dict[str, Any] = {"count": os.cpu_count(), "usable": affinity, "machine": platform.machine()}
    if bench and not cuda["is_available"]:
        cpu["bench"] = bench_cpu()
    return {
        "version": 1,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": build,
        "nvml": nvml,
        "cuda": cuda,
        "env": {
            k: os.environ.get(k)
            for k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "LORAKIT_NVML_LIB")
        },
        "disk": probe_disk(output_dir),
        "memory": probe_memory(),
        "cpu": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lorakit_engine.probe", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--output-dir", default=".", help="where runs will be written (free disk is measured there)"
    )
    ap.add_argument("--no-bench", action="store_true", help="skip the CPU matmul timing")
    args = ap.parse_args(argv)
    result = probe(args.output_dir, bench=not args.no_bench)
    sys.stdout.write(json.dumps(result, ensure_ascii=False, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
