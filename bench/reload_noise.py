"""Why the fast path's eval forward strays from peft's, measured: one ChatGLM3 model, one LoRA adapter, the
logits of the same padded batch computed with each fast-path piece switched on alone.

The adapter reload check (engine/lorakit_engine/verify/) compares the trained model in memory with the
saved adapter loaded by peft on a fresh base. The fresh base runs eager: peft's LoRA forward (x cast to the
adapter's float32, the delta computed and added in float32, one rounding back to bf16) and the eager
elementwise ops (rotary and SwiGLU rounding to bf16 after every product). The trained model ran the fast
path: the fused LoRA (kernels/lora.py) and, on CUDA, the Triton/compiled elementwise kernels. Each variant
below differs from the reference (the fresh base's function) in one piece:

    lora_bf16      the fused LoRA's training forward: A, B cast to bf16, u = x·Aᵀ rounded, y += s·u·Bᵀ in bf16
    lora_eval      the fused LoRA's eval forward (peft's arithmetic)
    rotary_fp32    rotary in float32, one rounding (what the Triton and compiled kernels compute)
    swiglu_fp32    SwiGLU in float32, one rounding (the same)
    elementwise    both of the above
    kernels        the real fast kernels (CUDA: model.fast.compile: Triton RMSNorm/SwiGLU, compiled rotary)
    fast_before    lora_bf16 + the kernels (CUDA) or their float32 stand-ins (CPU): the eval forward the
                   reload check compared before the fix
    one_by_one     the reference function, each sample run alone instead of in the padded batch of 4:
                   nothing but other GEMM shapes, a floor for "noise" in this dtype

For each: max |Δlogit| (what the old check judged), ‖Δ‖ / ‖effect‖ with effect = adapter-on − adapter-off
logits, and top-1 agreement with the reference, over the real (unpadded) positions. Two adapters: B at the
size two steps of lr 1e-4 leave (≈2e-4, the smoke run) and at a trained size.

    python3 bench/reload_noise.py                            # CPU, bf16, a small random ChatGLM3 (~1 min)
    python3 bench/reload_noise.py --model DIR --device cuda  # a checkpoint folder (the 6B-shaped one), GPU
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "engine"))

from lorakit_engine.kernels import elementwise, fuse_lora  # noqa: E402
from lorakit_engine.kernels.lora import _LoRALinear  # noqa: E402
from lorakit_engine.models.chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration  # noqa: E402

SMALL = {  # a ChatGLM3 in miniature: grouped attention, partial rotary, SwiGLU, deep enough to accumulate
    "num_layers": 8,
    "hidden_size": 256,
    "ffn_hidden_size": 688,
    "num_attention_heads": 8,
    "kv_channels": 32,
    "multi_query_group_num": 2,
    "padded_vocab_size": 8192,
}


def random_model(dtype: torch.dtype, device: str, seed: int = 0) -> ChatGLMForConditionalGeneration:
    """Random weights at init-like scale (N(0, 1/fan_in) matrices, norms ≈ 1, biases 0.1·N(0, 1))."""
    config = ChatGLMConfig(**SMALL)
    model = ChatGLMForConditionalGeneration(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if name.endswith("layernorm.weight"):
                p.copy_(1 + 0.1 * r)
            elif name.endswith(".bias"):
                p.copy_(0.1 * r)
            elif "word_embeddings" in name:
                p.copy_(r)
            else:
                p.copy_(r / math.sqrt(p.shape[1]))
    return model.to(device=device, dtype=dtype).eval()


def load_model(path: str, dtype: torch.dtype, device: str):
    from lorakit_engine.models import load_model as load

    return load(path, dtype=dtype, device=torch.device(device)).eval()


def batch(vocab: int, device: str, lengths=(160, 96, 128, 64), seed: int = 1):
    """Right-padded rows of random ids (pad 0) and their attention mask, as the reload check's batch."""
    gen = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.zeros(len(lengths), t, dtype=torch.long)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(10, min(vocab, 60000), (n,), generator=gen)
        mask[i, :n] = 1
    return ids.to(device), mask.to(device)


def attach(model, r: int, alpha: int):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.1, target_modules=["query_key_value"])
    )
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()  # the engine's fp32 adapters
    return peft_model.eval()


