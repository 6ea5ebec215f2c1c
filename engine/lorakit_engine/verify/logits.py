"""The numeric half of the reload check: the adapter's effect on the logits of a few held-out samples, judged
against the noise of the dtype and the kernels (the thresholds and their reasons: the package's docstring)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
REL_TOL = 0.1  # the reloaded adapter reproduces ≥ 90% of the trained effect …
NOISE_ALLOWANCE = 2.0  # … up to twice the measured noise
CONCLUSIVE = 8.0  # the effect must stand this far above the noise for the numbers to judge
TOP1_KEPT = 0.5  # of the positions whose top-1 token the adapter changed, the reload keeps at least half …
TOP1_MIN_CHANGED = 8  # … judged where the adapter changed at least this many (and 4× the noise's flips)


@dataclass
class Logits:
    """Logits of the real positions of one batch ([positions, vocab], float32, on the CPU)."""

    trained: torch.Tensor
    base: torch.Tensor
    base_once: torch.Tensor
    reloaded: torch.Tensor | None = None
    reloaded_base: torch.Tensor | None = None


@contextlib.contextmanager
def reference_forward(model):
    """The model's eval forward as a fresh base computes it: the fused elementwise kernels off (the fused
    LoRA's eval forward is peft's arithmetic already)."""
    from ..kernels import fast_options

    options = fast_options(model)
    was = options.compile if options is not None else None
    if options is not None:
        options.compile = False
    try:
        yield
    finally:
        if options is not None:
            options.compile = was


@torch.no_grad()
def logits_of(model, batch, device) -> torch.Tensor:
    b = batch.to(device)
    out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits.float()
    return out[batch.attention_mask.to(device).bool()].cpu()  # real positions only


def model_logits(model, batch, device) -> Logits:
    """T, B and B~ of the in-memory model."""
    from ..kernels.elementwise import rounding_once

    with reference_forward(model):
        trained = logits_of(model, batch, device)
        with model.disable_adapter():
            base = logits_of(model, batch, device)
            with rounding_once():
                base_once = logits_of(model, batch, device)
    return Logits(trained, base, base_once)


def numeric_verdict(logits: Logits, dtype: torch.dtype) -> tuple[str, str | None, dict[str, Any]]:
    """("pass" | "fail" | "inconclusive", the failure's reason, the statistics)."""
    t, b, r = logits.trained, logits.base, logits.reloaded
    if r is None:
        return "not run", None, {}
    if r.shape != t.shape:
        return "fail", f"the reloaded logits have shape {tuple(r.shape)}, the trained {tuple(t.shape)}", {}
    norm = float(t.norm())
    effect = float((t - b).norm())
    error = float((r - t).norm())
    measured = [float((logits.base_once - b).norm())]
    if logits.reloaded_base is not None:
        measured.append(float((logits.reloaded_base - b).norm()))
    floor = UNIT_ROUNDOFF.get(dtype, 2.0**-8) * norm
    noise = max([*measured, floor])
    top_t, top_b, top_r = t.argmax(-1), b.argmax(-1), r.argmax(-1)
    changed = top_t != top_b
    flips = int((logits.base_once.argmax(-1) != top_b).sum())
    if logits.reloaded_base is not None:
        flips = max(flips, int((logits.reloaded_base.argmax(-1) != top_b).sum()))
    n_changed = int(changed.sum())
    kept = float((top_r[changed] == top_t[changed]).float().mean()) if n_changed else None
    stats = {
        "positions": int(t.shape[0]),
        "effect_rel": effect / norm if norm else 0.0,  # ‖T − B‖ / ‖T‖
        "error_rel_effect": error / effect if effect else (0.0 if error == 0 else math.inf),
        "effect_over_noise": effect / noise if noise else math.inf,
        "noise_rel": noise / norm if norm else 0.0,
        "noise_measured_rel": max(measured) / norm if norm else 0.0,
        "top1_agreement": float((top_r == top_t).float().mean()),
        "top1_changed_by_adapter": n_changed,
        "top1_kept": kept,
        "top1_noise_flips": flips,
        "max_abs_logit_diff": float((r - t).abs().max()),
    }
    reason = None
    if not math.isfinite(error) or not bool(torch.isfinite(r).all()):
        reason = "the reloaded model's logits are not finite"
    elif error > effect + 4 * noise:
        reason = (
            "the reloaded model differs from the trained one by more than the adapter's whole effect "
            f"(‖R−T‖ {error:.3g} > ‖T−B‖ {effect:.3g} + 4 × noise {noise:.3g})"
        )
    elif effect < CONCLUSIVE * noise:
        return "inconclusive", None, stats
    elif error > REL_TOL * effect + NOISE_ALLOWANCE * noise:
        reason = (
            f"the reloaded adapter reproduces {max(0.0, 1 - error / effect):.0%} of the trained adapter's "
            f"effect (‖R−T‖/‖T−B‖ = {error / effect:.3g}, allowed {REL_TOL:g} + {NOISE_ALLOWANCE:g} × noise)"
        )
    elif n_changed >= max(TOP1_MIN_CHANGED, 4 * flips) and kept is not None and kept < TOP1_KEPT:
        reason = f"the adapter changed the top-1 token at {n_changed} positions; the reload keeps {kept:.0%}"
    return ("fail" if reason else "pass"), reason, stats
