"""How the ranks train together, behind one interface that the training loop calls without knowing which:

    Single        one process; every collective is the identity
    DataParallel  torchrun (`train.devices` > 1): one process per device, each with the whole model
    Sharded       torchrun with `train.shard: fsdp`: the base split over the ranks (FSDP2, fsdp.py), for a
                  base that does not fit one device

Data parallel, the conventions:
- `batch_size` is per device: an optimizer step covers `batch_size × devices × grad_accum` samples. Global
  micro-batch `i` of an epoch is the same `batch_size × devices` samples that a single process with that
  batch size would take, dealt over the ranks by length (batches.deal) so that every rank pads to about the
  same size. The tail of an epoch may leave a rank nothing: it then runs no forward.
- The loss of a step is Σ cross-entropy over every rank's window ÷ the window's trained tokens on all ranks.
  The ranks agree on that token count in one tiny all-reduce per step that the GPU waits for, not the host;
  each backpropagates `ce_local / tokens_global`, and the LoRA gradients are summed over the ranks once a step
  (one flat all-reduce; no DDP wrapper, hence no averaging to undo). The update is then exactly the
  single-process update, up to the order of float additions.
- Control lines reach rank 0 only (torchrun hands its stdin to every worker; only rank 0 reads it). A `stop`
  travels in the same per-step all-reduce as the token counts, read at the end of the step, so every rank
  stops after the same step.
- Rank 0 alone writes events, checkpoints, the adapter, samples and the reload check. Every rank's RNG state
  goes into the checkpoint (`rng-rank{r}.pt`) and comes back on resume.

Sharded, what changes:
- The base loads on the CPU of every rank; `prepare` shards it onto the devices.
- Every forward all-gathers a layer's weights: every rank runs the same number of forwards. A rank left
  without a micro-batch (the tail of an epoch, of the eval split) runs an idle one (batches.idle: zero loss,
  zero gradient), its RNG untouched, so that dropout masks stay those of an unsharded run. Samples are
  generated on every rank (greedy, the same prompts: the same tokens everywhere), rank 0 alone emitting them.
- FSDP sums the gradients itself; only the summed loss is all-reduced, for the log.
- Checkpoints and the adapter hold whole tensors, gathered by every rank and written by rank 0.
- The reload check loads the written adapter under a second name onto the same sharded base (a fresh base
  would not fit one device either): every rank goes on to the end, the process group open until that last
  forward.
"""

from __future__ import annotations

import contextlib
import random
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist

from . import fsdp
from .control import Controls
from .generate import emit_samples
from .plan import Plan, TrainPlan
from .protocol import Emit, EngineError, log
from .torchrun import launched_world

# Rank 0 alone writes checkpoints and generates while the others wait in the next collective.
_TIMEOUT = timedelta(minutes=30)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Agreement:
    """The agreed (stop, trained tokens, real tokens) of one step; see `agree`."""

    def __init__(self, values: list[int] | torch.Tensor, divisor: int | torch.Tensor, late_stop=None):
        self._values, self.divisor, self._late_stop = values, divisor, late_stop

    def result(self) -> tuple[bool, int, int]:
        values = self._values.tolist() if isinstance(self._values, torch.Tensor) else self._values
        stop, n_trained, n_real = values
        return stop > 0 or (self._late_stop is not None and self._late_stop()), n_trained, n_real


class Single:
    """One process: the whole model on one device."""

    rank, world, main = 0, 1, True
    shards_the_base = False

    def __init__(self, device: torch.device):
        self.device = device

    @property
    def load_device(self) -> torch.device:
        """Where the base loads."""
        return self.device

    @property
    def cuda_rng(self) -> torch.device | None:
        """The GPU whose RNG a checkpoint keeps (None: every GPU's)."""
        return None

    def prepare(self, model, seed: int, emit: Emit) -> None:
        """The peft model, before its optimizer exists: made the same on every rank, RNGs per rank."""

    def agree(self, controls: Controls, n_trained: int, n_real: int) -> Agreement:
        """Rank 0's `stop` and the window's token counts over all ranks, agreed while the step computes:
        `divisor` (the window's trained tokens, ≥ 1) scales the loss; `result()` is read at the step's end.
        One process: a stop that came while the step ran ends the run after it."""
        stop = int("stop" in controls.take())
        return Agreement([stop, n_trained, n_real], max(1, n_trained), controls.stop_pending)

    def forwards(self, window: list, idle) -> list[tuple[Any, Any]]:
        """(micro-batch, context to run it in) for this rank's part of the window (None: nothing here)."""
        return [(b, contextlib.nullcontext()) for b in window if b is not None]

    def reduce(self, trainable: list[torch.Tensor], ce_total: torch.Tensor) -> torch.Tensor:
        """After the window's backward passes: gradients summed over the ranks; the summed loss."""
        return ce_total

    def eval_batches(self, batches: list, idle) -> list:
        return batches

    def sum_floats(self, *values: float) -> list[float]:
        return list(values)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        return [obj]

    def whole_adapter(self, model) -> dict[str, torch.Tensor] | None:
        """The LoRA tensors, whole, where the model holds slices of them (collective); None: as they are."""
        return None

    def whole_optimizer(self, optimizer) -> dict | None:
        """The optimizer state with whole tensors, where it holds slices (collective); None: its own."""
        return None

    def local_optimizer_state(self, optimizer, state: dict) -> dict:
        """A saved (whole) optimizer state as this rank's optimizer takes it."""
        return state

    def emit_samples(self, model, plan: Plan, phase: str, emit: Emit) -> None:
        emit_samples(model, plan, phase, emit)

    def end_training(self) -> bool:
        """After the last training collective: whether this rank goes on to write and check the adapter."""
        return True

    def close(self) -> None:
        """Leave the group: after the last collective."""


