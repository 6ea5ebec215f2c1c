"""What the engine needs from the interpreter it runs in, checked without importing any of it (no torch
import, so the answer takes milliseconds): `python -m lorakit_engine.deps [--for demo]` prints one JSON
object — every package with the version seen and the oldest one the engine is tested with, what is missing
or too old, and one command that adds only those.

The floors below are the oldest versions a test run has used (CI: the pins in engine/requirements.txt; a GPU
machine's own interpreter: CUDA torch 2.11, transformers 5.17, peft 0.21); engine/pyproject.toml declares the
same floors (tests/engine-deps.test.ts checks both agree). torch is never part of a suggested command: a pip
install of torch into an interpreter that has a CUDA build would replace it, and which build fits depends on
the machine's CUDA.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import importlib.util
import json
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from .protocol import EngineError

PYTHON_MIN = (3, 10)
TORCH_URL = "https://pytorch.org/get-started/locally/"

# (distribution, import name, oldest version tested, what the engine uses it for)
REQUIRED: tuple[tuple[str, str, str, str], ...] = (
    ("torch", "torch", "2.11", "training"),
    ("transformers", "transformers", "5.17", "model classes and generation"),
    ("peft", "peft", "0.21", "LoRA layers and the adapter format"),
    ("safetensors", "safetensors", "0.8", "checkpoint files"),
    ("numpy", "numpy", "1.26", "RNG state in checkpoints"),
)
# Needed by one command only: `for` names it.
OPTIONAL: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "demo": (("gguf", "gguf", "0.19", "reading the demo model's GGUF file"),),
}


def version_tuple(text: str) -> tuple[int, ...]:
    """The release numbers of a version string: '2.11.0+cu130' → (2, 11, 0); '5.0.0rc1' → (5, 0, 0)."""
    m = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(x) for x in m.group(0).split(".")) if m else ()


def at_least(have: str, need: str) -> bool:
    a, b = version_tuple(have), version_tuple(need)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) >= b + (0,) * (width - len(b))


def pins(path: Path | None = None) -> dict[str, str]:
    """`name==version` lines of engine/requirements.txt (the versions CI and the demo run), by name."""
    path = path or Path(__file__).resolve().parent.parent / "requirements.txt"
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s#;]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def _installed(dist: str, module: str) -> tuple[bool, str | None]:
    """(importable, version). A module found without metadata (a source build) counts as present."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return False, None
    try:
        return True, metadata.version(dist)
    except metadata.PackageNotFoundError:
        return True, None


def check(purpose: str | None = None, pinned: dict[str, str] | None = None) -> dict[str, Any]:
    """Every package the engine (and `purpose`, e.g. "demo") needs, with what this interpreter has."""
    pinned = pins() if pinned is None else pinned
    wanted = REQUIRED + (OPTIONAL.get(purpose, ()) if purpose else ())
    packages, missing, outdated = [], [], []
    for dist, module, need, why in wanted:
        present, have = _installed(dist, module)
        status = "missing" if not present else "outdated" if have and not at_least(have, need) else "ok"
        row = {"name": dist, "need": need, "have": have, "status": status, "for": why}
        packages.append(row)
        if status == "missing":
            missing.append(dist)
        elif status == "outdated":
            outdated.append(dist)
    python_ok = sys.version_info[:2] >= PYTHON_MIN
    result: dict[str, Any] = {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "python_ok": python_ok,
        "packages": packages,
        "missing": missing,
        "outdated": outdated,
        "command": None,
        "torch_hint": None,
    }
    # What to run: one pip command for everything but torch, pinned to the tested versions.
    need_of = {p["name"]: p["need"] for p in packages}
    todo = [n for n in missing + outdated if n != "torch"]
    if todo:
        specs = []
        for name in todo:
            pin = pinned.get(name.lower())
            specs.append(
                f"{name}=={pin}" if pin and at_least(pin, need_of[name]) else f"{name}>={need_of[name]}"
            )
        result["command"] = " ".join([shlex.quote(sys.executable), "-m", "pip", "install", *specs])
    if "torch" in missing or "torch" in outdated:
        result["torch_hint"] = (
            f"install torch {need_of['torch']} or newer built for this machine's CUDA ({TORCH_URL}) into "
            f"{sys.executable}"
        )
    return result


def problem(result: dict[str, Any]) -> tuple[str, str, str] | None:
    """(code, message, hint) when the interpreter cannot run the engine; None when it can."""
    rows = {p["name"]: p for p in result["packages"]}
    hint_parts = []
    if result["torch_hint"]:
        hint_parts.append(result["torch_hint"][0].upper() + result["torch_hint"][1:])
    if result["command"]:
        hint_parts.append(f"run: {result['command']}")
    hint = "; then ".join(hint_parts) + "." if hint_parts else ""
    if not result["python_ok"]:
        need = ".".join(map(str, PYTHON_MIN))
        return (
            "PYTHON_ENV_OUTDATED",
            f"{result['python']} is Python {result['python_version']}; the engine needs {need} or newer",
            f"Use a Python {need}+ interpreter (LORAKIT_PYTHON, or python3 on PATH).",
        )
    if result["missing"]:
        what = ", ".join(f"{n} (for {rows[n]['for']})" for n in result["missing"])
        old = "".join(
            f"; {n} {rows[n]['have']} is older than the {rows[n]['need']} the engine needs"
            for n in result["outdated"]
        )
        return "PYTHON_ENV_INCOMPLETE", f"{result['python']} lacks {what}{old}", hint
    if result["outdated"]:
        what = "; ".join(
            f"{n} {rows[n]['have']} is older than the {rows[n]['need']} the engine needs"
            for n in result["outdated"]
        )
        return "PYTHON_ENV_OUTDATED", f"{result['python']}: {what}", hint
    return None


def require(purpose: str | None = None) -> None:
    """Raises the EngineError `problem` describes, before anything heavy is imported."""
    found = problem(check(purpose))
    if found:
        raise EngineError(*found)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lorakit_engine.deps", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--for", dest="purpose", choices=sorted(OPTIONAL), help="also the packages this command needs"
    )
    args = ap.parse_args(argv)
    result = check(args.purpose)
    found = problem(result)
    result["problem"] = dict(zip(("code", "message", "hint"), found, strict=True)) if found else None
    sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
