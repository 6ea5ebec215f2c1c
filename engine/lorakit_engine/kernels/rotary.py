"""Rotary embedding as Triton kernels for the packed layout x [B, T, heads, d], cos/sin [B, T, 1, d_rot/2].

Each program takes one token: all its heads, the rotated pairs (2i, 2i+1) of the first d_rot dims and the
pass-through rest, read once from x (a strided view of the query_key_value output is fine) and written once,
contiguous. Backward rotates the gradient by the opposite angle. Arithmetic in float32, one rounding at the
store (torch.compile's kernel does the same; eager bf16 rounds after every product). Measured on an H200
(bench/bench.py --micro, q of 16k tokens, forward + backward): 1.25 ms, the same as torch.compile's kernel
(1.20) and well above the ~0.2 ms of memory traffic: the pairs are read with stride 2 and each program is
one token. Kept because it needs no compilation per shape; a pair-vectorised layout is the next step.

`rotary(x, cos, sin)` takes the kernels on CUDA when the layout fits and Triton passes a one-time check,
else falls back to the eager or compiled expression in elementwise.py.
"""

from __future__ import annotations

import functools

import torch

from .elementwise import rotary as rotary_eager
from .selfcheck import next_pow2, once_per_device, triton_can_run


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def rotary_kernel(
        x_ptr, cos_ptr, sin_ptr, out_ptr,
        stride_xt, stride_xh, stride_ct, stride_ot, stride_oh,
        H, SIGN: tl.constexpr, HP: tl.constexpr, R: tl.constexpr, P: tl.constexpr, PP: tl.constexpr,
    ):  # fmt: skip
        t = tl.program_id(0).to(tl.int64)
        h = tl.arange(0, HP)[:, None]
        i = tl.arange(0, R)[None, :]
        keep = h < H
        c = tl.load(cos_ptr + t * stride_ct + i).to(tl.float32)
        s = tl.load(sin_ptr + t * stride_ct + i).to(tl.float32) * SIGN
        src = x_ptr + t * stride_xt + h * stride_xh
        dst = out_ptr + t * stride_ot + h * stride_oh
        x0 = tl.load(src + 2 * i, mask=keep, other=0.0).to(tl.float32)
        x1 = tl.load(src + 2 * i + 1, mask=keep, other=0.0).to(tl.float32)
        tl.store(dst + 2 * i, (x0 * c - x1 * s).to(out_ptr.dtype.element_ty), mask=keep)
        tl.store(dst + 2 * i + 1, (x1 * c + x0 * s).to(out_ptr.dtype.element_ty), mask=keep)
        if P > 0:
            j = 2 * R + tl.arange(0, PP)[None, :]
            keep_j = keep & (j < 2 * R + P)
            tl.store(dst + j, tl.load(src + j, mask=keep_j, other=0.0), mask=keep_j)

    return rotary_kernel


def _launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    b, t, h, d = x.shape
    r = cos.shape[-1]
    out = torch.empty((b, t, h, d), device=x.device, dtype=x.dtype)
    if b * t:
        _kernels()[(b * t,)](
            x, cos, sin, out,
            x.stride(1), x.stride(2), cos.stride(1), out.stride(1), out.stride(2),
            h, SIGN=sign, HP=next_pow2(h), R=r, P=d - 2 * r, PP=next_pow2(max(1, d - 2 * r)),
        )  # fmt: skip
    return out


def _fits(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """[B, T, H, d] with rows t = (b, t) evenly strided and a unit last stride; cos, sin [B, T, 1, r]."""
    if x.dim() != 4 or cos.dim() != 4 or cos.shape != sin.shape or cos.stride() != sin.stride():
        return False
    b, t, _, d = x.shape
    r = cos.shape[-1]
    if cos.shape[:2] != (b, t) or cos.shape[2] != 1 or 2 * r > d or r != next_pow2(r):
        return False
    if x.stride(-1) != 1 or cos.stride(-1) != 1:
        return False
    return (b == 1 or x.stride(0) == t * x.stride(1)) and (b == 1 or cos.stride(0) == t * cos.stride(1))


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _launch(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        if dy.stride(-1) != 1 or (dy.shape[0] > 1 and dy.stride(0) != dy.shape[1] * dy.stride(1)):
            dy = dy.contiguous()
        return _launch(dy, cos, sin, -1.0), None, None


@once_per_device
def triton_works(device: str) -> bool:
    """Triton importable and the kernels match the eager rotation (values and gradients) on `device`."""
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        base = torch.randn(1, 19, 3 * 32 + 8, device=device, generator=gen)
        x = base[..., 8:104].unflatten(-1, (3, 32)).requires_grad_()  # a strided view, as q is of qkv
        angles = torch.arange(19, device=device).float()[None, :, None, None] * torch.rand(8, device=device)
        cos, sin = angles.cos(), angles.sin()
        dy = torch.randn(1, 19, 3, 32, device=device, generator=gen)
        out = _Rotary.apply(x, cos, sin)
        (dx,) = torch.autograd.grad(out, x, dy)
        ref = rotary_eager(x, cos, sin)
        (ref_dx,) = torch.autograd.grad(ref, x, dy)
        pairs = ((out.detach(), ref.detach()), (dx, ref_dx))
        return all(float((a - b).norm() / b.norm()) < 1e-5 for a, b in pairs)
    except Exception:  # no Triton, a Triton that cannot build here, or wrong values: stay eager
        return False


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, fallback=rotary_eager) -> torch.Tensor:
    """x rotated like elementwise.rotary; the Triton kernels where they apply, else `fallback`."""
    usable = triton_can_run(x)
    if usable and x.dtype == cos.dtype and _fits(x, cos, sin) and triton_works(str(x.device)):
        return _Rotary.apply(x, cos, sin)
    return fallback(x, cos, sin)
