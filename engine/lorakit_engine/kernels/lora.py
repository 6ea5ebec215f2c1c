"""A fused forward/backward for peft's LoRA Linear: the same function, fewer passes, less memory.

peft computes `base(x) + lora_B(lora_A(dropout(x.float()))) · scale` in the adapter's dtype: with a bf16
base and float32 adapters (lorakit's setting) that is a float32 copy of x, a float32 dropout, float32 GEMMs,
a float32 sum of the base output and a cast back, and autograd keeps the float32 dropped-out input for
backward. Here:

    y = x Wᵀ + b                       (the base GEMM, bias in its epilogue)
    u = dropout(x) Aᵀ                  (A, B cast to x's dtype; dropout and its bool mask in one kernel)
    y += scale · u Bᵀ                  (accumulated into y by the GEMM itself)

and backward writes dx = dy W + (scale · dy B) A ⊙ mask/(1−p), dA = (scale · dy B)ᵀ dropout(x),
dB = scale · dyᵀ u (float32 gradients for the float32 adapter weights). Saved: dropout(x) in x's dtype and
its bool mask (none when p = 0), u (rank-wide). Like autocast, the adapter's GEMMs run in the input dtype.

That is for training only. In eval mode (evaluation, samples, the reload check) the module computes peft's
own arithmetic instead, `(x Wᵀ + b + scale · (x₃₂ A₃₂ᵀ) B₃₂ᵀ).to(x's dtype)`: the delta in float32, added in
float32, one rounding. The bf16 delta differs from it by a bf16 rounding per module, and a rounding anywhere
grows through the layers to the whole bf16 noise of the logits (about 1% of their norm on a random model,
bench/reload_noise.py), so without this the model a user reloads with peft would not be the model that was
evaluated here.

`fuse_lora(model)` points the `forward` of every plain peft LoRA Linear (one active adapter, no DoRA or other
variant, frozen base) at this path; anything else keeps peft's own forward. Weights, names and the saved
adapter are untouched.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _LoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float, p: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        a, b = lora_a.to(x.dtype), lora_b.to(x.dtype)
        y = F.linear(x2, weight, bias)
        if p > 0:
            xd, mask = torch.native_dropout(x2, p, True)
        else:
            xd, mask = x2, None
        u = xd @ a.t()
        y.addmm_(u, b.t(), alpha=scale)
        ctx.scale, ctx.p, ctx.shape = scale, p, shape
        ctx.a_dtype, ctx.b_dtype = lora_a.dtype, lora_b.dtype
        ctx.save_for_backward(xd, mask, u, weight, a, b)
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        xd, mask, u, weight, a, b = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1]).to(xd.dtype)
        du = (dy2 @ b).mul_(ctx.scale)
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            if mask is None:
                dx = (dy2 @ weight).addmm_(du, a)
            else:
                dx = (dy2 @ weight).add_((du @ a).mul_(mask), alpha=1.0 / (1.0 - ctx.p))
            dx = dx.view(ctx.shape)
        if ctx.needs_input_grad[3]:
            da = (du.t() @ xd).to(ctx.a_dtype)
        if ctx.needs_input_grad[4]:
            db = (dy2.t() @ u).mul_(ctx.scale).to(ctx.b_dtype)
        return dx, None, None, da, db, None, None


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
    p: float = 0.0,
    training: bool = True,
) -> torch.Tensor:
    """x Wᵀ + b + scale · B A dropout_p(x), W and b frozen; gradients for x, A and B. training=False: no
    dropout and peft's arithmetic (peft_arithmetic)."""
    if not training:
        return peft_arithmetic(x, weight, bias, lora_a, lora_b, scale)
    return _LoRALinear.apply(x, weight, bias, lora_a, lora_b, float(scale), float(p))


def peft_arithmetic(x, weight, bias, lora_a, lora_b, scale: float) -> torch.Tensor:
    """peft's LoRA Linear forward without dropout, operation for operation (peft/tuners/lora/layer.py
    Linear.forward): the base output in x's dtype, x cast to the adapter's dtype for the delta, the sum in the
    wider dtype, cast back once."""
    result = F.linear(x, weight, bias)
    delta = F.linear(F.linear(x.to(lora_a.dtype), lora_a), lora_b) * scale
    return (result + delta).to(result.dtype)


def _fusable(module: Any) -> str | None:
    """The adapter name if this peft LoRA Linear can take the fused path right now, else None."""
    if module.disable_adapters or module.merged or len(module.active_adapters) != 1:
        return None
    name = module.active_adapters[0]
    if name not in module.lora_A or name in getattr(module, "lora_variant", {}):
        return None
    base = module.get_base_layer()
    if type(base) is not nn.Linear or base.weight.requires_grad:
        return None
    if base.bias is not None and base.bias.requires_grad:
        return None
    if getattr(module, "fan_in_fan_out", False):
        return None
    return name


def _fused_forward(module: Any, peft_forward: Any, x: torch.Tensor, *args: Any, **kwargs: Any):
    name = None if (args or kwargs) else _fusable(module)
    if name is None:
        return peft_forward(x, *args, **kwargs)
    base = module.get_base_layer()
    dropout = module.lora_dropout[name]
    p = dropout.p if isinstance(dropout, nn.Dropout) else 0.0
    return lora_linear(
        x,
        base.weight,
        base.bias,
        module.lora_A[name].weight,
        module.lora_B[name].weight,
        module.scaling[name],
        p,
        module.training,
    )


def fuse_lora(model: nn.Module, enable: bool = True) -> int:
    """Route every peft LoRA Linear in `model` through the fused path (or back, enable=False). Returns how
    many modules were switched."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        return 0
    count = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        fused = "forward" in module.__dict__
        if enable and not fused:
            module.forward = functools.partial(_fused_forward, module, module.forward)
            count += 1
        elif not enable and fused:
            del module.forward
            count += 1
    return count
