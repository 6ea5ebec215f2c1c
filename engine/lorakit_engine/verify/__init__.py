"""The adapter reload check: the saved adapter, loaded by peft on a fresh base, must be the adapter that was
trained. Two parts, both always run; either fails the check (ADAPTER_RELOAD_MISMATCH):

structural, exact —
    every file matches the adapter's SHA256SUMS (written with it: what is on disk is what was written);
    adapter_model.safetensors holds the in-memory adapter's tensors: the same names, shapes, dtypes and values
    (bit for bit); adapter_config.json has the plan's r, lora_alpha and target modules, and the scaling they
    give is every in-memory module's; peft's load on the fresh base reports no missing and no unexpected key,
    makes as many LoRA modules, each with the in-memory scaling and (bit for bit) the in-memory weights.

numeric, the adapter's effect on the logits of a few held-out samples —
    T  trained: the model in memory                     B   base: the same with its adapter disabled
    R  reloaded: peft's load on the fresh base           B'  the fresh base with its adapter disabled
    B~ the base with its elementwise ops rounded once (elementwise.rounding_once: what the fused kernels do)

    effect = ‖T − B‖, error = ‖R − T‖ (Frobenius over the real positions' logits, float32), and the noise of
    this dtype and these kernels, measured: noise = max(‖B' − B‖, ‖B~ − B‖, u·‖T‖), u the dtype's unit
    roundoff. In bf16 one rounding anywhere grows through the layers to about 1% of the logits' norm
    (bench/reload_noise.py), so an absolute bound on max |Δlogit| over a 65k vocabulary measures nothing.

    effect < CONCLUSIVE · noise  inconclusive (a smoke run's two steps): no error; the structure decides
    otherwise fail when          error > REL_TOL · effect + NOISE_ALLOWANCE · noise (effect not reproduced),
                                 or, where the adapter changed the top-1 token at enough positions, R keeps
                                 fewer than TOP1_KEPT of them
    and always fail when         R is not finite, or error > effect + 4 · noise (R is neither T nor B)

T, B and B~ are computed with the fast path's fused elementwise kernels off and the fused LoRA in eval mode
(peft's arithmetic, kernels/lora.py): the same functions the fresh base computes, so a healthy adapter gives
R = T exactly on one device and the noise terms are only a safety margin. Without that, the trained model's
Triton kernels and bf16 LoRA delta alone put the two ~1% apart (the issue-12 H200 failures: max |Δlogit|
0.18-0.20 against an absolute 0.05).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import fsdp
from ..batches import Batch, pad
from ..data import Prepared
from ..findings import finding
from ..plan import Plan
from ..protocol import Emit, log
from .files import check_files, check_loaded, compare_tensors, expected_state, lora_scalings
from .logits import (
    CONCLUSIVE,
    Logits,
    logits_of,
    model_logits,
    numeric_verdict,
    reference_forward,
)
from .norms import adapter_norms, report_norms

MAX_PROBLEMS = 12  # structural problems listed in the evidence

__all__ = [
    "CONCLUSIVE",
    "Logits",
    "Verdict",
    "adapter_norms",
    "compare_tensors",
    "logits_of",
    "numeric_verdict",
    "reference_batch",
    "reload_check",
    "report_norms",
]


@dataclass
class Verdict:
    ok: bool
    structural: list[str]  # what differs from the trained adapter; empty: nothing
    numeric: str  # "pass" | "fail" | "inconclusive" | "not run" (peft could not load the adapter)
    reason: str | None = None  # why the numbers fail
    stats: dict[str, Any] = field(default_factory=dict)

    def evidence(self) -> dict[str, Any]:
        return {
            "structural": self.structural[:MAX_PROBLEMS],
            "numeric": self.numeric,
            "reason": self.reason,
            **self.stats,
        }


def reference_batch(eval_data: Prepared | None, train_data: Prepared, pad_id: int) -> Batch:
    """The held-out samples the numbers are measured on: the first four of the eval split (of the training
    split without one), padded."""
    split = eval_data if eval_data is not None and len(eval_data) else train_data
    return pad([split.sample(i) for i in range(min(4, len(split)))], pad_id)


def peft_load(base, adapter_dir: Path, adapter_name: str = "default"):
    """(PeftModel, load result) as PeftModel.from_pretrained builds it, keeping the load result (missing and
    unexpected keys) that from_pretrained drops."""
    from peft import MODEL_TYPE_TO_PEFT_MODEL_MAPPING, PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = True
    cls = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(config.task_type, PeftModel)
    model = cls(base, config, adapter_name)
    result = model.load_adapter(str(adapter_dir), adapter_name)
    model.eval()
    return model, result


def _finite(stats: dict[str, Any]) -> dict[str, Any]:
    """Evidence travels as JSON without NaN or infinity: those become null."""
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in stats.items()}


def reload_check(
    model,
    adapter_dir: Path,
    plan: Plan,
    batch: Batch,
    dtype: torch.dtype,
    device: torch.device,
    emit: Emit,
    load_base: Callable | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Verdict:
    """Both parts of the check on `batch` (a few held-out samples); emits ADAPTER_RELOAD_MISMATCH on failure.

    Unsharded, the fresh base is `load_base(path, dtype, device)` (default: models.load_model); on CUDA the
    trained model moves to the CPU first (one base on the GPU at a time) and stays there. Sharded (FSDP2),
    every rank loads the adapter as a second adapter onto the same sharded base instead (no device holds a
    whole fresh base); `state` is then the adapter's whole tensors (the parallel strategy's whole_adapter)."""
    model.eval()
    logits = model_logits(model, batch, device)
    want = expected_state(model, state)
    scalings = lora_scalings(model)
    problems = check_files(Path(adapter_dir), want, plan.lora, scalings)
    if fsdp.is_sharded(model):
        try:
            result = model.load_adapter(str(adapter_dir), adapter_name="reload")
        except Exception as e:  # a file peft cannot load at all is the finding, not a crash
            problems.append(f"peft cannot load the adapter: {type(e).__name__}: {e}")
        else:
            model.set_adapter("reload")
            with reference_forward(model):
                logits.reloaded = logits_of(model, batch, device)
            whole = {n: fsdp.whole(p) for n, p in model.named_parameters() if ".reload." in n}
            got = expected_state(model, whole, "reload")
            problems += check_loaded(result, got, want, lora_scalings(model, "reload"), scalings)
        finally:
            if "reload" in model.peft_config:
                model.set_adapter("default")
                model.delete_adapter("reload")
    else:
        if device.type == "cuda":  # one copy of the base on the GPU at a time
            model.to("cpu")
            torch.cuda.empty_cache()
        if load_base is None:
            from ..models import load_model as load_base
        fresh = load_base(plan.model.path, dtype, device)
        try:
            reloaded, result = peft_load(fresh, Path(adapter_dir))
        except Exception as e:  # wrong target names end here: "Target modules … not found"
            problems.append(f"peft cannot load the adapter on a fresh base: {type(e).__name__}: {e}")
        else:
            logits.reloaded = logits_of(reloaded, batch, device)
            with reloaded.disable_adapter():
                logits.reloaded_base = logits_of(reloaded, batch, device)
            got = expected_state(reloaded)
            problems += check_loaded(result, got, want, lora_scalings(reloaded), scalings)
            del reloaded
        del fresh
        if device.type == "cuda":
            torch.cuda.empty_cache()
    numeric, reason, stats = numeric_verdict(logits, dtype)
    verdict = Verdict(not problems and numeric != "fail", problems, numeric, reason, _finite(stats))
    log(
        emit,
        f"adapter reload check: {'passed' if verdict.ok else 'FAILED'}; files and peft's load "
        f"{'as trained' if not problems else f'differ ({len(problems)} problems)'}; numbers {numeric} "
        f"(effect ‖T−B‖/‖T‖ {stats.get('effect_rel', 0):.3g}, noise {stats.get('noise_rel', 0):.3g}, "
        f"error ‖R−T‖/‖T−B‖ {stats.get('error_rel_effect') or 0:.3g}, top-1 agreement "
        f"{stats.get('top1_agreement', 0):.1%})",
    )
    if not verdict.ok:
        finding(emit, "ADAPTER_RELOAD_MISMATCH", verdict.evidence())
    return verdict
