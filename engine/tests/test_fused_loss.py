"""Fused paths compute the plain ones' function: the chunked output projection + cross-entropy gives the
summed loss and gradients of logits + F.cross_entropy, and the fused LoRA Linear those of peft's LoRA Linear
(float32, 1e-5), each alone and inside the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from lorakit_engine.kernels import (
    configure_fast_path,
    fuse_lora,
    linear_cross_entropy,
    lora_linear,
    shift_labels,
)
from lorakit_engine.models import load_model

ATOL = 1e-5
SUM_RTOL = 1e-6  # summed losses (~100s) are compared to float32 rounding of the sum


def plain(hidden, weight, targets):
    logits = (hidden @ weight.t()).float()
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("chunk_rows", [1, 5, 4096])
def test_matches_plain_cross_entropy_and_gradients(chunk_rows):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 9, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (3, 9), generator=gen)
    targets[0, :4] = -100
    targets[2, -1] = -100
    loss, n = linear_cross_entropy(hidden, weight, targets, chunk_rows=chunk_rows)
    assert int(n) == 22 and loss.dtype == torch.float32 and loss.item() > 10
    (2.5 * loss).backward()  # an upstream scale reaches both gradients
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = plain(hidden, weight, targets)
    (2.5 * ref).backward()
    torch.testing.assert_close(loss, ref, atol=ATOL, rtol=SUM_RTOL)
    torch.testing.assert_close(gh, hidden.grad, atol=ATOL, rtol=0)
    torch.testing.assert_close(gw, weight.grad, atol=ATOL, rtol=0)
    assert gh[0, :4].eq(0).all()  # ignored rows get no gradient


def test_frozen_weight_and_no_grad():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(7, 8, generator=gen, requires_grad=True)
    weight = torch.randn(30, 8, generator=gen)
    targets = torch.randint(0, 30, (7,), generator=gen)
    loss, _ = linear_cross_entropy(hidden, weight, targets, chunk_rows=3)
    loss.backward()
    assert weight.grad is None and hidden.grad is not None
    with torch.no_grad():
        again, _ = linear_cross_entropy(hidden, weight, targets, chunk_rows=2)
    torch.testing.assert_close(again, loss.detach(), atol=ATOL, rtol=0)
    nothing, n = linear_cross_entropy(hidden, weight, torch.full((7,), -100))
    assert nothing.item() == 0 and int(n) == 0


def test_bfloat16_follows_the_plain_path():
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(33, 64, generator=gen).bfloat16().requires_grad_()
    weight = (torch.randn(200, 64, generator=gen) * 0.1).bfloat16()
    targets = torch.randint(0, 200, (33,), generator=gen)
    loss, _ = linear_cross_entropy(hidden, weight, targets, chunk_rows=8)
    loss.backward()
    gh = hidden.grad.clone()
    hidden.grad = None
    ref = plain(hidden, weight, targets)
    ref.backward()
    assert gh.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(gh.float(), hidden.grad.float(), rtol=2e-2, atol=2e-3)


def test_shift_labels():
    assert shift_labels(torch.tensor([[1, 2, 3]])).tolist() == [[2, 3, -100]]


def test_model_fused_loss_equals_logits_path(fixtures_dir):
    model = load_model(fixtures_dir / "models" / "chatglm3-single")
    model = get_peft_model(model, LoraConfig(target_modules=["query_key_value"], r=4, lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.train()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, model.config.padded_vocab_size, (2, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100
    configure_fast_path(model, loss_chunk_rows=4)
    results = []
    for fused in (True, False):
        model.zero_grad(set_to_none=True)
        out = model(
            input_ids=ids, attention_mask=mask, labels=labels, loss_reduction="sum", return_logits=not fused
        )
        assert (out.logits is None) == fused
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((out.loss.detach(), int(out.n_tokens), grads))
    (fused_loss, fused_n, fused_grads), (ref_loss, ref_n, ref_grads) = results
    assert fused_n == ref_n == 13
    torch.testing.assert_close(fused_loss, ref_loss, atol=ATOL, rtol=SUM_RTOL)
    for a, b in zip(fused_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)

    mean = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(mean, fused_loss / 13, atol=ATOL, rtol=0)
    over = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=26).loss
    torch.testing.assert_close(over, fused_loss / 26, atol=ATOL, rtol=0)


# -- fused LoRA Linear ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.25])
def test_lora_linear_matches_the_plain_formula(p):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 12, generator=gen, requires_grad=True)
    w, bias = torch.randn(20, 12, generator=gen), torch.randn(20, generator=gen)
    a = torch.randn(3, 12, generator=gen, requires_grad=True)
    b = torch.randn(20, 3, generator=gen, requires_grad=True)
    dy = torch.randn(2, 5, 20, generator=gen)
    torch.manual_seed(7)
    y = lora_linear(x, w, bias, a, b, scale=1.5, p=p)
    grads = torch.autograd.grad(y, (x, a, b), dy)
    torch.manual_seed(7)  # the same dropout mask, drawn by the same kernel
    xd = torch.native_dropout(x, p, True)[0] if p else x
    ref = x @ w.t() + bias + 1.5 * (xd @ a.t()) @ b.t()
    ref_grads = torch.autograd.grad(ref, (x, a, b), dy)
    if p:
        assert xd.eq(0).any()  # the mask is live
    torch.testing.assert_close(y, ref, atol=ATOL, rtol=0)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # eval: no dropout
    torch.testing.assert_close(
        lora_linear(x, w, bias, a, b, 1.5, p, training=False),
        x @ w.t() + bias + 1.5 * (x @ a.t()) @ b.t(),
        atol=ATOL,
        rtol=0,
    )


def test_fused_lora_in_the_model_equals_peft(fixtures_dir):
    targets = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    model = load_model(fixtures_dir / "models" / "chatglm3-single")
    model = get_peft_model(model, LoraConfig(target_modules=targets, r=4, lora_alpha=8, lora_dropout=0.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.train()
    gen = torch.Generator().manual_seed(6)
    ids = torch.randint(3, model.config.padded_vocab_size, (2, 10), generator=gen)
    keys = set(model.state_dict())
    results = []
    for fused in (False, True):
        assert fuse_lora(model, fused) == (8 if fused else 0)  # 4 targets × 2 layers
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids, loss_reduction="sum")
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (plain_loss, plain_grads), (fused_loss, fused_grads) = results
    torch.testing.assert_close(fused_loss, plain_loss, atol=ATOL, rtol=SUM_RTOL)
    for got, want in zip(fused_grads, plain_grads, strict=True):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert set(model.state_dict()) == keys  # the adapter's names and layout are untouched
    assert configure_fast_path(model, fused_lora=False).fused_lora is False
    assert "forward" not in model.base_model.model.transformer.output_layer.__dict__


# -- Triton kernels (run in Triton's CPU interpreter where Triton is installed; on the GPU by bench/) ------


def test_triton_swiglu_rotary_and_rms_norm_match_eager(monkeypatch):
    import os
    import sys

    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported before TRITON_INTERPRET=1: run with it set in the environment")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when triton is first imported
    pytest.importorskip("triton")
    from lorakit_engine.kernels import rmsnorm, rotary, swiglu
    from lorakit_engine.kernels.elementwise import rms_norm as rms_norm_eager
    from lorakit_engine.kernels.elementwise import rotary as rotary_eager
    from lorakit_engine.kernels.elementwise import swiglu as swiglu_eager
    from lorakit_engine.models.chatglm import RotaryEmbedding

    gen = torch.Generator().manual_seed(8)
    h = torch.randn(3, 4, 2 * 1500, generator=gen, requires_grad=True)
    dy = torch.randn(3, 4, 1500, generator=gen)
    got = torch.autograd.grad(y := swiglu._SwiGLU.apply(h), h, dy)[0], y
    want = torch.autograd.grad(y := swiglu_eager(h), h, dy)[0], y
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)

    qkv = torch.randn(1, 30, 4 * 48, generator=gen)
    q = qkv[..., : 3 * 48].unflatten(-1, (3, 48)).detach().requires_grad_()  # strided, as in the model
    cos, sin = (
        t.transpose(1, 2) for t in RotaryEmbedding(16, 10000.0)(torch.arange(30)[None], torch.float32)
    )
    dq = torch.randn(1, 30, 3, 48, generator=gen)
    assert rotary._fits(q, cos, sin)
    got = torch.autograd.grad(y := rotary._Rotary.apply(q, cos, sin), q, dq)[0], y
    want = torch.autograd.grad(y := rotary_eager(q, cos, sin), q, dq)[0], y
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)

    x = torch.randn(2, 5, 300, generator=gen) * 3
    x = x.transpose(0, 1).requires_grad_()  # not contiguous across rows
    w = torch.rand(300, generator=gen) + 0.5
    dx = torch.randn(5, 2, 300, generator=gen)
    got = torch.autograd.grad(y := rmsnorm.rms_norm(x, w, 1e-5), x, dx)[0], y
    want = torch.autograd.grad(y := rms_norm_eager(x, w, 1e-5), x, dx)[0], y
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert rmsnorm.rms_norm(x, w.requires_grad_(), 1e-5) is None  # a trained weight: the caller's fallback


def test_kernel_self_checks_inside_activation_checkpointing_save_nothing(monkeypatch):
    """A kernel's one-time check first runs inside the model's forward, perhaps inside checkpointing: its own
    saved tensors must not count as the layer's, or the recomputation (cached answer) saves fewer and
    backward fails with torch's CheckpointError (it did on an H200, low-memory run with cold caches)."""
    import os
    import sys

    from torch.utils.checkpoint import checkpoint

    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported before TRITON_INTERPRET=1: run with it set in the environment")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    from lorakit_engine.kernels import rmsnorm, swiglu
    from lorakit_engine.kernels.elementwise import rms_norm as rms_norm_eager

    rmsnorm.triton_works.cache_clear()
    swiglu.triton_works.cache_clear()
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        assert swiglu.triton_works("cpu")
    assert packed == []

    w = torch.rand(64) + 0.5
    x = torch.randn(9, 64, requires_grad=True)
    rmsnorm.triton_works.cache_clear()  # cold: the check runs inside the checkpointed forward
    y = checkpoint(lambda t: rmsnorm.rms_norm(t, w, 1e-5) * 2, x, use_reentrant=False)
    (dx,) = torch.autograd.grad(y.square().sum(), x)
    x32 = x.detach().requires_grad_()
    (want,) = torch.autograd.grad((rms_norm_eager(x32, w, 1e-5) * 2).square().sum(), x32)
    torch.testing.assert_close(dx, want, atol=1e-4, rtol=1e-4)
