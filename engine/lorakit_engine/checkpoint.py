"""Training checkpoints: `run_dir/checkpoints/step-N/` = the adapter (peft format, so it loads on its own),
`optimizer.pt`, `scheduler.pt`, `scaler.pt` (fp16 only), `rng.pt` (data parallel: `rng-rank{r}.pt`, one per
process) and `state.json` (step, data position, tokens seen, the plan keys a resume must not change).

Each is written under `checkpoints/.tmp-step-N/`, `state.json` last, then renamed: a folder named `step-N`
is complete, and a crash mid-write leaves only a `.tmp-*` that is never read and is cleared on the next start.
The run's adapter, `run_dir/adapter/` (peft's files and the plan's extras), is written the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from .plan import Plan
from .protocol import EngineError

STATE = "state.json"


def plan_subset(plan: Plan) -> dict:
    """What must stay the same for a resumed run to continue the interrupted one exactly. `devices` and
    `pack_tokens` are named only when set away from one device and no rows."""
    t = plan.train
    train: dict[str, Any] = {
        "batch_size": t.batch_size,
        "grad_accum": t.grad_accum,
        "seed": t.seed,
        "precision": t.precision,
    }
    if t.devices > 1:  # batch_size is per device
        train["devices"] = t.devices
    if t.pack_tokens:
        train["pack_tokens"] = t.pack_tokens
    return {
        "model": plan.model.model_type,
        "train_data": {"samples": plan.data.train.samples, "tokens": plan.data.train.tokens},
        "pad_id": plan.data.pad_id,
        "lora": asdict(plan.lora),
        "train": train,
    }


def subset_hash(subset: dict) -> str:
    return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()[:16]


def root(run_dir: Path | str) -> Path:
    return Path(run_dir) / "checkpoints"


def complete(run_dir: Path | str) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    found = []
    base = root(run_dir)
    if base.is_dir():
        for p in base.iterdir():
            if p.name.startswith("step-") and p.name[5:].isdigit() and (p / STATE).is_file():
                found.append((int(p.name[5:]), p))
    return sorted(found)


def newest(run_dir: Path | str) -> Path | None:
    found = complete(run_dir)
    return found[-1][1] if found else None


def clear_partial(run_dir: Path | str) -> None:
    base = root(run_dir)
    if base.is_dir():
        for p in base.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------- RNG


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


# ---------------------------------------------------------------- save / load


def save(
    run_dir,
    step: int,
    model,
    optimizer,
    scheduler,
    scaler,
    state: dict,
    keep: int,
    rngs: list[dict] | None = None,
    protect: int | None = None,
    adapter_state: dict | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write checkpoint `step` atomically, then keep only the newest `keep` (and the step `protect`: the best
    eval so far). `model` is the peft model; `rngs` every process's RNG state in rank order (this process's
    alone when None). A sharded model's whole LoRA and optimizer tensors come in `adapter_state` and
    `optimizer_state` (parallel's whole_adapter, whole_optimizer): the files are those of an unsharded run."""
    base = root(run_dir)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-step-{step}"
    final = base / f"step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    whole = {"state_dict": adapter_state} if adapter_state is not None else {}
    model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False, **whole)
    torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    rngs = [rng_state()] if rngs is None else rngs
    for rank, rng in enumerate(rngs):
        torch.save(rng, tmp / rng_file(rank, len(rngs)))
    _write_synced(tmp / STATE, json.dumps({"step": step, **state}, indent=2))
    if final.exists():  # the same step saved by an earlier, resumed attempt
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old_step, old in complete(run_dir)[:-keep]:
        if old_step != protect:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _read(file: Path, read):
    """read(file), or the engine's error naming the file: the readers (json, safetensors, torch's unpickler)
    each fail on a damaged file in their own way."""
    try:
        return read(file)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise EngineError(
            "CHECKPOINT_UNREADABLE",
            f"checkpoint file {file} cannot be read ({type(e).__name__}: {first[:300]})",
            "The checkpoint is damaged or incomplete: resume from an earlier one (delete this step-N "
            "folder), or start the run again.",
        ) from e