class DataParallel(Single):
    def __init__(self, rank: int, world: int, device: torch.device):
        super().__init__(device)
        self.rank, self.world, self.main = rank, world, rank == 0
        self.active = False

    @property
    def cuda_rng(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None  # this rank's GPU's RNG only

    def start(self) -> None:
        if self.device.type == "cuda":
            tdist.init_process_group("nccl", timeout=_TIMEOUT, device_id=self.device)
        else:
            tdist.init_process_group("gloo", timeout=_TIMEOUT)
        self.active = True

    def prepare(self, model, seed: int, emit: Emit) -> None:
        for p in model.parameters():  # the adapter starts as rank 0's, whatever each rank's RNG drew
            if p.requires_grad:
                tdist.broadcast(p.data, src=0)
        seed_all(seed + 1_000_003 * self.rank)  # dropout masks differ from rank to rank

    def agree(self, controls: Controls, n_trained: int, n_real: int) -> Agreement:
        stop = int(self.main and "stop" in controls.take())
        t = torch.tensor([stop, n_trained, n_real], dtype=torch.int64)
        t = (t.pin_memory() if self.device.type == "cuda" else t).to(self.device, non_blocking=True)
        work = tdist.all_reduce(t, async_op=True)
        work.wait()  # the current stream waits for the collective; the host does not
        return Agreement(t, t[1].clamp_min(1))

    def reduce(self, trainable: list[torch.Tensor], ce_total: torch.Tensor) -> torch.Tensor:
        """One flat all-reduce of the gradients and the window's summed loss; a rank that ran no forward this
        step contributes zeros."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in trainable]
        flat = torch.cat([g.reshape(-1) for g in grads] + [ce_total.reshape(1).to(grads[0].dtype)])
        tdist.all_reduce(flat)
        at = 0
        for p in trainable:
            p.grad = flat[at : at + p.numel()].view_as(p)
            at += p.numel()
        return flat[at]

    def sum_floats(self, *values: float) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def emit_samples(self, model, plan: Plan, phase: str, emit: Emit) -> None:
        if self.main:
            emit_samples(model, plan, phase, emit)

    def end_training(self) -> bool:
        self.close()  # rank 0 writes the rest alone
        return self.main

    def close(self) -> None:
        if self.active:
            tdist.destroy_process_group()
            self.active = False


class Sharded(DataParallel):
    shards_the_base = True

    @property
    def load_device(self) -> torch.device:
        return torch.device("cpu")  # each rank's slice goes to its device when sharded

    def prepare(self, model, seed: int, emit: Emit) -> None:
        fsdp.shard(model, self.device)
        log(emit, f"FSDP2: the base is sharded over {self.world} processes, layer by layer")
        seed_all(seed + 1_000_003 * self.rank)

    def forwards(self, window: list, idle) -> list[tuple[Any, Any]]:
        # An idle forward draws no dropout mask: this rank's RNG stays where an unsharded run leaves it.
        return [
            (idle, fsdp.rng_kept(self.device)) if b is None else (b, contextlib.nullcontext()) for b in window
        ]

    def reduce(self, trainable: list[torch.Tensor], ce_total: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.sum_floats(float(ce_total))[0])

    def eval_batches(self, batches: list, idle) -> list:
        return batches + [idle] * (max(self.gather(len(batches))) - len(batches))

    def whole_adapter(self, model) -> dict[str, torch.Tensor] | None:
        return fsdp.full_adapter_state(model)

    def whole_optimizer(self, optimizer) -> dict | None:
        return fsdp.full_optimizer_state(optimizer)

    def local_optimizer_state(self, optimizer, state: dict) -> dict:
        return fsdp.shard_optimizer_state(optimizer, state)

    def emit_samples(self, model, plan: Plan, phase: str, emit: Emit) -> None:
        emit_samples(model, plan, phase, emit, synced=True)

    def end_training(self) -> bool:
        return True  # gathers and forwards stay collective to the end


def choose(train: TrainPlan, dtype: torch.dtype, world: int, emit: Emit) -> type[Single]:
    """The strategy for `world` processes. `train.shard: fsdp` on one process has nothing to shard over: a
    log line says so and training goes on."""
    if world == 1:
        if train.shard == "fsdp":
            log(
                emit,
                "train.shard is fsdp but this is one process: nothing to shard over, the model stays whole",
            )
        return Single
    if train.shard == "fsdp" and dtype == torch.float16:
        raise EngineError(
            "SHARD_UNSUPPORTED",
            f"train.shard fsdp does not support fp16 (precision {train.precision}; its loss scaler would "
            "skip steps rank by rank)",
            "Set train.precision to bf16 (or fp32), or train.shard to none.",
        )
    return Sharded if train.shard == "fsdp" else DataParallel


def open_parallel(train: TrainPlan, dtype: torch.dtype, device: torch.device, emit: Emit) -> Single:
    """The strategy of this launch, its process group joined."""
    rank, world = launched_world()
    kind = choose(train, dtype, world, emit)
    if kind is Single:
        return Single(device)
    parallel = kind(rank, world, device)
    parallel.start()
    return parallel
