"""The engine's side of the boundary: the protocol schemas, JSON-lines events, the one `EngineError` and
the `error` event every failure becomes. Shapes come from `protocol/*.schema.json`, exported from the
product's zod schema. No torch here, so a bad plan is reported before the heavy imports.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import traceback
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import IO, Any

from .schema_check import Checker

Emit = Callable[[dict[str, Any]], None]


class EngineError(Exception):
    """A failure with a stable code and a one-sentence fix; becomes one `error` event."""

    def __init__(self, code: str, message: str, hint: str):
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint


# ---------------------------------------------------------------- schemas


def protocol_dir() -> Path:
    override = os.environ.get("LORAKIT_PROTOCOL_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent.parent / "protocol"


@cache
def protocol_file(name: str) -> dict:
    """protocol/<name>, exported by the product (schemas, the finding catalogue, the family registry)."""
    path = protocol_dir() / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise EngineError(
            "PROTOCOL_MISSING",
            f"cannot read the protocol file {path}: {e.strerror}",
            "Run the engine from a lorakit checkout, or point LORAKIT_PROTOCOL_DIR at its protocol/ folder.",
        ) from e


def schema(name: str) -> dict:
    return protocol_file(f"{name}.schema.json")


@cache
def _checker(name: str) -> Checker:
    return Checker(schema(name))


def schema_errors(name: str, value: Any) -> list[str]:
    """Every problem with `value` against `protocol/<name>.schema.json`, as `path: message`, sorted."""
    return sorted({f"{p.where()}: {p.message}" for p in _checker(name).problems(value)})


# ---------------------------------------------------------------- events


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


class EventWriter:
    """Writes one JSON object per line and flushes it; safe to call from several threads.
    With `check=True` (env LORAKIT_CHECK_EVENTS=1) each event is validated first, and a bad one raises."""

    def __init__(self, stream: IO[str], check: bool | None = None):
        self.stream = stream
        self.check = os.environ.get("LORAKIT_CHECK_EVENTS") == "1" if check is None else check
        self._lock = threading.RLock()  # re-entrant: a SIGINT handler may emit mid-write

    def __call__(self, event: dict[str, Any]) -> None:
        if self.check:
            problems = schema_errors("event", event)
            if problems:
                raise ValueError(f"engine wrote an invalid {event.get('type')} event: {problems}")
        line = json.dumps(event, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def log(emit: Emit, message: str, level: str = "info") -> None:
    emit({"type": "log", "level": level, "message": message})


_HINTS = {
    "CUDA_OOM": "Lower train.batch_size (raise grad_accum to keep the effective batch), shorten max_length, "
    "or turn on gradient_checkpointing.",
    "ENGINE_CRASH": "This is a bug or an environment problem: rerun with resume: true to continue from the "
    "last checkpoint, and report the traceback if it happens again.",
}


def error_event(exc: BaseException) -> dict[str, Any]:
    """One `error` event for any exception: an EngineError keeps its code; a few others are recognised."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, EngineError):
        code, message, hint = exc.code, exc.message, exc.hint
    elif isinstance(exc, KeyboardInterrupt):  # before the SIGINT handler was in place
        code, message = "INTERRUPTED", "interrupted before training started"
        hint = "Run it again; once training runs, Ctrl-C saves a checkpoint first."
    elif type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc):
        code, message, hint = (
            "CUDA_OOM",
            str(exc).splitlines()[0] if str(exc) else "CUDA out of memory",
            _HINTS["CUDA_OOM"],
        )
    else:
        code, message, hint = "ENGINE_CRASH", f"{type(exc).__name__}: {exc}", _HINTS["ENGINE_CRASH"]
    return {"type": "error", "code": code, "message": message, "hint": hint, "traceback": tb}


def say(message: str) -> None:
    """A human log line (stderr; stdout carries events only), marked with the rank under torchrun."""
    rank = f" rank {os.environ.get('RANK', '0')}" if os.environ.get("WORLD_SIZE", "1") != "1" else ""
    print(f"[lorakit-engine{rank}] {message}", file=sys.stderr, flush=True)