def read_state(path: Path) -> dict:
    file = Path(path) / STATE
    state = _read(file, lambda f: json.loads(f.read_text(encoding="utf-8")))
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise EngineError(
            "CHECKPOINT_UNREADABLE",
            f"checkpoint file {file} is not a checkpoint's state (an object with its step)",
            "The checkpoint is damaged: resume from an earlier one (delete this step-N folder), "
            "or start the run again.",
        )
    return state


def read_files(path: Path, rank: int = 0, world: int = 1) -> dict:
    """Every file `load` restores from checkpoint `path`, read: its state, the adapter weights, the optimizer,
    scheduler, scaler (None when absent) and this rank's RNG state. A file that cannot be read is an
    EngineError naming it."""
    path = Path(path)
    pt = lambda f: torch.load(f, weights_only=True)  # noqa: E731
    state = read_state(path)
    weights = _read(path / "adapter_model.safetensors", lambda f: load_file(str(f)))
    optim = _read(path / "optimizer.pt", pt)
    sched = _read(path / "scheduler.pt", pt)
    scaler = _read(path / "scaler.pt", pt) if (path / "scaler.pt").is_file() else None
    rng = path / rng_file(rank, world)
    if not rng.is_file():
        raise EngineError(
            "CHECKPOINT_MISMATCH",
            f"checkpoint {path} has no {rng.name}: it was written by a different number of processes",
            "Resume with the train.devices the run started with, or start a new run in a new run_dir.",
        )
    return {
        "state": state,
        "weights": weights,
        "optimizer": optim,
        "scheduler": sched,
        "scaler": scaler,
        "rng": _read(rng, pt),
    }


def load(
    path: Path,
    model,
    optimizer,
    scheduler,
    scaler,
    rank: int = 0,
    world: int = 1,
    cuda_device=None,
    local_optimizer_state: Callable[[Any, dict], dict] = lambda optimizer, state: state,
) -> dict:
    """Restore adapter weights, optimizer, scheduler, scaler and RNG (this rank's) from checkpoint `path`;
    return its state (step, epoch, micro_batch, tokens_seen, …). `local_optimizer_state` turns the saved
    (whole) optimizer state into what this rank's optimizer takes."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    files = read_files(path, rank, world)
    weights = files["weights"]
    expected = set(get_peft_model_state_dict(model).keys())
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise EngineError(
            "CHECKPOINT_MISMATCH",
            f"checkpoint {path} does not fit this model's adapter: "
            f"missing {missing[:5]}, unexpected {extra[:5]}",
            "Resume with the same model and lora settings, or start a new run in a new run_dir.",
        )
    set_peft_model_state_dict(model, weights)  # sharded (FSDP2): its load hooks cut the whole tensors
    optimizer.load_state_dict(local_optimizer_state(optimizer, files["optimizer"]))
    scheduler.load_state_dict(files["scheduler"])
    if scaler is not None and files["scaler"] is not None:
        scaler.load_state_dict(files["scaler"])
    set_rng_state(files["rng"], cuda_device)
    return files["state"]


# ---------------------------------------------------------------- the adapter


def restore_adapter(model, checkpoint: Path) -> None:
    """Loads the LoRA weights of a saved checkpoint into the in-memory peft model."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))


def write_adapter(model, plan: Plan, state: dict | None = None) -> Path:
    """run_dir/adapter/ in peft's format, plus the plan's extras and files (the base's tokenizer files).
    `state`: the LoRA tensors, whole, when the model holds slices of them (sharded)."""
    final, tmp = plan.run_dir / "adapter", plan.run_dir / ".tmp-adapter"
    shutil.rmtree(tmp, ignore_errors=True)
    whole = {"state_dict": state} if state is not None else {}
    model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False, **whole)
    for name, text in plan.adapter_extras.items():
        (tmp / name).write_text(text, encoding="utf-8")
    for name, source in plan.adapter_files.items():
        shutil.copyfile(source, tmp / name)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
