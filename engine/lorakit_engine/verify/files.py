"""The structural half of the reload check: the saved files and peft's load of them against the in-memory
adapter, exactly (names, shapes, dtypes, values, scalings). Each function returns the problems it found, as
sentences; none: the same adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..adapter import check_adapter
from ..lora import lora_layers
from ..plan import LoraPlan


def expected_state(model, state: dict[str, torch.Tensor] | None = None, adapter: str = "default"):
    """What save_pretrained writes for `adapter`, on the CPU, named as in adapter_model.safetensors. `state`:
    the model's whole tensors where it is sharded (the parallel strategy's whole_adapter)."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(model, state_dict=state, adapter_name=adapter, save_embedding_layers=False)
    return {k: v.detach().cpu() for k, v in sd.items()}


def lora_scalings(model, adapter: str = "default") -> dict[str, float]:
    """Each LoRA module of `adapter`, by name, with its scaling."""
    return {name: float(m.scaling[adapter]) for name, m in lora_layers(model, adapter)}


def compare_tensors(what: str, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> list[str]:
    """Names, shapes, dtypes and values, exactly."""
    problems = []
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing:
        problems.append(
            f"{what} lacks {len(missing)} of the adapter's {len(want)} tensors, e.g. {missing[0]}"
        )
    if extra:
        problems.append(f"{what} has {len(extra)} tensors the adapter does not, e.g. {extra[0]}")
    for name in sorted(set(want) & set(got)):
        a, b = got[name], want[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(
                f"{what}: {name} is {tuple(a.shape)} {a.dtype}, the adapter's is {tuple(b.shape)} {b.dtype}"
            )
        elif not torch.equal(a.cpu(), b.cpu()):
            diff = float((a.float().cpu() - b.float().cpu()).abs().max())
            zero = " (all zeros)" if not a.any() else ""
            problems.append(f"{what}: {name} differs from the adapter's (max |Δ| {diff:.3g}){zero}")
    return problems


def check_files(adapter_dir: Path, want: dict[str, torch.Tensor], lora: LoraPlan, scalings: dict[str, float]):
    """The saved files against their SHA256SUMS, the in-memory adapter and the plan."""
    from safetensors.torch import load_file

    problems: list[str] = check_adapter(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    try:
        problems += compare_tensors(weights.name, load_file(str(weights)), want)
    except Exception as e:  # missing or unreadable: that is the finding
        problems.append(f"cannot read {weights.name}: {type(e).__name__}: {e}")
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [*problems, f"cannot read adapter_config.json: {e}"]
    for key, value in (("r", lora.r), ("lora_alpha", lora.alpha)):
        if config.get(key) != value:
            problems.append(f"adapter_config.json {key} is {config.get(key)!r}, the run trained {value!r}")
    targets = config.get("target_modules")
    targets = sorted(targets) if isinstance(targets, list) else targets
    if targets != sorted(lora.targets):
        trained = sorted(lora.targets)
        problems.append(f"adapter_config.json target_modules is {targets!r}, the run trained {trained}")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if isinstance(r, int) and r > 0 and isinstance(alpha, (int, float)):
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        off = sorted({s for s in scalings.values() if not math.isclose(s, scale, rel_tol=1e-6)})
        if off:
            problems.append(f"adapter_config.json makes the scaling {scale:g}; training scaled by {off[0]:g}")
    return problems


def check_loaded(load_result, reloaded_state, want, reloaded_scalings, scalings) -> list[str]:
    """peft's load on the fresh base against the in-memory adapter."""
    problems = []
    missing = list(getattr(load_result, "missing_keys", []) or [])
    unexpected = list(getattr(load_result, "unexpected_keys", []) or [])
    if missing:
        problems.append(f"peft's load left {len(missing)} adapter weights missing, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"peft's load found {len(unexpected)} weights no module takes, e.g. {unexpected[0]}")
    if len(reloaded_scalings) != len(scalings):
        problems.append(
            f"peft made {len(reloaded_scalings)} LoRA modules on the fresh base, training {len(scalings)}"
        )
    wrong = sorted(
        n for n, x in reloaded_scalings.items() if n in scalings and not math.isclose(x, scalings[n])
    )
    if wrong:
        w = wrong[0]
        more = f" ({len(wrong)} modules)" if len(wrong) > 1 else ""
        problems.append(
            f"reloaded {w} scales by {reloaded_scalings[w]:g}, the trained one by {scalings[w]:g}{more}"
        )
    return problems + compare_tensors("the reloaded adapter", reloaded_state, want)
