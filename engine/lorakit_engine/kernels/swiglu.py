"""SwiGLU as two Triton kernels: silu(a) · b over the halves a | b of the last dim, forward and backward.

The MLP's [tokens, 2·ffn] intermediate is the largest tensor in a layer; this is pure memory traffic.
Forward reads it once and writes half of it; backward reads it and the output gradient once and writes its
gradient: 3.6 GB per layer at 16k tokens with ChatGLM3-6B. Measured on an H200 (bench/bench.py --micro,
forward + backward): 1.0 ms here, 3.7 ms for torch.compile's fused kernel (dynamic shapes, computing a
`cat`), 3.2 ms eager. The grid is (rows, column blocks), so no index division; a and b of a row are read by
the same program. Saved for backward: the intermediate only.

`swiglu(h)` uses the kernels on CUDA when Triton is importable and the last dim is contiguous; otherwise the
eager expression (elementwise.swiglu), which is also the reference in tests.
"""

from __future__ import annotations

import functools

import torch

from .elementwise import swiglu as swiglu_eager
from .selfcheck import once_per_device, rows, triton_can_run

BLOCK = 1024


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def swiglu_fwd(h_ptr, out_ptr, f, stride_h, stride_o, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        keep = cols < f
        a = tl.load(h_ptr + row * stride_h + cols, mask=keep, other=0.0).to(tl.float32)
        b = tl.load(h_ptr + row * stride_h + f + cols, mask=keep, other=0.0).to(tl.float32)
        y = a * tl.sigmoid(a) * b
        tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def swiglu_bwd(h_ptr, dy_ptr, dh_ptr, f, stride_h, stride_dy, stride_dh, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        keep = cols < f
        a = tl.load(h_ptr + row * stride_h + cols, mask=keep, other=0.0).to(tl.float32)
        b = tl.load(h_ptr + row * stride_h + f + cols, mask=keep, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row * stride_dy + cols, mask=keep, other=0.0).to(tl.float32)
        sig = tl.sigmoid(a)
        silu = a * sig
        da = dy * b * (sig + silu * (1.0 - sig))
        db = dy * silu
        tl.store(dh_ptr + row * stride_dh + cols, da.to(dh_ptr.dtype.element_ty), mask=keep)
        tl.store(dh_ptr + row * stride_dh + f + cols, db.to(dh_ptr.dtype.element_ty), mask=keep)

    return swiglu_fwd, swiglu_bwd


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        fwd, _ = _kernels()
        h2 = rows(h)
        f = h2.shape[1] // 2
        out = torch.empty(h2.shape[0], f, device=h.device, dtype=h.dtype)
        if h2.shape[0]:
            fwd[(h2.shape[0], (f + BLOCK - 1) // BLOCK)](h2, out, f, h2.stride(0), out.stride(0), BLOCK=BLOCK)
        ctx.save_for_backward(h2)
        ctx.shape = h.shape
        return out.view(*h.shape[:-1], f)

    @staticmethod
    def backward(ctx, dy):
        _, bwd = _kernels()
        (h2,) = ctx.saved_tensors
        f = h2.shape[1] // 2
        dy2 = rows(dy)
        dh = torch.empty_like(h2)
        if h2.shape[0]:
            grid = (h2.shape[0], (f + BLOCK - 1) // BLOCK)
            bwd[grid](h2, dy2, dh, f, h2.stride(0), dy2.stride(0), dh.stride(0), BLOCK=BLOCK)
        return dh.view(ctx.shape)


@once_per_device
def triton_works(device: str) -> bool:
    """Triton importable, and the two kernels give the eager function's values and gradients on `device`
    (checked once, on a ragged shape): else the eager path stays, instead of a failure mid-training."""
    try:
        _kernels()
        gen = torch.Generator(device=device).manual_seed(0)
        h = torch.randn(37, 2 * 1100, device=device, generator=gen).to(torch.bfloat16).requires_grad_()
        dy = torch.randn(37, 1100, device=device, generator=gen).to(torch.bfloat16)
        out = _SwiGLU.apply(h)
        (dh,) = torch.autograd.grad(out, h, dy)
        h32 = h.detach().float().requires_grad_()
        ref = swiglu_eager(h32)
        (ref_dh,) = torch.autograd.grad(ref, h32, dy.float())
        out, dh, ref = out.detach(), dh.detach(), ref.detach()
        pairs = ((out, ref), (dh, ref_dh))
        return all(float((x.float() - r.float()).norm() / r.float().norm()) < 1e-2 for x, r in pairs)
    except Exception:  # no Triton, a Triton that cannot build here, or wrong values: stay eager
        return False


def swiglu(h: torch.Tensor, use_triton: bool = True) -> torch.Tensor:
    """silu(a) · b for the halves a | b of h's last dim."""
    if use_triton and triton_can_run(h) and h.shape[-1] % 2 == 0:
        if triton_works(str(h.device)):
            return _SwiGLU.apply(h)
    return swiglu_eager(h)
