"""Control lines from the product on stdin (`stop`, protocol/control.schema.json), read by a daemon thread
and queued; the training loop takes them between optimizer steps. EOF is not a stop: a closed stdin changes
nothing.
SIGINT in a terminal is a `stop`; a second SIGINT exits at once. A stop that comes while a step runs can be
seen at that step's end (`stop_pending`), so that the run ends after the step in progress, not the next one.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
from typing import IO

from .protocol import Emit, log, schema_errors


class Controls:
    """A queue of control commands. `put` is what a reader thread (or an in-process caller) does;
    `take` is what the loop does between steps."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stop = threading.Event()

    def put(self, command: str) -> None:
        if command == "stop":
            self._stop.set()
        self._q.put(command)

    def stop_pending(self) -> bool:
        """A stop has been asked for (taken or not yet): read at a step's end."""
        return self._stop.is_set()

    def take(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out


def read_lines(stream: IO[str], controls: Controls, emit: Emit) -> None:
    for raw in stream:
        line = raw.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            log(emit, f"ignored a control line that is not JSON: {line[:200]!r}", "warning")
            continue
        if schema_errors("control", msg) or msg["type"] != "stop":
            log(emit, f"ignored an unknown control line {line[:200]!r} (expected stop)", "warning")
            continue
        controls.put(msg["type"])


def start_reader(controls: Controls, emit: Emit, stream: IO[str] | None = None) -> threading.Thread:
    t = threading.Thread(
        target=read_lines, args=(stream or sys.stdin, controls, emit), name="lorakit-control", daemon=True
    )
    t.start()
    return t


def install_sigint(controls: Controls, emit: Emit, leader: bool = True) -> None:
    """First SIGINT → a `stop` (checkpoint, then exit 0); the second ends the process at once.

    Under torchrun only rank 0 (`leader`) decides: torchrun passes a SIGINT on to every worker, and the
    others ignore it and stop at the step where rank 0 does (parallel.py)."""
    if not leader:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return
    hits = []

    def handler(signum, frame):
        hits.append(1)
        if len(hits) > 1:
            os._exit(130)
        controls.put("stop")
        # Not written from the handler: it may interrupt the main thread inside a write to the same stream
        # ("reentrant call inside BufferedWriter"); a thread waits for the writer's lock instead.
        threading.Thread(
            target=log,
            args=(emit, "interrupted: saving a checkpoint and stopping (press Ctrl-C again to quit at once)"),
            kwargs={"level": "warning"},
            daemon=True,
        ).start()

    signal.signal(signal.SIGINT, handler)
