"""Data-parallel training under torchrun (`python -m torch.distributed.run --standalone --nproc_per_node=N
-m lorakit_engine train --plan …`, what the product launches when `train.devices` > 1).

One process per device, each with the whole model (LoRA over a base that fits one GPU; `train.shard: fsdp`
splits a base that does not fit over the devices instead: sharding.py says what changes). The conventions:

- `batch_size` is per device: an optimizer step covers `batch_size × devices × grad_accum` samples. Global
  micro-batch `i` of an epoch is the same `batch_size × devices` samples that a single process with that
  batch size would take. They are dealt over the ranks by length (data.deal): the rank with the longest
  samples takes fewer, so that every rank pads to about the same size and none waits for another (a rank's
  padded size never exceeds `batch_size` × the longest sample). The tail of an epoch may leave a rank
  nothing: it then runs no forward.
- The loss of a step is Σ cross-entropy over every rank's window ÷ the window's trained tokens on all ranks.
  The ranks agree on that token count in one tiny all-reduce per step that the GPU waits for, not the host;
  each backpropagates `ce_local / tokens_global`, and the LoRA gradients are summed over the ranks once a step
  (one flat all-reduce; no DDP wrapper, hence no averaging to undo). The update is then exactly the
  single-process update, up to the order of float additions.
- Control lines (`stop`, `save`, `sample`) reach rank 0 only (torchrun hands its stdin to every worker; only
  rank 0 reads it). Rank 0's decision travels in the same per-step all-reduce as the token counts, read at
  the end of the step, so every rank saves, samples or stops after the same step.
- Rank 0 alone writes events, checkpoints, the adapter, samples and the reload check. Every rank's RNG state
  goes into the checkpoint (`rng-rank{r}.pt`) and comes back on resume.
- A failure on another rank reaches rank 0 through torchrun's store (`ErrorRelay`): rank 0 writes that rank's
  `error` event (a watcher thread does it even while rank 0 waits in a collective) and exits 1; the failing
  rank writes it itself only when rank 0 does not answer.
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

from .protocol import Emit, EngineError, EventWriter

# Rank 0 alone samples, writes checkpoints and generates while the others wait in the next collective.
_TIMEOUT = timedelta(minutes=30)
_ERROR, _CLAIM, _EMITTED = "lorakit/error", "lorakit/error-claim", "lorakit/error-emitted"


def launched_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) for a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class Dist:
    """This process's place in the group. With world 1 every method is a no-op (or the identity)."""

    def __init__(self) -> None:
        self.rank, self.world = launched_world()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device: torch.device | None = None
        self.active = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def check(self, plan: dict) -> None:
        devices = plan["train"]["devices"]
        if devices != self.world:
            raise EngineError(
                "DEVICES_MISMATCH",
                f"the plan asks for {devices} device(s) (train.devices) but the engine runs as "
                f"{self.world} process(es)",
                f"Launch it with `python -m torch.distributed.run --standalone --nproc_per_node={devices} "
                "-m lorakit_engine train --plan plan.json` (lorakit does this), or set train.devices to "
                f"{self.world}.",
            )

    def cuda_device(self) -> torch.device:
        """This rank's GPU (and make it the current one, before anything touches CUDA)."""
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise EngineError(
                "NO_CUDA",
                f"train.devices asks for {self.world} processes on this machine but torch sees {count} "
                "CUDA device(s)",
                "Set train.devices to the number of GPUs (nvidia-smi lists them) or fewer.",
            )
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def start(self, device: torch.device) -> None:
        self.device = device
        if self.world == 1 or self.active:
            return
        if device.type == "cuda":
            tdist.init_process_group("nccl", timeout=_TIMEOUT, device_id=device)
        else:
            tdist.init_process_group("gloo", timeout=_TIMEOUT)
        self.active = True

    def close(self) -> None:
        """Leave the group: after the last collective (the final save and eval), rank 0 goes on alone."""
        if self.active:
            tdist.destroy_process_group()
            self.active = False

    # ------------------------------------------------------------ collectives

    def agree(self, commands: list[str], n_trained: int, n_real: int) -> Agreement:
        """Rank 0's control lines and the window's token counts over all ranks, in one all-reduce that runs
        while this step computes (no host wait before the forward): `divisor` (the window's trained tokens,
        ≥ 1, a device tensor under torchrun) scales the loss; `result()` waits for the rest at the step's
        end, where the loss is read anyway."""
        values = [int(c in commands) for c in ("save", "sample", "stop")] + [n_trained, n_real]
        if not self.active:
            return Agreement(values, max(1, n_trained))
        t = torch.tensor(values, dtype=torch.int64)
        t = (t.pin_memory() if self.device.type == "cuda" else t).to(self.device, non_blocking=True)
        work = tdist.all_reduce(t, async_op=True)
        work.wait()  # the current stream waits for the collective; the host does not
        return Agreement(t, t[3].clamp_min(1))

    def sum_grads(self, params: list[torch.Tensor], ce_total: torch.Tensor) -> torch.Tensor:
        """Sum the gradients of `params` (and the window's summed loss) over the ranks, in one flat
        all-reduce; a rank that ran no forward this step contributes zeros. Returns the summed loss."""
        if not self.active:
            return ce_total
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads] + [ce_total.reshape(1).to(grads[0].dtype)])
        tdist.all_reduce(flat)
        at = 0
        for p in params:
            p.grad = flat[at : at + p.numel()].view_as(p)
            at += p.numel()
        return flat[at]

    def sum_floats(self, *values: float) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return t.tolist()

    def broadcast_(self, params: list[torch.Tensor]) -> None:
        """Rank 0's values everywhere (the adapter starts the same on every rank, whatever the RNG did)."""
        if self.active:
            for p in params:
                tdist.broadcast(p.data, src=0)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out


class Agreement:
    """The agreed (save, sample, stop, trained tokens, real tokens) of one step; see Dist.agree."""

    def __init__(self, values: list[int] | torch.Tensor, divisor: int | torch.Tensor):
        self._values, self.divisor = values, divisor

    def result(self) -> tuple[bool, bool, bool, int, int]:
        values = self._values.tolist() if isinstance(self._values, torch.Tensor) else self._values
        save, sample, stop, n_trained, n_real = values
        return save > 0, sample > 0, stop > 0, n_trained, n_real


# ---------------------------------------------------------------- output of the other ranks


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
