"""The optimizer-step loop. One optimizer step = one accumulation window of `grad_accum` micro-batches (the
last window of an epoch may be shorter). The window's loss is the sum of per-token cross-entropy over the
window divided by the window's trained tokens, so it does not depend on how the window is cut into
micro-batches.

The loop does not know how the ranks train together: a `parallel` strategy (parallel.py) runs this rank's
forwards, agrees on the token counts and the `stop`, and sums the gradients. It does not know the micro-batch
layout either: `loss.token_ce_sum` takes a padded `Batch` or a packed row alike.

Each step: micro-batches → forward and backward → gradients summed → clip → the monitor's look at loss and
gradient norm (a non-finite one ends the run, the update skipped) → update → `step` event → eval and
checkpoint when due → stop on a `stop` line or early stopping.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import loss
from .batches import Batches, idle
from .control import Controls
from .data import Prepared
from .lora import lora_layers
from .monitor import Monitor
from .parallel import Single
from .plan import Plan, TrainPlan
from .profiling import StepProfiler, peak_memory
from .protocol import Emit, EngineError, finite, log, say


def make_optimizer(model, train: TrainPlan, device: torch.device):
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if "lora_" in name and p.dim() >= 2 else plain).append(p)
    groups = [{"params": decay, "weight_decay": train.weight_decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=train.lr, betas=(0.9, 0.999), eps=1e-8, fused=device.type == "cuda")


def make_scheduler(optimizer, train: TrainPlan):
    total, warm, kind = train.total_steps, train.warmup_steps, train.scheduler

    def factor(done: int) -> float:  # `done` optimizer steps taken; the factor for the next one
        if done < warm:
            return (done + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (done - warm) / max(1, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Loop:
    """The loop over one run's optimizer steps, from `step` (0, or the resumed checkpoint's) to
    `train.total_steps`. After `run`: `step` reached and whether a stop ended it early (`stopped`)."""

    def __init__(
        self,
        model,
        plan: Plan,
        batches: Batches,
        eval_data: Prepared | None,
        parallel: Single,
        emit: Emit,
        controls: Controls,
        device: torch.device,
        dtype: torch.dtype,
        started_at: float | None = None,
    ):
        self.model, self.plan, self.t = model, plan, plan.train
        self.batches, self.eval_data = batches, eval_data
        self.parallel, self.emit, self.controls = parallel, emit, controls
        self.device, self.dtype = device, dtype
        self.started_at = time.monotonic() if started_at is None else started_at
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(model, self.t, device)
        self.scheduler = make_scheduler(self.optimizer, self.t)
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        # The live monitors: every rank runs one on the same agreed numbers; rank 0 reports.
        self.monitor = Monitor(
            self.t.total_steps, loss_scaling=self.scaler is not None, patience=self.t.patience or None
        )
        self.idle = idle(plan.data.pad_id, batches.packed)
        self.step, self.epoch, self.micro_batch, self.tokens_seen = 0, 0, 0, 0
        self.saved_at: int | None = None
        self.evaluated_at: int | None = None
        self.stopped = False

    # ------------------------------------------------------------ around the steps

    def resume(self, checkpoint: Path) -> None:
        state = ckpt.load(
            checkpoint,
            self.model,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.parallel.rank,
            self.parallel.world,
            self.parallel.cuda_rng,
            self.parallel.local_optimizer_state,
        )
        self.step, self.epoch = state["step"], state["epoch"]
        self.micro_batch, self.tokens_seen = state["micro_batch"], state["tokens_seen"]
        self.saved_at = self.step
        log(
            self.emit,
            f"resumed from {checkpoint.name}: step {self.step}, epoch {self.epoch}, micro-batch "
            f"{self.micro_batch}",
        )

    def report(self, found: list[dict]) -> None:
        if self.parallel.main:
            for f in found:
                self.emit(f)

    def save(self) -> None:
        """A checkpoint of this step (once). Every rank takes part; rank 0 writes."""
        if self.saved_at == self.step:
            return
        rngs = self.parallel.gather(ckpt.rng_state(self.parallel.cuda_rng))
        adapter_state = self.parallel.whole_adapter(self.model)
        optimizer_state = self.parallel.whole_optimizer(self.optimizer)
        self.saved_at = self.step
        if not self.parallel.main:
            return
        subset = ckpt.plan_subset(self.plan)
        state = {
            "epoch": self.epoch,
            "micro_batch": self.micro_batch,
            "tokens_seen": self.tokens_seen,
            "plan_hash": ckpt.subset_hash(subset),
            "plan_subset": subset,
        }
        path = ckpt.save(
            self.plan.run_dir,
            self.step,
            self.model,
            self.optimizer,
            self.scheduler,
            self.scaler,
            state,
            self.t.keep_checkpoints,
            rngs,
            protect=self.monitor.best_step,
            adapter_state=adapter_state,
            optimizer_state=optimizer_state,
        )
        self.emit({"type": "checkpoint", "step": self.step, "path": str(path)})

    def evaluate(self) -> None:
        """The eval split's loss at this step (once)."""
        if self.eval_data is None or self.evaluated_at == self.step:
            return
        eval_loss, n = loss.evaluate(
            self.model,
            self.eval_data,
            self.t.batch_size,
            self.plan.data.pad_id,
            self.device,
            self.parallel,
            self.batches.packed,
        )
        self.evaluated_at = self.step
        self.emit({"type": "eval", "step": self.step, "loss": eval_loss, "tokens": n})
        self.report(self.monitor.observe_eval(self.step, eval_loss))

    def start_event(self) -> dict:
        return {
            "type": "start",
            "device": self.device.type,
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "dtype": str(self.dtype).removeprefix("torch."),
            "total_steps": self.t.total_steps,
            "start_step": self.step,
            "trainable_params": sum(p.numel() for p in self.trainable),
            "total_params": sum(p.numel() for p in self.model.parameters()),
            "lora_modules": sum(1 for _ in lora_layers(self.model)),
        }

    # ------------------------------------------------------------ the loop

    def run(self, profiler: StepProfiler | None = None) -> None:
        """Steps until `total_steps`, a stop, or early stopping; then the last checkpoint and eval."""
        profiler = profiler or StepProfiler(None, self.parallel.rank, self.device)
        self.emit(self.start_event())
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.model.train()
        while self.step < self.t.total_steps:
            profiler.begin(self.step + 1)
            epoch_end = self.one_step()
            profiler.end(self.step)
            if (self.t.eval_every and self.step % self.t.eval_every == 0) or (
                not self.t.eval_every and epoch_end
            ):
                self.evaluate()
            every = self.t.save_every
            if self.stopped or (every and self.step % every == 0) or (not every and epoch_end):
                self.save()
            if self.stopped:
                break
            if self.monitor.should_stop_early:
                self.save()
                log(
                    self.emit,
                    f"early stopping at step {self.step}: eval loss has not improved since step "
                    f"{self.monitor.best_step}",
                )
                break
        profiler.finish()
        # A stop read during the last step came after all the work: the run is complete, not stopped early.
        self.stopped = self.stopped and self.step < self.t.total_steps
        self.save()
        if not self.stopped:
            self.evaluate()

    def one_step(self) -> bool:
        """One optimizer step; whether it ended an epoch."""
        t, parallel, batches = self.t, self.parallel, self.batches
        # This rank's part of the window (the whole window for one process); None = no sample left here.
        size = min(t.grad_accum, batches.per_epoch - self.micro_batch)
        window = [batches.get(self.epoch, self.micro_batch + i) for i in range(size)]
        mine = [b for b in window if b is not None]
        # Rank 0's stop and the window's token counts over all ranks, agreed while the step runs; a stop takes
        # effect after this step.
        agreed = parallel.agree(
            self.controls, sum(b.trained_tokens for b in mine), sum(b.real_tokens for b in mine)
        )
        started = time.monotonic()
        ce_total = torch.zeros((), device=self.device)
        for batch, context in parallel.forwards(window, self.idle):
            with context:
                ce = loss.token_ce_sum(self.model, batch, self.device)
                part = ce / agreed.divisor  # every rank's trained tokens: gradients are then summed
                (self.scaler.scale(part) if self.scaler is not None else part).backward()
            ce_total += ce.detach()
        ce_total = parallel.reduce(self.trainable, ce_total)
        self.stopped, n_trained, n_real = agreed.result()
        mean = float(ce_total) / n_trained if n_trained else None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, t.max_grad_norm))
        lr = self.scheduler.get_last_lr()[0]
        found = self.monitor.observe_step(self.step + 1, mean, grad_norm) if n_trained else []
        if self.monitor.stop:  # diverged: no update, nothing saved after the last checkpoint
            self.optimizer.zero_grad(set_to_none=True)
            self.report(found)
            saved = self.saved_at if self.saved_at is not None else "none"
            raise EngineError(
                "TRAIN_NONFINITE_LOSS",
                f"non-finite loss ({mean}) or gradient norm ({grad_norm}) at step {self.step + 1}; the "
                f"update was skipped and nothing was saved after step {saved}",
                "Lower train.lr or use bf16, then resume from the last checkpoint.",
            )
        if n_trained == 0:
            log(self.emit, f"step {self.step + 1}: the window holds no trained tokens; no update", "warning")
        elif self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        took = time.monotonic() - started

        self.step += 1
        self.micro_batch += len(window)
        self.tokens_seen += n_trained
        epoch_end = self.micro_batch >= batches.per_epoch
        if epoch_end:
            self.epoch, self.micro_batch = self.epoch + 1, 0
        self.emit(
            {
                "type": "step",
                "step": self.step,
                "total_steps": t.total_steps,
                "epoch": self.epoch + self.micro_batch / batches.per_epoch,
                "loss": finite(mean),
                "lr": lr,
                "grad_norm": finite(grad_norm),
                "tokens": n_trained,
                "tokens_per_s": n_real / took if took > 0 else 0.0,
                "elapsed_s": time.monotonic() - self.started_at,
                "memory_bytes": peak_memory(self.device),
            }
        )
        self.report(found)
        if self.step % t.log_every == 0 or self.step == t.total_steps:
            say(f"step {self.step}/{t.total_steps} loss {mean} lr {lr:.3g} grad_norm {grad_norm:.3g}")
        return epoch_end
