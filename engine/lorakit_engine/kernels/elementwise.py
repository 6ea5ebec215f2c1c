"""The model's elementwise pieces (RMSNorm, rotary, SwiGLU), eager or fused by torch.compile.

Eager, each is several kernels and keeps float32 intermediates for backward; compiled (Inductor, dynamic
shapes), each is one kernel forward and one backward and saves only its inputs. Same function either way.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .selfcheck import once_per_device


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Variance in float32, x · rsqrt(var + eps) · weight, cast back (ChatGLM's RMSNorm)."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * x32).to(x.dtype)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2i, 2i+1) of the first 2·cos.shape[-1] dims of x; cos/sin broadcast to x."""
    rot = cos.shape[-1] * 2
    x0, x1 = x[..., :rot].unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2)
    return torch.cat((rotated.to(x.dtype), x[..., rot:]), dim=-1)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(a) · b for the halves a | b of the last dim."""
    a, b = h.chunk(2, dim=-1)
    return F.silu(a) * b


_EAGER: dict[str, Callable[..., torch.Tensor]] = {"rms_norm": rms_norm, "rotary": rotary, "swiglu": swiglu}


@functools.cache
def _compiled(name: str) -> Callable[..., torch.Tensor]:
    return torch.compile(_EAGER[name], dynamic=True, fullgraph=True)


def _rounded_once(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(fn)
    def once(x: torch.Tensor, *rest):
        wide = [r.float() if isinstance(r, torch.Tensor) and r.is_floating_point() else r for r in rest]
        return fn(x.float(), *wide).to(x.dtype)

    return once


_ONCE = {name: _rounded_once(fn) for name, fn in _EAGER.items()}
_once_depth = [0]


@contextlib.contextmanager
def rounding_once():
    """Within it the eager ops compute in float32 and round once at the end, as the fused kernels (Triton,
    torch.compile) do, instead of after every product: the same function rounded another way. The adapter
    reload check runs the base both ways to measure how far rounding alone moves the logits (verify/)."""
    _once_depth[0] += 1
    try:
        yield
    finally:
        _once_depth[0] -= 1


def op(name: str, compiled: bool) -> Callable[..., torch.Tensor]:
    if compiled:
        return _compiled(name)
    return _ONCE[name] if _once_depth[0] else _EAGER[name]


@once_per_device
def compile_works(device: str) -> bool:
    """torch.compile builds and runs here (RMSNorm forward and backward on `device`, checked once): a machine
    without a working compiler toolchain then stays eager instead of failing in the first step."""
    try:
        x = torch.randn(5, 64, device=device, requires_grad=True)
        w = torch.ones(64, device=device)
        out = _compiled("rms_norm")(x, w, 1e-5)
        out.sum().backward()
        return bool(torch.allclose(out.detach(), rms_norm(x.detach(), w, 1e-5), atol=1e-4))
    except Exception:  # Inductor or Triton cannot build here: the eager functions are the same math
        return False
