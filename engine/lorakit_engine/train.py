"""The LoRA training run: plan in, events out. `run(plan, emit, controls)` is the whole road in one process:

    load base → samples before → attach LoRA (fp32 adapters) → [resume] → steps → checkpoints → eval
    → adapter/ (+ extras) → samples after → adapter norms → reload check → done

One optimizer step = one accumulation window of `grad_accum` micro-batches (the last window of an epoch may be
shorter). The window's loss is the sum of per-token cross-entropy over the window divided by the window's
trained tokens, so it does not depend on how the window is cut into micro-batches.

Under torchrun (`train.devices` > 1) every process runs this same function; distributed.py holds the
conventions (per-device batch size, the loss over all ranks' tokens, control decisions from rank 0, rank 0
alone writing).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import sharding, verify
from .control import Controls
from .data import IGNORE, Batch, Batches, Prepared, collate, in_order, pack_rows, sample_lengths
from .distributed import Dist
from .generate import emit_samples
from .inspect_model import check_peft_model
from .models.checkpoint import CheckpointError
from .monitor import Monitor
from .profiling import StepProfiler, peak_memory
from .protocol import Emit, EngineError, finding, finite, log

_B_ZERO_RMS = 1e-8  # a LoRA B whose entries average below this never moved away from its zero init
_EXTRA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PEFT_FILES = {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}


def say(message: str) -> None:
    """A human log line (stderr; stdout carries events only), marked with the rank under torchrun."""
    rank = f" rank {os.environ.get('RANK', '0')}" if os.environ.get("WORLD_SIZE", "1") != "1" else ""
    print(f"[lorakit-engine{rank}] {message}", file=sys.stderr, flush=True)


def load_base(path: str, dtype: torch.dtype, device: torch.device):
    """The base model, in eval mode. Every family goes through lorakit_engine.models."""
    from .models import load_model

    return load_model(path, dtype=dtype, device=device)


# ---------------------------------------------------------------- checks before anything heavy


def resolve_device(plan: dict, dist: Dist | None = None) -> torch.device:
    """The plan's device; under torchrun on CUDA, this rank's GPU (LOCAL_RANK)."""
    want = plan["train"]["device"]
    if want == "cuda" and not torch.cuda.is_available():
        raise EngineError(
            "NO_CUDA",
            "train.device is cuda but torch sees no CUDA device "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})",
            "Install a CUDA build of torch and check the driver with nvidia-smi, or set train.device: auto.",
        )
    if want == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return dist.cuda_device() if dist is not None and dist.world > 1 else torch.device("cuda")


def resolve_dtype(plan: dict, device: torch.device) -> torch.dtype:
    p = plan["train"]["precision"]
    if p == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[p]


def preflight(plan: dict) -> dict[str, Any]:
    """Everything checkable without loading the model; raises the first EngineError. Returns opened data."""
    for name in plan["adapter_extras"]:
        if not _EXTRA_NAME.match(name) or name in _PEFT_FILES:
            raise EngineError(
                "PLAN_INVALID",
                f"adapter_extras: {name!r} is not a plain file name (or it would overwrite a peft file)",
                "Name adapter_extras entries like 'chat_template.jinja': letters, digits, '.', '_', '-'.",
            )
    for name, source in plan["adapter_files"].items():
        if not _EXTRA_NAME.match(name) or name in _PEFT_FILES or name in plan["adapter_extras"]:
            raise EngineError(
                "PLAN_INVALID",
                f"adapter_files: {name!r} is not a plain file name, or it would overwrite a peft file or an "
                "adapter_extras entry",
                "Name adapter_files entries like 'tokenizer.json': letters, digits, '.', '_', '-'.",
            )
        if not Path(source).is_file():
            raise EngineError(
                "PLAN_INVALID",
                f"adapter_files: {name!r} is to be copied from {source}, which is not a file",
                "Point the entry at a file of the base model (lorakit lists the tokenizer files it has).",
            )
    model_dir = Path(plan["model"]["path"])
    if not (model_dir / "config.json").is_file():
        raise EngineError(
            "MODEL_LOAD_FAILED",
            f"{model_dir} has no config.json",
            "Point model at a local checkpoint folder (config.json, weights and tokenizer files).",
        )
    train = Prepared(plan["data"]["train"]["dir"])
    train.check(plan["data"]["train"]["samples"], plan["data"]["train"]["tokens"])
    if plan["train"].get("pack_tokens"):  # a sample longer than a row: an error before the model loads
        pack_rows(sample_lengths(train), plan["train"]["pack_tokens"])
    ev = None
    if plan["data"]["eval"] is not None:
        ev = Prepared(plan["data"]["eval"]["dir"])
        ev.check(plan["data"]["eval"]["samples"], plan["data"]["eval"]["tokens"])
    resume_from = None
    if plan["resume"]:
        resume_from = ckpt.newest(plan["run_dir"])
        if resume_from is None:
            raise EngineError(
                "NO_CHECKPOINT",
                f"resume is true but {ckpt.root(plan['run_dir'])} holds no complete checkpoint",
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
    resolve_device(plan)
    return {"train": train, "eval": ev, "resume_from": resume_from}


# ---------------------------------------------------------------- LoRA


def attach_lora(base, plan: dict, emit: Emit):
    from peft import LoraConfig, get_peft_model

    targets = plan["lora"]["targets"]
    names = [n for n, _ in base.named_modules()]
    matched = {t: sum(1 for n in names if n == t or n.endswith("." + t)) for t in targets}
    if not any(matched.values()):
        from .models import linear_module_names

        raise EngineError(
            "LORA_TARGETS_NOT_FOUND",
            f"no module of this {plan['model']['model_type']} model is named {', '.join(targets)}; "
            f"its linear modules are: {', '.join(linear_module_names(base))}",
            "Set lora.targets to some of the linear module names listed (or leave it out: the family's set).",
        )
    unmatched = [t for t, n in matched.items() if n == 0]
    if unmatched:
        finding(
            emit,
            "LORA_TARGETS_PARTLY_MATCHED",
            "warning",
            f"LoRA targets {', '.join(unmatched)} match no module",
            {"matched": matched},
            "Remove the unmatched names from lora.targets or correct their spelling.",
        )
    config = LoraConfig(
        r=plan["lora"]["r"],
        lora_alpha=plan["lora"]["alpha"],
        lora_dropout=plan["lora"]["dropout"],
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # fp16/bf16 adapters lose their updates; keep them fp32 always
    return model


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    for name, m in model.named_modules():
        if isinstance(m, LoraLayer) and "default" in m.lora_A:
            yield name, m


def make_optimizer(model, plan: dict, device: torch.device):
    t = plan["train"]
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if "lora_" in name and p.dim() >= 2 else plain).append(p)
    groups = [{"params": decay, "weight_decay": t["weight_decay"]}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=t["lr"], betas=(0.9, 0.999), eps=1e-8, fused=device.type == "cuda")


def make_scheduler(optimizer, plan: dict):
    t = plan["train"]
    total, warm, kind = t["total_steps"], t["warmup_steps"], t["scheduler"]

    def factor(done: int) -> float:  # `done` optimizer steps taken; the factor for the next one
        if done < warm:
            return (done + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (done - warm) / max(1, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------- loss


def checkpointing_mode(plan: dict) -> str:
    """train.gradient_checkpointing as the fast path's setting: "none", "full" (true) or "low_memory"."""
    value = plan["train"]["gradient_checkpointing"]
    return "low_memory" if value == "low_memory" else "full" if value else "none"


