"""The LoRA training run: plan in, events out. `run(plan, emit, controls)` is the whole road in one process:

    inputs checked → base loaded → samples before → LoRA attached (fp32 adapters) → the loop (resume, steps,
    checkpoints, eval) → adapter/ (+ extras) → samples after → adapter norms and reload check → done

Under torchrun (`train.devices` > 1) every process runs this same function; parallel.py says how the ranks
share the work.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from . import verify
from .adapter import write_adapter
from .batches import Batches, micro_batches
from .control import Controls
from .data import Prepared, read_rows
from .data import verify as verify_data
from .fast_path import prepare_training
from .inspect_model import check_peft_model
from .loop import Loop
from .lora import attach_for_training
from .models.checkpoint import load_error
from .parallel import Single, open_parallel, seed_all
from .plan import Plan
from .profiling import StepProfiler
from .protocol import Emit, EngineError, log, say
from .torchrun import check_devices, launched_world, local_rank, resolve_device

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_EXTRA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PEFT_FILES = {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}


@dataclass
class Inputs:
    """What a run reads besides the model, opened and checked before the model loads."""

    train: Prepared
    eval: Prepared | None
    resume_from: Path | None  # the checkpoint a resumed run continues
    row_starts: list[int] | None  # train.pack_tokens: row r = samples row_starts[r] … row_starts[r + 1] - 1
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # newer checkpoints that do not verify

    def check_vocab(self, plan: Plan, base) -> None:
        """Every token id inside the base's embedding."""
        rows = base.get_input_embeddings().num_embeddings
        self.train.check(plan.data.train.samples, plan.data.train.tokens, rows)
        if self.eval is not None and plan.data.eval is not None:
            self.eval.check(plan.data.eval.samples, plan.data.eval.tokens, rows)


@dataclass
class Result:
    model: Any  # the peft model (eval mode)
    step: int
    stopped_early: bool
    adapter_dir: Path
    reload: verify.Verdict | None  # the adapter reload check (None when stopped early or on ranks > 0)


def check_inputs(plan: Plan) -> Inputs:
    """Everything checkable without loading the model; raises the first EngineError."""
    for name in plan.adapter_extras:
        if not _EXTRA_NAME.match(name) or name in _PEFT_FILES:
            raise EngineError(
                "PLAN_INVALID",
                f"adapter_extras: {name!r} is not a plain file name (or it would overwrite a peft file)",
                "Name adapter_extras entries like 'chat_template.jinja': letters, digits, '.', '_', '-'.",
            )
    for name, source in plan.adapter_files.items():
        if not _EXTRA_NAME.match(name) or name in _PEFT_FILES or name in plan.adapter_extras:
            raise EngineError(
                "PLAN_INVALID",
                f"adapter_files: {name!r} is not a plain file name, or it would overwrite a peft file or an "
                "adapter_extras entry",
                "Name adapter_files entries like 'tokenizer.json': letters, digits, '.', '_', '-'.",
            )
        if not source.is_file():
            raise EngineError(
                "PLAN_INVALID",
                f"adapter_files: {name!r} is to be copied from {source}, which is not a file",
                "Point the entry at a file of the base model (lorakit lists the tokenizer files it has).",
            )
    if not (plan.model.path / "config.json").is_file():
        raise load_error("no config.json in the model folder", plan.model.path)
    verify_data(plan.data.train.dir)
    train = Prepared(plan.data.train.dir)
    train.check(plan.data.train.samples, plan.data.train.tokens)
    row_starts = check_rows(plan, train)
    ev = None
    if plan.data.eval is not None:
        verify_data(plan.data.eval.dir)
        ev = Prepared(plan.data.eval.dir)
        ev.check(plan.data.eval.samples, plan.data.eval.tokens)
    resume_from, skipped = None, []
    if plan.resume:
        resume_from, skipped = ckpt.newest_verified(plan.run_dir)
        if resume_from is None and skipped:
            raise EngineError(
                "CHECKPOINT_CORRUPT",
                f"resume is true but no checkpoint in {ckpt.root(plan.run_dir)} verifies: "
                + "; ".join(f"{p.name}: {why}" for p, why in skipped),
                "Start the run again without resume (the damaged checkpoints cannot be trusted).",
            )
        if resume_from is None:
            raise EngineError(
                "NO_CHECKPOINT",
                f"resume is true but {ckpt.root(plan.run_dir)} holds no complete checkpoint",
                "Start the run without resume, or point run_dir at the run to continue.",
            )
        saved = ckpt.read_state(resume_from)
        now = ckpt.plan_subset(plan)
        if saved.get("plan_hash") != ckpt.subset_hash(now):
            old = saved.get("plan_subset", {})
            changed = sorted(k for k in set(now) | set(old) if now.get(k) != old.get(k))
            raise EngineError(
                "RESUME_MISMATCH",
                f"checkpoint {resume_from.name} was written with different settings: {', '.join(changed)}",
                "Resume with the settings the run started with, or start a new run in another run_dir.",
            )
    resolve_device(plan.train)
    return Inputs(train, ev, resume_from, row_starts, skipped)


