"""The processes of a torchrun launch (`python -m torch.distributed.run --standalone --nproc_per_node=N
-m lorakit_engine train --plan …`, what the product launches when `train.devices` > 1): each rank's place,
its output, and one `error` event for a failure on any rank.

- `train.devices` must be the number of processes (`check_devices`); under torchrun on CUDA each rank takes
  its own GPU, LOCAL_RANK (`resolve_device`).
- Rank 0 alone writes events; the other ranks' `emit` (`quiet_emitter`) passes log lines to stderr, marked
  with the rank.
- A failure on another rank reaches rank 0 through torchrun's store (`ErrorRelay`): rank 0 writes that rank's
  `error` event (a watcher thread does it even while rank 0 waits in a collective) and exits 1; the failing
  rank writes it itself only when rank 0 does not answer.

How the ranks train together is parallel.py's.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist

from .plan import TrainPlan
from .protocol import Emit, EngineError, EventWriter

_ERROR, _CLAIM, _EMITTED = "lorakit/error", "lorakit/error-claim", "lorakit/error-emitted"


def launched_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) for a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index on its machine (its GPU's)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(train: TrainPlan, local_rank: int = 0, world: int = 1) -> torch.device:
    """The plan's device; under torchrun on CUDA, this rank's GPU (LOCAL_RANK), made the current one."""
    if train.device == "cuda" and not torch.cuda.is_available():
        raise EngineError(
            "NO_CUDA",
            "train.device is cuda but torch sees no CUDA device "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})",
            "Install a CUDA build of torch and check the driver with nvidia-smi, or set train.device: auto.",
        )
    if train.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    if world == 1:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise EngineError(
            "NO_CUDA",
            f"train.devices asks for {world} processes on this machine but torch sees {count} CUDA device(s)",
            "Set train.devices to the number of GPUs (nvidia-smi lists them) or fewer.",
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def check_devices(train: TrainPlan) -> None:
    """The plan's device count against the processes torchrun started."""
    _, world = launched_world()
    if train.devices != world:
        raise EngineError(
            "DEVICES_MISMATCH",
            f"the plan asks for {train.devices} device(s) (train.devices) but the engine runs as {world} "
            "process(es)",
            f"Launch it with `python -m torch.distributed.run --standalone --nproc_per_node={train.devices} "
            "-m lorakit_engine train --plan plan.json` (lorakit does this), or set train.devices to "
            f"{world}.",
        )


def quiet_emitter(rank: int) -> Emit:
    """The `emit` of a rank other than 0: events are rank 0's to write; log lines go to stderr, marked."""

    def emit(event: dict[str, Any]) -> None:
        if event.get("type") == "log":
            print(
                f"[lorakit-engine rank {rank}] {event['level']}: {event['message']}",
                file=sys.stderr,
                flush=True,
            )

    return emit


class ErrorRelay:
    """Exactly one `error` event for a failure on any rank, written by rank 0 when it can.

    Keys in torchrun's store (a client of its own, so that it never waits behind the process group):
    `error` holds the first failing non-zero rank's event; whoever sets `claim` first writes an event; the
    writer sets `emitted` once the line is out. Rank 0 claims for its own failure at once; its watcher
    thread claims for another rank's after a grace second (a failure every rank shares, such as a plan
    error, is then reported by rank 0 as its own)."""

    def __init__(self, rank: int, writer: EventWriter):
        self.rank, self.writer = rank, writer
        self.store = tdist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=60),
            wait_for_workers=False,
        )

    def _claim(self) -> bool:
        return self.store.compare_set(_CLAIM, "", str(self.rank)) == str(self.rank).encode()

    def _write(self, event: dict) -> None:
        try:
            self.writer(event)
        finally:
            self.store.set(_EMITTED, "1")

    def watch(self, poll_s: float = 0.2, grace_s: float = 1.0) -> threading.Thread:
        """Rank 0: a daemon thread that reports another rank's failure, then ends this process (it may be
        stuck in a collective that will never complete)."""

        def loop() -> None:
            while not self.store.check([_ERROR]):
                time.sleep(poll_s)
            time.sleep(grace_s)
            if self._claim():
                self._write(json.loads(self.store.get(_ERROR)))
                os._exit(1)

        t = threading.Thread(target=loop, name="lorakit-rank-errors", daemon=True)
        t.start()
        return t

    def report(self, event: dict, wait_s: float = 10.0) -> None:
        """This rank failed with `event`: make sure it is written once."""
        if self.rank == 0:
            if self._claim():
                self._write(event)
            else:  # the watcher is writing another rank's failure and will end the process
                time.sleep(wait_s)
            return
        event = {**event, "message": f"rank {self.rank}: {event['message']}"}
        self.store.compare_set(_ERROR, "", json.dumps(event))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.store.check([_EMITTED]):
                return
            time.sleep(0.1)
        if self._claim():  # rank 0 is gone or frozen: write the event ourselves
            print(
                f"[lorakit-engine rank {self.rank}] rank 0 did not answer; writing the error event here",
                file=sys.stderr,
                flush=True,
            )
            self._write(event)


def open_relay(rank: int, writer: EventWriter) -> ErrorRelay | None:
    """The relay (`writer` over the real stdout; rank 0's is its event writer), or None when torchrun's store
    cannot be reached (each rank then reports on its own)."""
    try:
        return ErrorRelay(rank, writer)
    except Exception as e:  # noqa: BLE001 — a missing store must not hide the real failure later
        print(f"[lorakit-engine rank {rank}] cannot reach torchrun's store: {e}", file=sys.stderr, flush=True)
        return None