def use_fast_path(model, device: torch.device, plan: dict, sharded: bool = False) -> bool:
    """Native models (ChatGLM3) train through lorakit_engine.kernels on CUDA: each micro-batch packed into one
    row without padding (varlen attention), the loss fused with the output projection, fused LoRA.
    LORAKIT_FAST=1 forces it (also on the CPU, where packed attention falls back to SDPA with a block mask);
    LORAKIT_FAST=0 turns it off. Checkpointing "low_memory" keeps the token table in host memory unless the
    base is sharded (FSDP2 places every weight itself)."""
    from .kernels import configure_fast_path, fast_options

    want = os.environ.get("LORAKIT_FAST", "auto")
    if want == "0" or fast_options(model) is None or (want == "auto" and device.type != "cuda"):
        return False
    from .kernels.elementwise import compile_works

    configure_fast_path(
        model,
        compile=device.type == "cuda" and compile_works(str(device)),
        fused_lora=True,
        checkpointing=checkpointing_mode(plan),
        embedding_on_host=False if sharded else None,
    )
    model._lorakit_packed = True
    return True


def _packed_ce_sum(model, batch: Batch, device) -> torch.Tensor:
    """token_ce_sum through the fast path: the batch's rows, unpadded, packed into one row (on the host, so
    nothing waits for the GPU) and sent to the device."""
    from .kernels import pack_batch

    lengths = batch.attention_mask.sum(dim=1).tolist()
    rows = [(batch.input_ids[i, :n], batch.labels[i, :n]) for i, n in enumerate(lengths)]
    packed = pack_batch(rows)
    if torch.device(device).type == "cuda":
        packed = packed.pinned()
    return model(**packed.to(device).model_inputs(), loss_reduction="sum").loss


