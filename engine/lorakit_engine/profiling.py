"""Where a training step's time goes, on request: the plan's `profile` ({dir, first_step, steps}; the product
fills it from LORAKIT_PROFILE and LORAKIT_PROFILE_STEPS) runs torch.profiler over those optimizer steps on
every rank and writes, per rank, `<dir>/profile-rank<r>.txt`: the wall time of each
profiled step, the GPU's busy time by kernel category (GEMM, attention, NCCL, other) and the top kernels and
host calls. Host calls that block on the GPU (synchronize, pageable copies, `.item()`) show up under the
host table's cudaStreamSynchronize / cudaMemcpy rows. Off by default; costs nothing then.
`peak_memory` is the memory figure of every step event.
"""

from __future__ import annotations

import sys
import time

import torch

from .plan import ProfilePlan


def peak_memory(device: torch.device) -> int | None:
    """Peak memory so far: CUDA memory allocated on a GPU; the process's resident set on the CPU (Linux,
    macOS); None where it is not measured."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024)


def category(name: str) -> str:
    n = name.lower()
    if "nccl" in n:
        return "nccl"
    if any(k in n for k in ("gemm", "nvjet", "cutlass", "sm90_xmma", "ampere_", "sm80_")):
        return "gemm"
    if "flash" in n or "fmha" in n or "attention" in n:
        return "attention"
    if "memcpy" in n or "memset" in n:
        return "copy"
    return "other"


class StepProfiler:
    """begin(step)/end(step) around each optimizer step; inert without a `profile`."""

    def __init__(self, profile: ProfilePlan | None, rank: int, device: torch.device):
        self.out = profile.dir if profile is not None else None
        self.rank, self.device = rank, device
        self.first = profile.first_step if profile is not None else 0
        self.last = self.first + profile.steps - 1 if profile is not None else -1
        self.prof: torch.profiler.profile | None = None
        self.walls: list[tuple[int, float]] = []
        self._t = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def begin(self, step: int) -> None:
        if self.out is None or not self.first <= step <= self.last:
            return
        if self.prof is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._sync()
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.__enter__()
        self._t = time.perf_counter()

    def end(self, step: int) -> None:
        if self.prof is None or not self.first <= step <= self.last:
            return
        self.walls.append((step, time.perf_counter() - self._t))
        if step == self.last:
            self.finish()

    def finish(self) -> None:
        """Write the profile now (training may end inside the profiled steps: stopped, or fewer steps)."""
        if self.prof is None:
            return
        self._sync()
        self.prof.__exit__(None, None, None)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"profile-rank{self.rank}.txt").write_text(self.summary(), encoding="utf-8")
        self.prof = None

    def summary(self) -> str:
        steps = len(self.walls)
        last = self.walls[-1][0] if self.walls else "-"
        events = self.prof.key_averages()
        device_us: dict[str, float] = {}
        for e in events:
            us = getattr(e, "self_device_time_total", 0.0) or 0.0
            if us and e.device_type == torch.autograd.DeviceType.CUDA:
                device_us[category(e.key)] = device_us.get(category(e.key), 0.0) + us
        lines = [
            f"rank {self.rank}, steps {self.first}..{last} (wall times include one host wait each: "
            "the loss is read at the step's end)",
            "step wall ms: " + ", ".join(f"{s}: {1e3 * w:.1f}" for s, w in self.walls),
            f"mean wall ms/step: {1e3 * sum(w for _, w in self.walls) / max(1, steps):.1f}",
            "GPU busy ms/step by category: "
            + ", ".join(f"{k} {v / 1e3 / max(1, steps):.1f}" for k, v in sorted(device_us.items())),
            f"GPU busy ms/step total: {sum(device_us.values()) / 1e3 / max(1, steps):.1f}",
            "",
        ]
        if self.device.type == "cuda":
            lines.append(
                events.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70)
            )
        lines.append(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70))
        return "\n".join(lines)
