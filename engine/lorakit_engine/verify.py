"""The adapter reload check: the saved adapter, loaded by peft on a fresh base, must be the adapter that was
trained. Two parts, both always run; either fails the check (ADAPTER_RELOAD_MISMATCH):

structural, exact —
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

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
REL_TOL = 0.1  # the reloaded adapter reproduces ≥ 90% of the trained effect …
NOISE_ALLOWANCE = 2.0  # … up to twice the measured noise
CONCLUSIVE = 8.0  # the effect must stand this far above the noise for the numbers to judge
TOP1_KEPT = 0.5  # of the positions whose top-1 token the adapter changed, the reload keeps at least half …
TOP1_MIN_CHANGED = 8  # … judged where the adapter changed at least this many (and 4× the noise's flips)
MAX_PROBLEMS = 12


@dataclass
class Logits:
    """Logits of the real positions of one batch ([positions, vocab], float32, on the CPU)."""

    trained: torch.Tensor
    base: torch.Tensor
    base_once: torch.Tensor
    reloaded: torch.Tensor | None = None
    reloaded_base: torch.Tensor | None = None


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


# ---------------------------------------------------------------- structural


def expected_state(model, state: dict[str, torch.Tensor] | None = None, adapter: str = "default"):
    """What save_pretrained writes for `adapter`, on the CPU, named as in adapter_model.safetensors. `state`:
    the model's whole tensors where it is sharded (sharding.full_adapter_state)."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(model, state_dict=state, adapter_name=adapter, save_embedding_layers=False)
    return {k: v.detach().cpu() for k, v in sd.items()}


def lora_scalings(model, adapter: str = "default") -> dict[str, float]:
    """Each LoRA module of `adapter`, by name, with its scaling."""
    from peft.tuners.lora import LoraLayer

    return {
        name: float(m.scaling[adapter])
        for name, m in model.named_modules()
        if isinstance(m, LoraLayer) and adapter in m.lora_A
    }


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


def check_files(adapter_dir: Path, want: dict[str, torch.Tensor], plan: dict, scalings: dict[str, float]):
    """The saved files against the in-memory adapter and the plan."""
    from safetensors.torch import load_file

    problems: list[str] = []
    weights = adapter_dir / "adapter_model.safetensors"
    try:
        problems += compare_tensors(weights.name, load_file(str(weights)), want)
    except Exception as e:  # missing or unreadable: that is the finding
        problems.append(f"cannot read {weights.name}: {type(e).__name__}: {e}")
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return [*problems, f"cannot read adapter_config.json: {e}"]
    lora = plan["lora"]
    for key, value in (("r", lora["r"]), ("lora_alpha", lora["alpha"])):
        if config.get(key) != value:
            problems.append(f"adapter_config.json {key} is {config.get(key)!r}, the run trained {value!r}")
    targets = config.get("target_modules")
    targets = sorted(targets) if isinstance(targets, list) else targets
    if targets != sorted(lora["targets"]):
        trained = sorted(lora["targets"])
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


# ---------------------------------------------------------------- numeric


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


# ---------------------------------------------------------------- the check


@contextlib.contextmanager
def reference_forward(model):
    """The model's eval forward as a fresh base computes it: the fused elementwise kernels off (the fused
    LoRA's eval forward is peft's arithmetic already)."""
    from .kernels import fast_options

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
    from .kernels.elementwise import rounding_once

    with reference_forward(model):
        trained = logits_of(model, batch, device)
        with model.disable_adapter():
            base = logits_of(model, batch, device)
            with rounding_once():
                base_once = logits_of(model, batch, device)
    return Logits(trained, base, base_once)


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
    model, adapter_dir: Path, plan: dict, batch, dtype, device, emit, load_base, state=None
) -> Verdict:
    """Both parts of the check on `batch` (a few held-out samples); emits ADAPTER_RELOAD_MISMATCH on failure.

    Unsharded, the fresh base is `load_base(path, dtype, device)`; on CUDA the trained model moves to the CPU
    first (one base on the GPU at a time) and stays there. Sharded (FSDP2), every rank loads the adapter as a
    second adapter onto the same sharded base instead (no device holds a whole fresh base); `state` is then
    the adapter's whole tensors (sharding.full_adapter_state)."""
    from . import sharding
    from .protocol import finding, log

    model.eval()
    logits = model_logits(model, batch, device)
    want = expected_state(model, state)
    scalings = lora_scalings(model)
    problems = check_files(Path(adapter_dir), want, plan, scalings)
    if sharding.is_sharded(model):
        try:
            result = model.load_adapter(str(adapter_dir), adapter_name="reload")
        except Exception as e:  # a file peft cannot load at all is the finding, not a crash
            problems.append(f"peft cannot load the adapter: {type(e).__name__}: {e}")
        else:
            model.set_adapter("reload")
            with reference_forward(model):
                logits.reloaded = logits_of(model, batch, device)
            whole = {n: sharding.whole(p) for n, p in model.named_parameters() if ".reload." in n}
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
        fresh = load_base(plan["model"]["path"], dtype, device)
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
        first = problems[0] if problems else reason
        finding(
            emit,
            "ADAPTER_RELOAD_MISMATCH",
            "error",
            f"the saved adapter, loaded by peft on a fresh base, is not the trained adapter: {first}",
            verdict.evidence(),
            "Check that the adapter's target modules exist under the same names in the base model and that "
            "nothing rewrote adapter/ after training; report it with engine.log if they do.",
        )
    return verdict
