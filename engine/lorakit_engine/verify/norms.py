"""What the trained adapter changes, layer by layer: the norms of every LoRA B and of its weight delta
B·A·scale, logged after training; a layer whose B never left its zero init is ADAPTER_NEVER_LEARNED."""

from __future__ import annotations

import math
from typing import Any

from .. import fsdp
from ..findings import finding
from ..lora import layer_of, lora_layers
from ..protocol import Emit, log

B_ZERO_RMS = 1e-8  # a LoRA B whose entries average below this never moved away from its zero init


def adapter_norms(model) -> dict[str, Any]:
    """Frobenius norms of every LoRA B and of its weight delta B·A·scale, grouped by layer index. Sharded,
    every rank gathers each whole weight (collective)."""
    per_layer: dict[str, dict[str, float]] = {}
    b_norms, deltas = [], []
    for name, m in lora_layers(model):
        a = fsdp.whole(m.lora_A["default"].weight).detach().float()
        b = fsdp.whole(m.lora_B["default"].weight).detach().float()
        scale = float(m.scaling["default"])
        b_norm = float(b.norm())
        # ‖BA‖² = Σ (BᵀB) ∘ (AAᵀ): r×r products instead of the full out×in delta.
        delta = math.sqrt(max(0.0, float(((b.T @ b) * (a @ a.T)).sum()))) * abs(scale)
        b_rms = b_norm / math.sqrt(max(1, b.numel()))
        index = layer_of(name)
        slot = per_layer.setdefault(
            "other" if index is None else str(index), {"b_rms_max": 0.0, "delta": 0.0}
        )
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
    dead = [k for k, v in norms["per_layer"].items() if v["b_rms_max"] < B_ZERO_RMS]
    if dead:
        evidence = {"layers": dead[:64], "of_layers": len(norms["per_layer"]), "b_rms_threshold": B_ZERO_RMS}
        finding(emit, "ADAPTER_NEVER_LEARNED", evidence)