def token_ce_sum(model, batch: Batch, device=None) -> torch.Tensor:
    """Summed cross-entropy over the batch's trained tokens (labels aligned with input_ids; shifted here).
    The batch is moved to `device` (default: where it is)."""
    device = batch.input_ids.device if device is None else device
    if getattr(model, "_lorakit_packed", False):
        return _packed_ce_sum(model, batch, device)
    batch = batch.to(device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    target = torch.cat((batch.labels[:, 1:], torch.full_like(batch.labels[:, :1], IGNORE)), dim=1)
    return F.cross_entropy(
        logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE, reduction="sum"
    )


@torch.no_grad()
def evaluate(
    model, data: Prepared, batch_size: int, pad_id: int, device, dist: Dist | None = None
) -> tuple[float | None, int]:
    """Mean loss over the split's trained tokens; data parallel, each rank takes its share of the batches."""
    was = model.training
    model.eval()
    total, tokens = 0.0, 0
    shard = {"rank": dist.rank, "world": dist.world} if dist is not None else {}
    batches = list(in_order(data, batch_size, pad_id, **shard))
    if dist is not None and sharding.is_sharded(model):  # FSDP: every rank runs as many forwards
        batches += [sharding.idle_batch(pad_id)] * (max(dist.gather(len(batches))) - len(batches))
    for batch in batches:
        tokens += batch.trained_tokens
        total += float(token_ce_sum(model, batch, device))
    if dist is not None:
        total, n = dist.sum_floats(total, tokens)
        tokens = int(n)
    model.train(was)
    return (finite(total / tokens) if tokens else None), tokens


# ---------------------------------------------------------------- after training


def count_layers(base) -> int:
    """Transformer blocks of the base model (for targets matched vs layers × targets)."""
    cfg = base.config
    for key in ("num_hidden_layers", "num_layers", "n_layer"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            return value
    return 0


def restore_adapter(model, checkpoint: Path) -> None:
    """Loads the LoRA weights of a saved checkpoint into the in-memory peft model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))


def adapter_norms(model) -> dict[str, Any]:
    """Frobenius norms of every LoRA B and of its weight delta B·A·scale, grouped by layer index."""
    per_layer: dict[str, dict[str, float]] = {}
    b_norms, deltas = [], []
    for name, m in lora_layers(model):  # sharded: every rank gathers each whole weight
        a = sharding.whole(m.lora_A["default"].weight).detach().float()
        b = sharding.whole(m.lora_B["default"].weight).detach().float()
        scale = float(m.scaling["default"])
        b_norm = float(b.norm())
        # ‖BA‖² = Σ (BᵀB) ∘ (AAᵀ): r×r products instead of the full out×in delta.
        delta = math.sqrt(max(0.0, float(((b.T @ b) * (a @ a.T)).sum()))) * abs(scale)
        b_rms = b_norm / math.sqrt(max(1, b.numel()))
        found = re.search(r"\.(\d+)\.", name)
        layer = found.group(1) if found else "other"
        slot = per_layer.setdefault(layer, {"b_rms_max": 0.0, "delta": 0.0})
        slot["b_rms_max"] = max(slot["b_rms_max"], b_rms)
        slot["delta"] = math.hypot(slot["delta"], delta)
        b_norms.append(b_norm)
        deltas.append(delta)
    return {"modules": len(b_norms), "b": b_norms, "delta": deltas, "per_layer": per_layer}


def report_norms(norms: dict[str, Any], emit: Emit) -> None:
    if not norms["modules"]:
        return

    def spread(xs):
        xs = sorted(xs)
        return f"min {xs[0]:.3g} median {xs[len(xs) // 2]:.3g} max {xs[-1]:.3g}"

    per_layer = ", ".join(f"{k}:{v['delta']:.3g}" for k, v in norms["per_layer"].items())
    log(
        emit,
        f"adapter norms over {norms['modules']} LoRA modules: |B| {spread(norms['b'])}; "
        f"|BA·scale| {spread(norms['delta'])}; per layer |ΔW| {per_layer}",
    )
    dead = [k for k, v in norms["per_layer"].items() if v["b_rms_max"] < _B_ZERO_RMS]
    if dead:
        finding(
            emit,
            "ADAPTER_NEVER_LEARNED",
            "warning",
            f"LoRA B stayed at zero in {len(dead)} of {len(norms['per_layer'])} layers: "
            "the adapter changes nothing there",
            {"layers": dead[:64], "b_rms_threshold": _B_ZERO_RMS},
            "Raise train.lr or train for more steps, and check that the adapter parameters are trainable.",
        )


def write_adapter(model, plan: dict, state: dict | None = None) -> Path:
    """run_dir/adapter/ in peft's format, plus the plan's extras and files. `state`: the LoRA tensors, whole,
    when the model is sharded (sharding.full_adapter_state)."""
    run_dir = Path(plan["run_dir"])
    final, tmp = run_dir / "adapter", run_dir / ".tmp-adapter"
    shutil.rmtree(tmp, ignore_errors=True)
    whole = {"state_dict": state} if state is not None else {}
    model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False, **whole)
    for name, text in plan["adapter_extras"].items():
        (tmp / name).write_text(text, encoding="utf-8")
    for name, source in plan["adapter_files"].items():
        shutil.copyfile(source, tmp / name)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def reference_batch(data: dict, plan: dict) -> Batch:
    split = data["eval"] if data["eval"] is not None and len(data["eval"]) else data["train"]
    return collate(split, list(range(min(4, len(split)))), plan["data"]["pad_id"])


def reload_check(
    model, adapter_dir: Path, plan: dict, batch: Batch, dtype, device, emit: Emit, state: dict | None = None
) -> verify.Verdict:
    """The saved adapter against the trained one (verify.py): the files and peft's load exactly, the logits
    by the adapter's effect against the measured noise. Emits ADAPTER_RELOAD_MISMATCH when either fails."""
    return verify.reload_check(model, adapter_dir, plan, batch, dtype, device, emit, load_base, state)


# ---------------------------------------------------------------- the run


@dataclass
class Result:
    model: Any  # the peft model (eval mode)
    step: int
    stopped_early: bool
    adapter_dir: Path
    reload: verify.Verdict | None  # the adapter reload check (None when stopped early or on ranks > 0)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(plan: dict, emit: Emit, controls: Controls | None = None) -> Result:
    """Train as the plan says. Raises EngineError (or anything else) on failure; the caller emits `error`."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t0 = time.monotonic()
    controls = controls or Controls()
    t = plan["train"]
    run_dir = Path(plan["run_dir"])
    dist = Dist()
    dist.check(plan)
    data = preflight(plan)
    device = resolve_device(plan, dist)
    dtype = resolve_dtype(plan, device)
    run_dir.mkdir(parents=True, exist_ok=True)
    if dist.main:
        ckpt.clear_partial(run_dir)
    dist.start(device)
    seed_all(t["seed"])
    sharded = sharding.wanted(plan, dist, emit, dtype)
    load_on = torch.device("cpu") if sharded else device  # sharded: each rank's slice goes to the device

    say(f"loading {plan['model']['path']} as {dtype} on {load_on}")
    try:
        base = load_base(plan["model"]["path"], dtype, load_on)
    except (EngineError, torch.OutOfMemoryError):
        raise
    except Exception as e:
        if isinstance(e, CheckpointError):
            raise
        raise EngineError(
            "MODEL_LOAD_FAILED",
            f"cannot load {plan['model']['path']}: {type(e).__name__}: {e}",
            "Point model at a complete local checkpoint folder of a supported family.",
        ) from e
    rows = base.get_input_embeddings().num_embeddings
    data["train"].check(plan["data"]["train"]["samples"], plan["data"]["train"]["tokens"], rows)
    if data["eval"] is not None:
        data["eval"].check(plan["data"]["eval"]["samples"], plan["data"]["eval"]["tokens"], rows)

    samples_before = plan["samples"]["before"] and data["resume_from"] is None
    if samples_before and dist.main and not sharded:
        emit_samples(base, plan, "before", emit)

    model = attach_lora(base, plan, emit)
    fast = use_fast_path(model, device, plan, sharded)
    if fast:
        from .kernels import fast_options
        from .kernels.attention import describe_backend

        log(
            emit,
            "fast path: packed rows without padding, fused loss and LoRA (lorakit_engine.kernels); "
            f"checkpointing: {checkpointing_mode(plan)}; attention: "
            f"{describe_backend(device, dtype, fast_options(model).attention)}",
        )
    elif t.get("pack_tokens"):
        log(
            emit,
            f"train.pack_tokens: each micro-batch is a row of samples up to {t['pack_tokens']} tokens, "
            "padded to its longest sample here; packing is padding-free only on the fast path (ChatGLM3 on "
            "CUDA)",
        )
    if dist.main:
        _, found = check_peft_model(model, plan["lora"]["targets"], count_layers(base))
        for f in found:
            emit({"type": "finding", **f})
    if t["gradient_checkpointing"] and not fast:  # the fast path checkpoints its own layers
        if getattr(base, "supports_gradient_checkpointing", False):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
            if t["gradient_checkpointing"] == "low_memory":
                log(
                    emit,
                    "gradient_checkpointing: low_memory is plain layer checkpointing here (its MLP and loss "
                    "chunks and host token table need lorakit's native ChatGLM3 kernels)",
                )
        else:
            log(
                emit,
                f"{plan['model']['model_type']} does not support gradient checkpointing; it stays off",
                "warning",
            )
    if sharded:
        sharding.shard(model, device)
        log(emit, f"FSDP2: the base is sharded over {dist.world} processes, layer by layer")
        if samples_before:  # the adapter starts at zero: these are the base's answers
            emit_samples(model, plan, "before", emit, synced=True)
    optimizer = make_optimizer(model, plan, device)
    scheduler = make_scheduler(optimizer, plan)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    trainable = [p for p in model.parameters() if p.requires_grad]
    cuda_rng = device if dist.world > 1 and device.type == "cuda" else None  # this rank's GPU's RNG only
    if not sharded:
        dist.broadcast_(trainable)
    if dist.world > 1 and data["resume_from"] is None:
        seed_all(t["seed"] + 1_000_003 * dist.rank)  # dropout masks differ from rank to rank

    step, epoch, mb, tokens_seen = 0, 0, 0, 0
    if data["resume_from"] is not None:
        state = ckpt.load(
            data["resume_from"], model, optimizer, scheduler, scaler, dist.rank, dist.world, cuda_rng
        )
        step, epoch, mb, tokens_seen = (
            state["step"],
            state["epoch"],
            state["micro_batch"],
            state["tokens_seen"],
        )
        log(emit, f"resumed from {data['resume_from'].name}: step {step}, epoch {epoch}, micro-batch {mb}")

    emit(
        {
            "type": "start",
            "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype).removeprefix("torch."),
            "total_steps": t["total_steps"],
            "start_step": step,
            "trainable_params": sum(p.numel() for p in trainable),
            "total_params": sum(p.numel() for p in model.parameters()),
            "lora_modules": sum(1 for _ in lora_layers(model)),
        }
    )

    batches = Batches(
        data["train"],
        t["batch_size"],
        t["seed"],
        plan["data"]["pad_id"],
        dist.rank,
        dist.world,
        t.get("pack_tokens"),
    )
    saved_at, evaluated_at = None, None
    if data["resume_from"] is not None:
        saved_at = step
    # The live monitors (every rank runs one on the same agreed numbers; rank 0 reports).
    mon = Monitor(t["total_steps"], loss_scaling=scaler is not None, patience=t.get("patience") or None)

    def report(found: list[dict]) -> None:
        if dist.main:
            for f in found:
                emit({"type": "finding", **f})

    def save() -> None:
        nonlocal saved_at
        if saved_at == step:
            return
        rngs = dist.gather(ckpt.rng_state(cuda_rng))  # every rank takes part; rank 0 writes
        whole = {}  # sharded: whole tensors, gathered by every rank (the files of an unsharded run)
        if sharded:
            whole = {
                "adapter_state": sharding.full_adapter_state(model),
                "optimizer_state": sharding.full_optimizer_state(optimizer),
            }
        saved_at = step
        if not dist.main:
            return
        state = {
            "epoch": epoch,
            "micro_batch": mb,
            "tokens_seen": tokens_seen,
            "plan_hash": ckpt.subset_hash(ckpt.plan_subset(plan)),
            "plan_subset": ckpt.plan_subset(plan),
        }
        path = ckpt.save(
            run_dir,
            step,
            model,
            optimizer,
            scheduler,
            scaler,
            state,
            t["keep_checkpoints"],
            rngs,
            protect=mon.best_step,
            **whole,
        )
        emit({"type": "checkpoint", "step": step, "path": str(path)})

    def run_eval() -> None:
        nonlocal evaluated_at
        if data["eval"] is None or evaluated_at == step:
            return
        loss, n = evaluate(model, data["eval"], t["batch_size"], plan["data"]["pad_id"], device, dist)
        evaluated_at = step
        emit({"type": "eval", "step": step, "loss": loss, "tokens": n})
        report(mon.observe_eval(step, loss))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    stopped = False
    profiler = StepProfiler.from_env(dist.rank, device)
    idle = sharding.idle_batch(plan["data"]["pad_id"])  # sharded: a rank's forward when it has no sample
    while step < t["total_steps"]:
        commands = controls.take() if dist.main else []
        if plan.get("fail_at_step") is not None and plan["fail_at_step"] in (step + 1, 0):
            if dist.rank == dist.world - 1:  # data parallel: the last rank, whose failure must travel
                raise RuntimeError(f"fail_at_step: failing on purpose at the start of step {step + 1}")
        # This rank's part of the window (the whole window for one process); None = no sample left here.
        window = [batches.get(epoch, mb + i) for i in range(min(t["grad_accum"], batches.per_epoch - mb))]
        mine = [b for b in window if b is not None]
        # Rank 0's control lines and the window's token counts over all ranks, agreed while the step runs;
        # the lines take effect after this step.
        agreed = dist.agree(commands, sum(b.trained_tokens for b in mine), sum(b.real_tokens for b in mine))

        started = time.monotonic()
        profiler.begin(step + 1)
        ce_total = torch.zeros((), device=device)
        if sharded:  # every rank runs the whole window's forwards (FSDP gathers weights in each)
            mine = [idle if b is None else b for b in window]
        for b in mine:
            # An idle forward draws no dropout mask: this rank's RNG stays where an unsharded run leaves it.
            with sharding.rng_kept(device) if b is idle else contextlib.nullcontext():
                ce = token_ce_sum(model, b, device)
                part = ce / agreed.divisor  # every rank's trained tokens: gradients are then summed
                (scaler.scale(part) if scaler is not None else part).backward()
            ce_total += ce.detach()
        if sharded:  # FSDP has summed the gradients already; the loss alone, for the log
            ce_total = torch.tensor(dist.sum_floats(float(ce_total))[0])
        else:
            ce_total = dist.sum_grads(trainable, ce_total)
        do_save, do_sample, stopped, n_trained, n_real = agreed.result()
        # One process: a stop that came while this step ran ends the run after it (torchrun: after the next).
        stopped = stopped or (not dist.active and controls.stop_pending())
        loss = float(ce_total) / n_trained if n_trained else None
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, t["max_grad_norm"]))
        lr = scheduler.get_last_lr()[0]
        if n_trained and (not math.isfinite(loss) or (scaler is None and not math.isfinite(grad_norm))):
            optimizer.zero_grad(set_to_none=True)
            finding(
                emit,
                "TRAIN_NONFINITE_LOSS",
                "error",
                f"the loss or gradient norm became non-finite at step {step + 1}; training stopped",
                {"step": step + 1, "loss": str(loss), "grad_norm": str(grad_norm), "lr": lr},
                "Lower train.lr or warm up longer (bf16, not fp16), then resume from the last checkpoint.",
            )
            raise EngineError(
                "TRAIN_NONFINITE_LOSS",
                f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at step {step + 1}; the update was "
                f"skipped and nothing was saved after step {saved_at if saved_at is not None else 'none'}",
                "Lower train.lr or use bf16, then resume from the last checkpoint.",
            )
        if n_trained == 0:
            log(emit, f"step {step + 1}: the window holds no trained tokens; no update", "warning")
        elif scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        took = time.monotonic() - started

        step += 1
        mb += len(window)
        tokens_seen += n_trained
        epoch_end = mb >= batches.per_epoch
        if epoch_end:
            epoch, mb = epoch + 1, 0
        emit(
            {
                "type": "step",
                "step": step,
                "total_steps": t["total_steps"],
                "epoch": epoch + mb / batches.per_epoch,
                "loss": finite(loss),
                "lr": lr,
                "grad_norm": finite(grad_norm),
                "tokens": n_trained,
                "tokens_per_s": n_real / took if took > 0 else 0.0,
                "elapsed_s": time.monotonic() - t0,
                "memory_bytes": peak_memory(device),
            }
        )
        if n_trained:
            report(mon.observe_step(step, loss, grad_norm))
        if step % t["log_every"] == 0 or step == t["total_steps"]:
            say(f"step {step}/{t['total_steps']} loss {loss} lr {lr:.3g} grad_norm {grad_norm:.3g}")
        profiler.end(step)
        if (t["eval_every"] and step % t["eval_every"] == 0) or (not t["eval_every"] and epoch_end):
            run_eval()
        if (
            do_save
            or stopped
            or (t["save_every"] and step % t["save_every"] == 0)
            or (not t["save_every"] and epoch_end)
        ):
            save()
        if do_sample and (dist.main or sharded):  # sharded: every rank generates, rank 0 emits
            emit_samples(model, plan, "during", emit, synced=sharded)
        if stopped:
            break
        if mon.should_stop_early:
            save()
            log(emit, f"early stopping at step {step}: eval loss has not improved since step {mon.best_step}")
            break

    profiler.finish()
    # A stop read during the last step came after all the work: the run is complete, not stopped early.
    stopped = stopped and step < t["total_steps"]
    save()
    train_s = time.monotonic() - t0
    reload = None
    if not stopped:
        run_eval()
    if not sharded:
        dist.close()  # the last collective is behind us: rank 0 writes the rest alone
        if not dist.main:
            model.eval()
            return Result(model, step, stopped, run_dir / "adapter", None)
    # Sharded, every rank goes on to the end (gathers and forwards are collective); rank 0 alone writes.
    if not stopped and mon.should_stop_early and mon.best_step is not None and mon.best_step != step:
        restore_adapter(model, ckpt.root(run_dir) / f"step-{mon.best_step}")
        log(emit, f"the adapter written is the best eval checkpoint, step {mon.best_step}")
    adapter_state = sharding.full_adapter_state(model) if sharded else None
    adapter_dir = write_adapter(model, plan, adapter_state) if dist.main else run_dir / "adapter"
    dist.gather(None)  # sharded: written before the other ranks read it back (the reload check)
    if stopped:
        say(f"stopped at step {step}; resume with resume: true")
    else:
        emit_samples(model, plan, "after", emit, synced=sharded)
        norms = adapter_norms(model)
        if dist.main:
            report_norms(norms, emit)
        reload = reload_check(
            model, adapter_dir, plan, reference_batch(data, plan), dtype, device, emit, adapter_state
        )
    dist.close()
    model.eval()
    if not dist.main:
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
