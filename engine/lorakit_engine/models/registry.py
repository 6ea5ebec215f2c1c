"""The model families lorakit supports, keyed by config.json `model_type`. The list is the product's, exported
to protocol/families.json (names, model types, builder kind, default LoRA targets, layer keys, …); the only
fact kept here is which function builds a family. No torch at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from ..protocol import protocol_file


@dataclass(frozen=True)
class Family:
    """One entry of protocol/families.json, the keys the engine reads."""

    name: str
    model_types: tuple[str, ...]
    builder: Literal["native", "transformers"]
    targets: tuple[str, ...]  # default LoRA targets: leaf module names, as peft's `target_modules`
    layer_keys: tuple[
        str, ...
    ]  # config.json keys that hold the number of decoder layers, the first present wins


@cache
def families() -> dict[str, Family]:
    """Every family by each of its model types, in the file's order."""
    out: dict[str, Family] = {}
    for f in protocol_file("families.json")["families"]:
        family = Family(
            f["name"], tuple(f["model_types"]), f["builder"], tuple(f["targets"]), tuple(f["layer_keys"])
        )
        out.update((t, family) for t in family.model_types)
    return out


def supported_model_types() -> list[str]:
    return list(families())


def get_family(model_type: str | None) -> Family:
    family = families().get(model_type or "")
    if family is None:
        from .checkpoint import load_error

        raise load_error(
            f"model_type {model_type!r} is not supported; supported: {', '.join(families())}",
            hint="Point model at a checkpoint of a supported family (config.json `model_type`).",
        )
    return family


def layer_count(config: dict[str, Any]) -> int:
    """The decoder layers config.json declares, under the first of its family's layer keys present."""
    family = get_family(config.get("model_type"))
    for key in family.layer_keys:
        if isinstance(config.get(key), int):
            return config[key]
    from .checkpoint import load_error

    raise load_error(f"config.json has none of {', '.join(family.layer_keys)} (the number of layers)")


# ---------------------------------------------------------------- builders


def _native_chatglm(folder: Path, dtype, device):
    from .chatglm import ChatGLMForConditionalGeneration

    return ChatGLMForConditionalGeneration.from_pretrained(folder, dtype=dtype, device=device)


def _transformers(folder: Path, dtype, device):
    from transformers import AutoModelForCausalLM

    from .checkpoint import find_weights

    find_weights(folder)  # the same shard and layout errors for every family
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, trust_remote_code=False, local_files_only=True
    )
    return model.to(device).eval()


NATIVE_BUILDERS: dict[str, Callable] = {"chatglm": _native_chatglm}  # by family name


def builder_of(family: Family) -> Callable:
    """The function that builds `family`'s model: (folder, dtype, device) → the model in eval mode."""
    if family.builder == "transformers":
        return _transformers
    if family.name not in NATIVE_BUILDERS:
        from .checkpoint import load_error

        raise load_error(
            f"protocol/families.json builds {family.name} natively, but the engine has no builder"
        )
    return NATIVE_BUILDERS[family.name]
