"""Training checkpoints: `run_dir/checkpoints/step-N/` = the adapter (peft format, so it loads on its own),
`optimizer.pt`, `scheduler.pt`, `scaler.pt` (fp16 only), `rng.pt` (data parallel: `rng-rank{r}.pt`, one per
process), `state.json` (step, data position, tokens seen, the plan keys a resume must not change) and
`SHA256SUMS` (files.py: the sha256 of each of them).

Each is written under `checkpoints/.tmp-step-N/`, SHA256SUMS last, synced, then renamed: a folder named
`step-N` was complete when written, and a crash mid-write leaves only a `.tmp-*` that is never read and is
cleared on the next start. Reading a checkpoint checks every file against SHA256SUMS first: a damaged one is
named and never resumed from (a resume takes the newest checkpoint that verifies). Before writing, the free
space is checked against the size of the last checkpoint; a disk that fills up anyway is one DISK_FULL error,
the temporary folder removed and the earlier checkpoints untouched. The run's adapter, `run_dir/adapter/`
(peft's files, the plan's extras, SHA256SUMS), is written the same way (adapter.py); the RNG states are
read and set in rng.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from . import files
from .adapter import stable_config
from .plan import Plan
from .protocol import EngineError
from .rng import rng_file, rng_state, set_rng_state

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
    """The checkpoints, oldest first: the `step-N` folders (complete when renamed into place; whether still
    intact, `check` says)."""
    found = []
    base = root(run_dir)
    if base.is_dir():
        for p in base.iterdir():
            if p.name.startswith("step-") and p.name[5:].isdigit() and p.is_dir():
                found.append((int(p.name[5:]), p))
    return sorted(found)


def newest(run_dir: Path | str) -> Path | None:
    found = complete(run_dir)
    return found[-1][1] if found else None


def check(path: Path) -> list[str]:
    """What in checkpoint `path` does not match its SHA256SUMS (one sentence per file); [] when intact."""
    return files.check_sums(path)


def corrupt(path: Path, problems: list[str]) -> EngineError:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return EngineError(
        "CHECKPOINT_CORRUPT",
        f"checkpoint {path} is damaged: {problems[0]}{more}",
        "Resume takes the newest checkpoint that verifies: delete this step-N folder to resume from an "
        "earlier one, or start the run again.",
    )


def newest_verified(run_dir: Path | str) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint whose files all match its SHA256SUMS, and the newer ones passed over, each with
    why (the first problem, and how many more)."""
    skipped = []
    for _, path in reversed(complete(run_dir)):
        problems = check(path)
        if not problems:
            return path, skipped
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        skipped.append((path, problems[0] + more))
    return None, skipped


def set_aside(path: Path) -> Path:
    """Renames a damaged checkpoint to `damaged-step-N` (kept for a look, never read again nor pruned)."""
    target = path.parent / f"damaged-{path.name}"
    n = 1
    while target.exists():
        n += 1
        target = path.parent / f"damaged-{path.name}-{n}"
    os.replace(path, target)
    return target


def clear_partial(run_dir: Path | str) -> None:
    base = root(run_dir)
    if base.is_dir():
        for p in base.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


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
    optimizer_state = optimizer.state_dict() if optimizer_state is None else optimizer_state
    older = [p for s, p in complete(run_dir) if s != step]
    kept = f"{older[-1].name} is the last checkpoint, intact." if older else "there is no earlier checkpoint."
    if older:
        need, basis = files.size_on_disk(older[-1]), f"the size of {older[-1].name}"
    else:
        need, basis = _estimate(model, adapter_state, optimizer_state), "estimated from its tensors"
    what = f"checkpoint step-{step}"
    files.check_room(what, base, need, basis, kept)
    whole = {"state_dict": adapter_state} if adapter_state is not None else {}
    writing = tmp / "adapter_model.safetensors"
    try:
        tmp.mkdir()
        model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False, **whole)
        stable_config(tmp / "adapter_config.json")
        rngs = [rng_state()] if rngs is None else rngs
        saved = [("optimizer.pt", optimizer_state), ("scheduler.pt", scheduler.state_dict())]
        if scaler is not None:
            saved.append(("scaler.pt", scaler.state_dict()))
        saved += [(rng_file(rank, len(rngs)), rng) for rank, rng in enumerate(rngs)]
        for name, obj in saved:
            writing = tmp / name
            _torch_save(obj, writing)
        writing = tmp / STATE
        files.write_synced(writing, json.dumps({"step": step, **state}, indent=2))
        writing = tmp / files.SUMS
        files.write_sums(tmp)
        files.sync_folder(tmp)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if files.is_disk_full(e):
            raise files.disk_full(what, base, need, basis, kept, writing) from e
        raise
    files.replace_folder(tmp, final)
    for old_step, old in complete(run_dir)[:-keep]:
        if old_step != protect:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _torch_save(obj, path: Path) -> None:
    """torch.save through a Python file: a full disk then surfaces as the OSError it is (torch's own file
    writer says only `iostream error`)."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def _estimate(model, adapter_state: dict | None, optimizer_state: dict) -> int:
    """Bytes a first checkpoint takes: the LoRA tensors once, the optimizer's state, and the small files."""
    from peft import get_peft_model_state_dict

    adapter = adapter_state if adapter_state is not None else get_peft_model_state_dict(model)
    tensors = [t for t in adapter.values() if isinstance(t, torch.Tensor)]
    for per_param in optimizer_state.get("state", {}).values():
        tensors += [t for t in per_param.values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors) + 64 * 1024


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
    scheduler, scaler (None when absent) and this rank's RNG state. Each file is checked against SHA256SUMS
    first (CHECKPOINT_CORRUPT); one that cannot be read all the same is CHECKPOINT_UNREADABLE. Both name
    the file."""
    path = Path(path)
    problems = check(path)
    if problems:
        raise corrupt(path, problems)
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


# ---------------------------------------------------------------- the adapter of a checkpoint


def restore_adapter(model, checkpoint: Path) -> None:
    """Loads the LoRA weights of a saved checkpoint into the in-memory peft model (once they verify)."""
    from peft import set_peft_model_state_dict

    problems = files.check_sums(checkpoint, ["adapter_model.safetensors"])
    if problems:
        raise corrupt(checkpoint, problems)
    set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))
