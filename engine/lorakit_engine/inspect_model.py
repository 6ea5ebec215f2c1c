"""The doctor's look at the model with LoRA attached: which modules the targets match (against
layers × targets), what is trainable and in which dtype, and how the base model's loss on formatted
samples compares with its loss on the same text without the template.

    python -m lorakit_engine.inspect_model --model DIR --targets a,b --r 8 [--samples samples.json] → JSON

The JSON holds `facts` and `findings` (each shaped like the protocol's `finding` event). The checks are plain
functions, so a training run can run `check_peft_model` on the very model it trains; LoRA is attached as
training attaches it (lora.py).
`samples.json` is `{"formatted": [{"input_ids": [...], "labels": [...]}], "plain": [{"input_ids": [...]}]}`,
labels aligned with input_ids and -100 where no loss (shifted here).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .findings import finding_event as finding
from .lora import attach, linear_module_names, match_targets
from .protocol import EngineError

IGNORE = -100
_SHOWN = 50  # names listed in evidence before the rest are only counted
TEMPLATE_RATIO = 1.5  # formatted loss this many times the plain loss …
TEMPLATE_MARGIN = 0.5  # … and this many nats above it → the template looks wrong for this model
MAX_SAMPLES = 8
MAX_TOKENS = 1024


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------- targets


def target_findings(
    match: dict[str, Any], linear_modules: list[str], recommended: list[str], model_type: str
):
    per, layers = match["per_target"], match["layers"]
    if match["matched_total"] == 0:
        return [
            finding(
                "MODEL_TARGETS_NOT_FOUND",
                {
                    "targets": match["requested"],
                    "linear_modules": linear_modules,
                    "recommended": recommended,
                    "model_type": model_type,
                },
            )
        ]
    short = {
        t: {"matched": v["modules"], "layers": v["layers"], "expected_layers": layers}
        for t, v in per.items()
        if v["modules"] == 0 or (v["outside_layers"] == 0 and v["layers"] < layers)
    }
    if not short:
        return []
    return [
        finding(
            "MODEL_TARGETS_PARTIAL",
            {
                "short": short,
                "matched_total": match["matched_total"],
                "expected_total": match["expected_total"],
                "layers": layers,
                "linear_modules": linear_modules,
            },
        )
    ]


# ---------------------------------------------------------------- trainable parameters


def trainable_facts(model) -> dict[str, Any]:
    total, trainable, lora = 0, 0, 0
    base_trainable: list[str] = []
    dtypes: dict[str, int] = {}
    half: list[str] = []
    for name, p in model.named_parameters():
        total += p.numel()
        if not p.requires_grad:
            continue
        trainable += p.numel()
        dt = _dtype_name(p.dtype)
        dtypes[dt] = dtypes.get(dt, 0) + 1
        if dt != "float32":
            half.append(f"{name}: {dt}")
        if "lora_" in name:
            lora += p.numel()
        else:
            base_trainable.append(name)
    return {
        "total": total,
        "trainable": trainable,
        "lora": lora,
        "share": trainable / total if total else 0.0,
        "base_trainable": base_trainable,
        "trainable_dtypes": dtypes,
        "not_float32": half,
    }


def trainable_findings(facts: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    if facts["trainable"] == 0:
        out.append(
            finding(
                "MODEL_NOTHING_TRAINABLE",
                {"total_params": facts["total"], "trainable_params": 0},
            )
        )
    if facts["base_trainable"]:
        names = facts["base_trainable"]
        out.append(
            finding(
                "MODEL_BASE_TRAINABLE",
                {"count": len(names), "names": names[:_SHOWN], "trainable_params": facts["trainable"]},
            )
        )
    if facts["not_float32"]:
        out.append(
            finding(
                "MODEL_ADAPTER_DTYPE",
                {"dtypes": facts["trainable_dtypes"], "tensors": facts["not_float32"][:_SHOWN]},
            )
        )
    return out


def check_peft_model(model, targets: list[str], layers: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Facts and findings about a model with LoRA attached (the training run's, after attaching)."""
    match = match_targets(model, targets, layers)
    facts = trainable_facts(model)
    found = target_findings(match, linear_module_names(model), [], model.config.model_type)
    found = [f for f in found if f["code"] != "MODEL_TARGETS_NOT_FOUND"]  # peft would not have attached
    return {"targets": match, "params": facts}, found + trainable_findings(facts)


# ---------------------------------------------------------------- template loss


def _mean_loss(model, input_ids: list[int], labels: list[int], device) -> tuple[float, int]:
    import torch
    import torch.nn.functional as F

    ids = torch.tensor([input_ids[:MAX_TOKENS]], dtype=torch.long, device=device)
    lab = torch.tensor([labels[:MAX_TOKENS]], dtype=torch.long, device=device)
    target = torch.cat((lab[:, 1:], torch.full_like(lab[:, :1], IGNORE)), dim=1)
    n = int((target != IGNORE).sum())
    if n == 0:
        return math.nan, 0
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits.float()
    loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE, reduction="sum")
    return float(loss) / n, n


