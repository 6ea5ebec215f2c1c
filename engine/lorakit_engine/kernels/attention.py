"""Attention over a packed row: every sample attends causally to itself only.

Backends (`FastOptions.attention`):
    varlen  torch.nn.attention.varlen.varlen_attn (flash attention on cu_seqlens; CUDA); GQA without copies
    flex    FlexAttention with a document-causal block mask (CUDA; compiled)
    sdpa    scaled_dot_product_attention with a dense block-diagonal causal mask: the reference, and the CPU
            path (memory T², so for tests and short rows)
    auto    varlen on CUDA when torch has it, else flex on CUDA, else sdpa; sdpa also for float32 rows on CUDA
            (the flash kernels under varlen take fp16 and bf16 only: `precision: fp32` crashed there)
Tensors are [T, heads, d] (queries) and [T, groups, d] (keys, values); head h reads group h // (heads/groups).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .packing import document_ids
from .selfcheck import once_per_device

BACKENDS = ("auto", "varlen", "flex", "sdpa")


@dataclass
class PackedAttention:
    """Built once per forward and shared by every layer."""

    cu_seqlens: torch.Tensor  # int32 [n + 1]
    max_seqlen: int
    total: int
    backend: str
    mask: torch.Tensor | None = None  # sdpa: [1, 1, T, T] bool
    block_mask: Any = None  # flex


@functools.cache
def _varlen() -> tuple[Any, dict[str, Any], bool] | None:
    """(varlen_attn, causal kwargs, takes enable_gqa) or None where this torch has no usable varlen_attn."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "is_causal" in params:
        kwargs: dict[str, Any] = {"is_causal": True}
    elif "window_size" in params:
        kwargs = {"window_size": (-1, 0)}
    else:
        return None
    return varlen_attn, kwargs, "enable_gqa" in params


def varlen_native_gqa(device_index: int = 0) -> bool:
    """Whether varlen_attn shares key/value groups among query heads without copies on this torch: asked
    with enable_gqa where the signature has it, else checked once (forward and backward) against expanded
    groups, since the flash kernels underneath accept fewer key/value heads."""
    found = _varlen()
    if found is None:
        return False
    return True if found[2] else _gqa_matches_expanded(f"cuda:{device_index}")


@once_per_device
def _gqa_matches_expanded(device: str) -> bool:
    fn, kwargs, _ = _varlen()
    try:
        g = torch.Generator(device=device).manual_seed(0)

        def make(h: int) -> torch.Tensor:
            shape, dev = (96, h, 64), device
            return torch.randn(shape, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()

        q, k, v = make(8), make(2), make(2)
        cu = torch.tensor([0, 40, 96], dtype=torch.int32, device=q.device)
        out = fn(q, k, v, cu, cu, 56, 56, **kwargs)
        grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        ke, ve = _repeat_kv(k, 4, dim=1), _repeat_kv(v, 4, dim=1)
        ref = fn(q, ke, ve, cu, cu, 56, 56, **kwargs)
        ref_grads = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
        pairs = [(out, ref), *zip(grads, ref_grads, strict=True)]
        return all(float((a - b).float().norm() / b.float().norm()) < 2e-2 for a, b in pairs)
    except (RuntimeError, ValueError, TypeError):
        return False


def varlen_available() -> bool:
    return torch.cuda.is_available() and _varlen() is not None


HALF = (torch.float16, torch.bfloat16)


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The backend `auto` stands for on `device` for rows of `dtype` (None: a half dtype)."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "varlen" and dtype is not None and dtype not in HALF:
        raise ValueError(f"attention backend varlen (flash) takes fp16 or bf16, not {dtype}; use sdpa")
    if backend != "auto":
        return backend
    if device.type != "cuda" or (dtype is not None and dtype not in HALF):
        return "sdpa"
    return "varlen" if _varlen() is not None else "flex"


def describe_backend(device: torch.device, dtype: torch.dtype, backend: str = "auto") -> str:
    """One line for the run's log: which kernel packed rows attend with, and why where it is a fallback."""
    chosen = resolve_backend(backend, device, dtype)
    if chosen == "sdpa" and device.type == "cuda" and dtype not in HALF and backend == "auto":
        return (
            f"sdpa with a block-diagonal mask ({str(dtype).removeprefix('torch.')} rows: flash attention "
            "takes fp16/bf16 only; slower, mask memory grows with the row length squared)"
        )
    return {"varlen": "varlen (flash)", "flex": "flex", "sdpa": "sdpa with a block-diagonal mask"}[chosen]


def make_packed_attention(
    cu_seqlens: torch.Tensor,
    max_seqlen: int | None,
    total: int,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
) -> PackedAttention:
    """`dtype`: the rows' (queries') dtype; float32 rows on CUDA take sdpa under `auto`."""
    device = cu_seqlens.device
    cu = cu_seqlens.to(torch.int32)
    if not cu.is_cuda and int(cu[-1]) != total:  # (no host sync on CUDA)
        raise ValueError(f"cu_seqlens ends at {int(cu[-1])} but the row holds {total} tokens")
    if max_seqlen is None:
        max_seqlen = int((cu[1:] - cu[:-1]).max())
    ctx = PackedAttention(cu, int(max_seqlen), total, resolve_backend(backend, device, dtype))
    if ctx.backend == "sdpa":
        doc = document_ids(cu, total)
        pos = torch.arange(total, device=device)
        ctx.mask = ((doc[:, None] == doc[None, :]) & (pos[None, :] <= pos[:, None]))[None, None]
    elif ctx.backend == "flex":
        ctx.block_mask = _flex_block_mask(document_ids(cu, total), total)
    return ctx


def _flex_block_mask(doc: torch.Tensor, total: int):
    from torch.nn.attention.flex_attention import create_block_mask

    def document_causal(b, h, q, kv):
        return (doc[q] == doc[kv]) & (kv <= q)

    return create_block_mask(document_causal, None, None, total, total, device=doc.device)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: PackedAttention) -> torch.Tensor:
    """[T, heads, d] attention output; each token sees the tokens of its own sample up to itself."""
    heads, groups = q.shape[1], k.shape[1]
    if ctx.backend == "varlen":
        found = _varlen()
        if found is None:
            raise RuntimeError("this torch has no torch.nn.attention.varlen.varlen_attn")
        fn, kwargs, takes_gqa = found
        if groups != heads:
            if takes_gqa:
                kwargs = {**kwargs, "enable_gqa": True}
            elif not varlen_native_gqa(q.device.index or 0):
                k, v = _repeat_kv(k, heads // groups, dim=1), _repeat_kv(v, heads // groups, dim=1)
        cu, m = ctx.cu_seqlens, ctx.max_seqlen
        return fn(q, k, v, cu, cu, m, m, **kwargs)
    qb, kb, vb = (x.transpose(0, 1)[None] for x in (q, k, v))  # [1, heads, T, d]
    if ctx.backend == "flex":
        out = _compiled_flex()(qb, kb, vb, block_mask=ctx.block_mask, enable_gqa=groups != heads)
    else:
        if groups != heads:  # a dense mask rules out the flash kernels that share groups without copies
            kb, vb = _repeat_kv(kb, heads // groups, dim=1), _repeat_kv(vb, heads // groups, dim=1)
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=ctx.mask)
    return out[0].transpose(0, 1)


def _repeat_kv(x: torch.Tensor, rep: int, dim: int) -> torch.Tensor:
    """Group g serves heads g·rep … g·rep + rep − 1."""
    return x.unsqueeze(dim + 1).expand(*x.shape[: dim + 1], rep, *x.shape[dim + 1 :]).flatten(dim, dim + 1)
