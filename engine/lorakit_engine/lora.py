"""LoRA on a base model, as training and the doctor's inspection both attach it: peft's `get_peft_model` with
the plan's targets, then every trainable tensor in float32 (fp16/bf16 adapters lose their updates: loss 0 or
NaN). Target names follow peft's rule for a list: a module matches a name when the name is its whole dotted
name or a dotted suffix of it (`q_proj` matches `model.layers.3.self_attn.q_proj`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .protocol import EngineError

_LAYER = re.compile(r"\.(\d+)\.")


def matches(name: str, target: str) -> bool:
    """peft's rule for a list of target names: the whole module name, or its dotted suffix."""
    return name == target or name.endswith("." + target)


def layer_of(name: str) -> int | None:
    """The decoder layer a module sits in (the first number in its dotted name), or None."""
    m = _LAYER.search(f".{name}.")
    return int(m.group(1)) if m else None


def match_targets(model: nn.Module, targets: list[str], layers: int) -> dict[str, Any]:
    """For each target: the modules it matches and the decoder layers they sit in, against one per layer."""
    names = [n for n, _ in model.named_modules() if n]
    per: dict[str, Any] = {}
    for t in targets:
        hits = [n for n in names if matches(n, t)]
        in_layers = sorted({i for i in (layer_of(n) for n in hits) if i is not None})
        linear = [n for n in hits if isinstance(model.get_submodule(n), nn.Linear)]
        per[t] = {
            "modules": len(hits),
            "linear": len(linear),
            "layers": len(in_layers),
            "outside_layers": sum(1 for n in hits if layer_of(n) is None),
            "examples": hits[:3],
        }
    total = sum(v["modules"] for v in per.values())
    return {
        "requested": list(targets),
        "per_target": per,
        "layers": layers,
        "matched_total": total,
        "expected_total": layers * len(targets),
    }


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the nn.Linear modules, in model order (candidates for `target_modules`).
    On a peft-wrapped model the LoRA internals are skipped and wrapped layers keep their own name."""
    names: dict[str, None] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue
        if parts[-1] == "base_layer":
            parts = parts[:-1]
        names[parts[-1]] = None
    return list(names)


def attach(
    base: nn.Module, targets: list[str], r: int, alpha: float, dropout: float, fp32_adapters: bool = True
):
    """The peft model with LoRA on `targets`; trainable tensors in float32 unless told otherwise."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    model = get_peft_model(base, config, autocast_adapter_dtype=fp32_adapters)
    if fp32_adapters:
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    return model


def attach_for_training(
    base: nn.Module, targets: list[str], r: int, alpha: float, dropout: float, model_type: str
):
    """`attach`, refusing targets that match no module at all (MODEL_TARGETS_NOT_FOUND, the model's linear
    modules listed); targets that match only part of the layers are the inspection's finding."""
    if match_targets(base, targets, 0)["matched_total"] == 0:
        raise EngineError(
            "MODEL_TARGETS_NOT_FOUND",
            f"no module of this {model_type} model is named {', '.join(targets)}; "
            f"its linear modules are: {', '.join(linear_module_names(base))}",
            "Set lora.targets to some of the linear module names listed (or leave it out: the family's set).",
        )
    return attach(base, targets, r, alpha, dropout)


def lora_layers(model: nn.Module, adapter: str = "default") -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every peft LoRA layer that holds `adapter`."""
    from peft.tuners.lora import LoraLayer

    for name, m in model.named_modules():
        if isinstance(m, LoraLayer) and adapter in m.lora_A:
            yield name, m