def template_loss(model, samples: dict[str, Any], device="cpu") -> dict[str, Any]:
    """Token-weighted mean loss of the base model on formatted samples (their trained labels) and on the
    plain text (every token)."""
    out: dict[str, Any] = {}
    for kind in ("formatted", "plain"):
        rows = samples.get(kind, [])[:MAX_SAMPLES]
        per, total, tokens = [], 0.0, 0
        for row in rows:
            ids = [int(x) for x in row["input_ids"]]
            labels = [int(x) for x in row["labels"]] if kind == "formatted" else ids
            loss, n = _mean_loss(model, ids, labels, device)
            per.append(None if n == 0 else round(loss, 4))
            if n:
                total += loss * n
                tokens += n
        out[kind] = {"mean": total / tokens if tokens else None, "tokens": tokens, "per_sample": per}
    f, p = out["formatted"]["mean"], out["plain"]["mean"]
    out["ratio"] = f / p if f is not None and p else None
    return out


def template_findings(loss: dict[str, Any]) -> list[dict[str, Any]]:
    f, p, ratio = loss["formatted"]["mean"], loss["plain"]["mean"], loss["ratio"]
    if f is None or p is None or ratio is None or not (ratio >= TEMPLATE_RATIO and f - p >= TEMPLATE_MARGIN):
        return []
    return [
        finding(
            "MODEL_TEMPLATE_LOSS_HIGH",
            {
                "formatted_loss": round(f, 4),
                "plain_loss": round(p, 4),
                "ratio": round(ratio, 3),
                "threshold": {"ratio": TEMPLATE_RATIO, "margin_nats": TEMPLATE_MARGIN},
                "formatted_per_sample": loss["formatted"]["per_sample"],
                "plain_per_sample": loss["plain"]["per_sample"],
            },
        )
    ]


# ---------------------------------------------------------------- the whole inspection


def inspect(
    model_dir: str,
    targets: list[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    dtype: str = "float32",
    device: str = "cpu",
    samples: dict[str, Any] | None = None,
    fp32_adapters: bool = True,
) -> dict[str, Any]:
    import torch

    from .models import get_family, layer_count, load_model, read_config

    facts: dict[str, Any] = {"model": str(model_dir), "dtype": dtype, "device": device}
    try:
        config = read_config(model_dir)
        family = get_family(config.get("model_type"))
        layers = layer_count(config)
        facts.update(model_type=config["model_type"], layers=layers, recommended=list(family.targets))
        base = load_model(model_dir, dtype=getattr(torch, dtype), device=device)
    except Exception as e:  # noqa: BLE001 — a model that cannot load is a finding
        known = isinstance(e, EngineError)
        evidence = {
            "model": str(model_dir),
            "error": e.message if known else f"{type(e).__name__}: {e}",
            "code": e.code if known else None,
            "hint": e.hint if known else None,
        }
        return {"facts": facts, "findings": [finding("MODEL_LOAD_FAILED", evidence)]}
    found: list[dict[str, Any]] = []
    linear = linear_module_names(base)
    facts["linear_modules"] = linear
    if samples:
        facts["template_loss"] = template_loss(base, samples, device)
        found += template_findings(facts["template_loss"])
    match = match_targets(base, targets, layers)
    facts["targets"] = match
    found += target_findings(match, linear, list(family.targets), facts["model_type"])
    if match["matched_total"] == 0:
        return {"facts": facts, "findings": found}
    try:
        model = attach(base, targets, r, alpha, dropout, fp32_adapters)
    except Exception as e:  # noqa: BLE001 — peft refuses some targets (not Linear, …): a finding
        found.append(
            finding(
                "MODEL_LORA_ATTACH_FAILED",
                {"targets": targets, "error": f"{type(e).__name__}: {e}", "linear_modules": linear},
            )
        )
        return {"facts": facts, "findings": found}
    facts["params"] = trainable_facts(model)
    facts["lora_modules"] = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    found += trainable_findings(facts["params"])
    return {"facts": facts, "findings": found}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lorakit_engine.inspect_model", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--model", required=True)
    ap.add_argument("--targets", required=True, help="comma-separated module names")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=None, help="default 4 × r")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", help="JSON file: {formatted: [{input_ids, labels}], plain: [{input_ids}]}")
    ap.add_argument(
        "--no-fp32-adapters",
        action="store_true",
        help="attach adapters in the base dtype, as older peft did (lorakit's engine keeps them float32)",
    )
    args = ap.parse_args(argv)
    samples = json.loads(Path(args.samples).read_text(encoding="utf-8")) if args.samples else None
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    result = inspect(
        args.model,
        targets,
        args.r,
        args.alpha if args.alpha is not None else 4.0 * args.r,
        args.dropout,
        args.dtype,
        args.device,
        samples,
        fp32_adapters=not args.no_fp32_adapters,
    )
    sys.stdout.write(json.dumps(result, ensure_ascii=False, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
