"""The run's adapter, `run_dir/adapter/`: peft's files, the plan's extras and files (the base's tokenizer
files) and SHA256SUMS, written under `run_dir/.tmp-adapter/`, synced, then renamed into place, as a
checkpoint is (checkpoint.py); a full disk is one DISK_FULL error and the adapter written before is kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import files
from .plan import Plan


def write_adapter(model, plan: Plan, state: dict | None = None) -> Path:
    """run_dir/adapter/ in peft's format, plus the plan's extras and files (the base's tokenizer files) and
    SHA256SUMS of them all but README.md (the model card lorakit writes over peft's afterwards).
    `state`: the LoRA tensors, whole, when the model holds slices of them (sharded)."""
    from peft import get_peft_model_state_dict

    final, tmp = plan.run_dir / "adapter", plan.run_dir / ".tmp-adapter"
    shutil.rmtree(tmp, ignore_errors=True)
    tensors = state if state is not None else get_peft_model_state_dict(model)
    need = sum(t.numel() * t.element_size() for t in tensors.values())
    need += sum(len(t.encode()) for t in plan.adapter_extras.values()) + 64 * 1024
    need += sum(Path(source).stat().st_size for source in plan.adapter_files.values())
    kept = (
        "the adapter written before is intact."
        if final.is_dir()
        else "the checkpoints are intact: resume to write the adapter."
    )
    what = "the adapter"
    files.check_room(what, plan.run_dir, need, "its tensors and files", kept)
    whole = {"state_dict": state} if state is not None else {}
    writing = tmp / "adapter_model.safetensors"
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False, **whole)
        stable_config(tmp / "adapter_config.json")
        for name, text in plan.adapter_extras.items():
            writing = tmp / name
            writing.write_text(text, encoding="utf-8")
        for name, source in plan.adapter_files.items():
            writing = tmp / name
            shutil.copyfile(source, writing)
        writing = tmp / files.SUMS
        files.write_sums(tmp, skip=ADAPTER_UNSUMMED)
        files.sync_folder(tmp)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if files.is_disk_full(e):
            raise files.disk_full(what, plan.run_dir, need, "its tensors and files", kept, writing) from e
        raise
    files.replace_folder(tmp, final)
    return final


def stable_config(file: Path) -> None:
    """peft keeps target_modules in a set and writes it in the order of the process's string hashing:
    sorted here, the same adapter is the same bytes (and SHA256SUMS) from every process. peft reads a list."""
    cfg = json.loads(file.read_text(encoding="utf-8"))
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
        file.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")


# The adapter's model card: peft writes a blank one, lorakit writes its own over it after the run.
ADAPTER_UNSUMMED = ("README.md",)


def check_adapter(adapter_dir: Path) -> list[str]:
    """What in an adapter folder does not match its SHA256SUMS; [] when intact."""
    return files.check_sums(adapter_dir, skip=ADAPTER_UNSUMMED)