@torch.no_grad()
def set_b(model, b_std: float, seed: int = 2) -> None:
    """LoRA B drawn at `b_std` (A keeps peft's init): an adapter of a chosen size."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.copy_(b_std * torch.randn(p.shape, generator=gen))


@torch.no_grad()
def logits(model, ids, mask, one_by_one: bool = False) -> torch.Tensor:
    if one_by_one:
        rows = []
        for i in range(ids.shape[0]):
            n = int(mask[i].sum())
            rows.append(model(input_ids=ids[i : i + 1, :n], use_cache=False).logits[0].float())
        return torch.cat(rows).cpu()
    out = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    return out[mask.bool()].cpu()


def _lora_bf16_forward(module, peft_forward, x, *args, **kwargs):
    name = module.active_adapters[0]
    base = module.get_base_layer()
    a, b = module.lora_A[name].weight, module.lora_B[name].weight
    return _LoRALinear.apply(x, base.weight, base.bias, a, b, float(module.scaling[name]), 0.0)


@contextlib.contextmanager
def lora_bf16(model):
    from peft.tuners.lora import Linear as LoraLinear

    mods = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for m in mods:
        m.forward = functools.partial(_lora_bf16_forward, m, m.forward)
    try:
        yield
    finally:
        for m in mods:
            del m.forward


@contextlib.contextmanager
def fused_eval(model):
    fuse_lora(model, True)
    try:
        yield
    finally:
        fuse_lora(model, False)


def _rotary_fp32(x, cos, sin):
    return elementwise.rotary(x.float(), cos.float(), sin.float()).to(x.dtype)


def _swiglu_fp32(h):
    return elementwise.swiglu(h.float()).to(h.dtype)


@contextlib.contextmanager
def fp32_ops(*names: str):
    """The eager ops named, computed in float32 with one rounding at the end (as a fused kernel does)."""
    saved = dict(elementwise._EAGER)
    for n in names:
        elementwise._EAGER[n] = {"rotary": _rotary_fp32, "swiglu": _swiglu_fp32}[n]
    try:
        yield
    finally:
        elementwise._EAGER.update(saved)


@contextlib.contextmanager
def real_kernels(model):
    from lorakit_engine.kernels import fast_options

    options = fast_options(model)
    was = options.compile
    options.compile = True
    try:
        yield
    finally:
        options.compile = was


def stats(got: torch.Tensor, ref: torch.Tensor, base: torch.Tensor) -> dict:
    d = got - ref
    effect = float((ref - base).norm())
    return {
        "max_abs": float(d.abs().max()),
        "rel_to_effect": float(d.norm()) / effect if effect > 0 else math.inf,
        "rel_to_logits": float(d.norm() / ref.norm()),
        "top1_agree": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
    }


def measure(model, ids, mask, device: str) -> dict:
    with model.disable_adapter():
        base = logits(model, ids, mask)
    ref = logits(model, ids, mask)
    kernels = real_kernels(model) if device == "cuda" else fp32_ops("rotary", "swiglu")
    variants = {
        "lora_bf16": lambda: lora_bf16(model),
        "lora_eval": lambda: fused_eval(model),
        "rotary_fp32": lambda: fp32_ops("rotary"),
        "swiglu_fp32": lambda: fp32_ops("swiglu"),
        "elementwise": lambda: fp32_ops("rotary", "swiglu"),
    }
    if device == "cuda":
        variants["kernels"] = lambda: real_kernels(model)
    out = {
        "effect_rel_to_logits": float((ref - base).norm() / ref.norm()),
        "logit_rms": float(ref.pow(2).mean().sqrt()),
        "effect_top1_changed": float((ref.argmax(-1) != base.argmax(-1)).float().mean()),
    }
    for name, make in variants.items():
        with make():
            out[name] = stats(logits(model, ids, mask), ref, base)
    with lora_bf16(model), kernels:
        out["fast_before"] = stats(logits(model, ids, mask), ref, base)
    out["one_by_one"] = stats(logits(model, ids, mask, one_by_one=True), ref, base)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a ChatGLM3 checkpoint folder (default: a small random one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--b-std", default="2e-4,3e-3", help="LoRA B entries' std, one adapter each")
    ap.add_argument("--lengths", default="160,96,128,64", help="the padded batch's sample lengths")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    torch.manual_seed(0)
    results = {"device": args.device, "dtype": args.dtype, "model": args.model or f"random {SMALL}"}
    base = load_model(args.model, dtype, args.device) if args.model else random_model(dtype, args.device)
    lengths = [int(n) for n in args.lengths.split(",")]
    ids, mask = batch(base.config.padded_vocab_size, args.device, lengths)
    model = attach(base, 8, 32)
    for b_std in [float(s) for s in args.b_std.split(",")]:
        set_b(model, b_std)
        results[f"b_std={b_std:g}"] = measure(model, ids, mask, args.device)
    print(json.dumps(results, indent=1))
    names = ["lora_bf16", "lora_eval", "rotary_fp32", "swiglu_fp32", "elementwise", "kernels", "fast_before"]
    for key, r in results.items():
        if not key.startswith("b_std"):
            continue
        print(
            f"\n{key}: effect ‖T−B‖/‖T‖ {r['effect_rel_to_logits']:.3g}, top-1 changed by the adapter "
            f"{r['effect_top1_changed']:.1%}, logit rms {r['logit_rms']:.3g}"
        )
        print(f"{'variant':<14}{'max|Δ|':>10}{'‖Δ‖/effect':>12}{'‖Δ‖/‖T‖':>10}{'top-1':>8}")
        for n in [*names, "one_by_one"]:
            if n in r:
                s = r[n]
                print(
                    f"{n:<14}{s['max_abs']:>10.3g}{s['rel_to_effect']:>12.3g}{s['rel_to_logits']:>10.3g}"
                    f"{s['top1_agree']:>8.1%}"
                )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
