"""What the Triton kernels share: where they may run, their row layout, and their one-time self-checks.

One-time self-checks of the fast kernels (Triton, torch.compile, varlen attention), apart from the caller.

A check runs the kernel forward and backward on a small input and compares it with the eager function. It
is first asked for inside the model's forward, possibly inside activation checkpointing. Run there, the
check's own saved tensors would pass through the checkpoint's saved-tensor hooks and count as the layer's:
the recomputation (which finds the answer cached) then saves fewer tensors, and backward fails with torch's
CheckpointError ("A different number of tensors was saved", seen on an H200 when a low-memory run started
with cold caches). Saved-tensor hooks, grad mode and the current CUDA device are per thread, so each check
runs in a thread of its own, on the device it is asked about, with autograd in its default state.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable

import torch


def once_per_device(check: Callable[[str], bool]) -> Callable[[str], bool]:
    """`check(device) -> bool`, cached per device and run in a fresh thread; an exception counts as False."""

    @functools.cache
    @functools.wraps(check)
    def isolated(device: str) -> bool:
        result: list[bool] = []

        def run() -> None:
            dev = torch.device(device)
            if dev.type == "cuda":
                torch.cuda.set_device(dev.index if dev.index is not None else 0)
            result.append(bool(check(device)))

        thread = threading.Thread(target=run, name=f"lorakit-selfcheck-{check.__name__}")
        thread.start()
        thread.join()
        return bool(result and result[0])

    return isolated


def triton_can_run(x: torch.Tensor) -> bool:
    """A Triton kernel may take x: on CUDA, or anywhere under Triton's CPU interpreter (the tests)."""
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, last dim] with a unit stride along the last dim (a copy only where needed)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()
