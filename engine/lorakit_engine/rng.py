"""Each process's random state (Python, NumPy, torch, CUDA) as a training checkpoint saves it
(checkpoint.py: `rng.pt`, or `rng-rank{r}.pt` per process under data parallel) and a resume restores it."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state(cuda_device: torch.device | None = None) -> dict:
    """This process's RNG state; with `cuda_device` (data parallel) that GPU's alone, not every GPU's."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, gauss],  # plain values: loads with weights_only
        "torch": torch.get_rng_state(),
    }
    if cuda_device is not None:
        state["cuda_device"] = torch.cuda.get_rng_state(cuda_device)
    elif torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, cuda_device: torch.device | None = None) -> None:
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda_device" in state and cuda_device is not None:
        torch.cuda.set_rng_state(state["cuda_device"], cuda_device)
    elif "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(rank: int, world: int) -> str:
    return "rng.pt" if world == 1 else f"rng-rank{rank}.pt"


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x