def check_rows(plan: Plan, train: Prepared) -> list[int] | None:
    """train.pack_tokens' rows (data.train.rows), and the plan's steps per epoch against the data."""
    t, rows = plan.train, plan.data.train.rows
    if (t.pack_tokens is None) != (rows is None):
        raise EngineError(
            "PLAN_INVALID",
            f"train.pack_tokens is {t.pack_tokens} but data.train.rows is {rows}: rows go with pack_tokens",
            "Write the plan with lorakit, which names the rows file exactly when pack_tokens is set.",
        )
    row_starts = read_rows(rows, train, t.pack_tokens) if rows is not None and t.pack_tokens else None
    per_device = micro_batches(train, t.batch_size, t.devices, row_starts)
    if math.ceil(per_device / t.grad_accum) != t.steps_per_epoch:
        raise EngineError(
            "PLAN_INVALID",
            f"train.steps_per_epoch is {t.steps_per_epoch} but the prepared data makes "
            f"{math.ceil(per_device / t.grad_accum)} ({per_device} micro-batches per device, grad_accum "
            f"{t.grad_accum})",
            "Write the plan with lorakit from the same prepared data.",
        )
    return row_starts


def load_base(path: Path | str, dtype: torch.dtype, device: torch.device):
    """The base model, in eval mode. Every family goes through lorakit_engine.models."""
    from .models import load_model

    try:
        return load_model(path, dtype=dtype, device=device)
    except (EngineError, torch.OutOfMemoryError):
        raise
    except Exception as e:
        raise load_error(f"cannot load the model: {type(e).__name__}: {e}", path) from e


def run(plan: Plan, emit: Emit, controls: Controls | None = None) -> Result:
    """Train as the plan says. Raises EngineError (or anything else) on failure; the caller emits `error`."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started, t = time.monotonic(), plan.train
    check_devices(t)
    inputs = check_inputs(plan)
    rank, world = launched_world()
    device = resolve_device(t, local_rank(), world)
    dtype = DTYPES[t.precision]
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        ckpt.clear_partial(plan.run_dir)
        for path, why in inputs.skipped:  # newer than the one resumed from, and damaged: never read again
            aside = ckpt.set_aside(path)
            log(
                emit,
                f"checkpoint {path.name} does not verify ({why}): resuming from {inputs.resume_from.name} "
                f"instead; the damaged one is kept as {aside.name}",
                "warning",
            )
    parallel = open_parallel(t, dtype, device, emit)
    seed_all(t.seed)

    say(f"loading {plan.model.path} as {dtype} on {parallel.load_device}")
    base = load_base(plan.model.path, dtype, parallel.load_device)
    inputs.check_vocab(plan, base)
    before = plan.samples.before and inputs.resume_from is None
    if before and not parallel.shards_the_base:
        parallel.emit_samples(base, plan, "before", emit)
    lora = plan.lora
    model = attach_for_training(base, lora.targets, lora.r, lora.alpha, lora.dropout, plan.model.model_type)
    packed = prepare_training(model, plan, parallel.shards_the_base, device, dtype, emit)
    if parallel.main:
        emit_all(emit, check_peft_model(model, lora.targets, plan.model.layers)[1])
    parallel.prepare(model, t.seed, emit)
    if before and parallel.shards_the_base:  # the adapter starts at zero: these are the base's answers
        parallel.emit_samples(model, plan, "before", emit)

    batches = Batches(
        inputs.train,
        t.batch_size,
        t.seed,
        plan.data.pad_id,
        parallel.rank,
        parallel.world,
        inputs.row_starts,
        packed,
    )
    loop = Loop(
        model, plan, batches, inputs.eval, parallel, emit, controls or Controls(), device, dtype, started
    )
    if inputs.resume_from is not None:
        loop.resume(inputs.resume_from)
    loop.run(StepProfiler(plan.profile, parallel.rank, device))
    train_s = time.monotonic() - started
    if not parallel.end_training():
        model.eval()
        return Result(model, loop.step, loop.stopped, plan.run_dir / "adapter", None)
    return save_and_verify(model, plan, inputs, loop, parallel, emit, train_s)


def save_and_verify(
    model, plan: Plan, inputs: Inputs, loop: Loop, parallel: Single, emit: Emit, train_s: float
) -> Result:
    """After the loop: the adapter written (the best eval checkpoint's where early stopping chose it), the
    samples after training, the adapter's norms and reload check, `done`."""
    step, stopped, best = loop.step, loop.stopped, loop.monitor.best_step
    if not stopped and loop.monitor.should_stop_early and best is not None and best != step:
        ckpt.restore_adapter(model, ckpt.root(plan.run_dir) / f"step-{best}")
        log(emit, f"the adapter written is the best eval checkpoint, step {best}")
    adapter_state = parallel.whole_adapter(model)
    adapter_dir = write_adapter(model, plan, adapter_state) if parallel.main else plan.run_dir / "adapter"
    parallel.gather(None)  # written before the other ranks read it back (the reload check)
    reload = None
    if stopped:
        say(f"stopped at step {step}; resume with resume: true")
    else:
        parallel.emit_samples(model, plan, "after", emit)
        norms = verify.adapter_norms(model)
        if parallel.main:
            verify.report_norms(norms, emit)
        batch = verify.reference_batch(inputs.eval, inputs.train, plan.data.pad_id)
        reload = verify.reload_check(
            model, adapter_dir, plan, batch, loop.dtype, loop.device, emit, load_base, adapter_state
        )
    parallel.close()
    model.eval()
    if not parallel.main:
        return Result(model, step, stopped, adapter_dir, None)
    emit(
        {
            "type": "done",
            "step": step,
            "adapter_dir": str(adapter_dir),
            "stopped_early": stopped,
            "train_s": train_s,
        }
    )
    return Result(model, step, stopped, adapter_dir, reload)


def emit_all(emit: Emit, events: list[dict]) -> None:
    for event in events:
        emit(event)
