"""RMSNorm with a frozen weight as two Triton kernels: y = x · rsqrt(mean(x²) + eps) · w, and its input
gradient. LoRA never trains the norms, so the weight gradient (a reduction over all tokens) is not computed.

One program per token row (the whole hidden dim in one block), arithmetic in float32, one rounding at the
store: the same math as elementwise.rms_norm. Forward saves x only; backward recomputes rsqrt from it.

Why not torch.compile, which fuses this as well: a compiled function inside non-reentrant activation
checkpointing may save a different set of tensors in the recomputation than in the original forward when
Inductor recompiles (new shapes) during the forward, and backward then fails with torch's CheckpointError
("A different number of tensors was saved", pytorch/pytorch#144035). It happened in the low-memory setting
on an H200. A plain autograd Function saves the same tensor every time.

`rms_norm(x, weight, eps)` takes the kernels on CUDA (or in Triton's CPU interpreter) when the weight is
frozen and Triton passes a one-time check, else returns None and the caller takes the eager or compiled form.
"""

from __future__ import annotations

import functools

import torch

from .elementwise import rms_norm as rms_norm_eager
from .selfcheck import next_pow2, once_per_device, rows, triton_can_run

MAX_BLOCK = 16384


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_fwd(x_ptr, w_ptr, y_ptr, n, stride_x, stride_y, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        keep = cols < n
        x = tl.load(x_ptr + row * stride_x + cols, mask=keep, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=keep, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n + eps)
        tl.store(y_ptr + row * stride_y + cols, (w * (x * rstd)).to(y_ptr.dtype.element_ty), mask=keep)

    @triton.jit
    def rms_norm_bwd(
        x_ptr, w_ptr, dy_ptr, dx_ptr, n, stride_x, stride_dy, stride_dx, eps, BLOCK: tl.constexpr
    ):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        keep = cols < n
        x = tl.load(x_ptr + row * stride_x + cols, mask=keep, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=keep, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row * stride_dy + cols, mask=keep, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n + eps)
        xhat = x * rstd
        g = dy * w
        dx = rstd * (g - xhat * (tl.sum(g * xhat, axis=0) / n))
        tl.store(dx_ptr + row * stride_dx + cols, dx.to(dx_ptr.dtype.element_ty), mask=keep)

    return rms_norm_fwd, rms_norm_bwd


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        fwd, _ = _kernels()
        x2 = rows(x)
        w = weight.contiguous()
        y = torch.empty_like(x2)
        n = x2.shape[1]
        if x2.shape[0]:
            fwd[(x2.shape[0],)](x2, w, y, n, x2.stride(0), y.stride(0), eps, BLOCK=next_pow2(n))
        ctx.save_for_backward(x2, w)
        ctx.eps = eps
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        _, bwd = _kernels()
        x2, w = ctx.saved_tensors
        dy2 = rows(dy)
        dx = torch.empty_like(x2)
        n = x2.shape[1]
        if x2.shape[0]:
            bwd[(x2.shape[0],)](
                x2, w, dy2, dx, n, x2.stride(0), dy2.stride(0), dx.stride(0), ctx.eps, BLOCK=next_pow2(n)
            )
        return dx.view(ctx.shape), None, None


@once_per_device
def triton_works(device: str) -> bool:
    """Triton importable, and the kernels give the eager function's values and input gradients on `device`
    (checked once, on a ragged width): else the caller's fallback, instead of a failure mid-training."""
    try:
        _kernels()
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(37, 1100, device=device, generator=gen).to(torch.bfloat16).requires_grad_()
        w = torch.rand(1100, device=device, generator=gen).to(torch.bfloat16) + 0.5
        dy = torch.randn(37, 1100, device=device, generator=gen).to(torch.bfloat16)
        out = _RMSNorm.apply(x, w, 1e-5)
        (dx,) = torch.autograd.grad(out, x, dy)
        x32 = x.detach().float().requires_grad_()
        ref = rms_norm_eager(x32, w.float(), 1e-5)
        (ref_dx,) = torch.autograd.grad(ref, x32, dy.float())
        pairs = ((out.detach(), ref.detach()), (dx, ref_dx))
        return all(float((a.float() - r).norm() / r.norm()) < 1e-2 for a, r in pairs)
    except Exception:  # no Triton, a Triton that cannot build here, or wrong values: the caller's fallback
        return False


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    """The Triton RMSNorm where it applies (frozen weight, CUDA or interpreter, width ≤ 16,384), else None."""
    usable = triton_can_run(x) and not weight.requires_grad and x.shape[-1] <= MAX_BLOCK
    if usable and weight.shape == x.shape[-1:] and triton_works(str(x.device)):
        return _RMSNorm.apply(x, weight, eps)
    return None
