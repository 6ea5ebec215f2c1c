"""lorakit's fast paths for training: padding-free packing, fused output projection + cross-entropy, fused
elementwise ops, low-memory checkpointing. The training loop's side:

    from lorakit_engine.kernels import configure_fast_path, pack_batch, plan_packs

    configure_fast_path(model, compile=True, fused_lora=True)        # once, after peft wraps the model
    for idx in plan_packs(lengths, max_tokens=16384):                 # sample indices per micro-batch
        batch = pack_batch([samples[i] for i in idx]).to(device)      # one row, cu_seqlens, positions
        out = model(**batch.model_inputs(), loss_reduction="sum")     # out.loss = Σ CE, out.n_tokens
        (out.loss / window_trained_tokens).backward()                 # normalise over the accumulation window

`batch.n_tokens` (host int) equals `out.n_tokens` (device tensor), so the window's token count is known before
the forward. With `loss_reduction="sum"` no logits are returned (`out.logits` is None) while training.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .attention import BACKENDS, PackedAttention, make_packed_attention, packed_attention, varlen_available
from .lora import fuse_lora, lora_linear
from .loss import linear_cross_entropy, shift_labels
from .options import CHECKPOINTING, FastOptions
from .packing import PackedBatch, pack_batch, plan_packs

__all__ = [
    "BACKENDS",
    "CHECKPOINTING",
    "FastOptions",
    "PackedAttention",
    "PackedBatch",
    "configure_fast_path",
    "fast_options",
    "fuse_lora",
    "linear_cross_entropy",
    "lora_linear",
    "make_packed_attention",
    "pack_batch",
    "packed_attention",
    "plan_packs",
    "shift_labels",
    "varlen_available",
]


def fast_options(model: nn.Module) -> FastOptions | None:
    """The FastOptions of a native model, also under peft's wrappers; None for models without fast paths."""
    for module in model.modules():
        options = getattr(module, "fast", None)
        if isinstance(options, FastOptions):
            return options
    return None


def configure_fast_path(
    model: nn.Module,
    *,
    compile: bool | None = None,
    attention: str | None = None,
    checkpointing: str | None = None,
    loss_chunk_rows: int | None = None,
    mlp_chunk_tokens: int | None = None,
    fused_lora: bool | None = None,
    checkpoint_attention: bool | None = None,
) -> FastOptions:
    """Set the fast-path switches of a native model (arguments left None keep their value).

    checkpointing: "none" (fastest, most memory), "full" (each layer recomputed in backward), "low_memory"
    (full, plus the MLP recomputed 1,024 tokens at a time and the loss in 512-row chunks: one 8,192-token
    ChatGLM3-6B sample in 14.2 GiB on an H200, bench/RESULTS.md). checkpoint_attention=True also recomputes
    each layer's attention half a second time (measured: 17% slower, no lower peak; off by default).
    fused_lora: peft's LoRA Linear layers take kernels.lora's fused forward/backward (call again after
    adding adapters)."""
    options = fast_options(model)
    if options is None:
        raise TypeError(f"{type(model).__name__} has no lorakit fast path")
    updates: dict[str, Any] = {
        "compile": compile,
        "attention": attention,
        "loss_chunk_rows": loss_chunk_rows,
        "mlp_chunk_tokens": mlp_chunk_tokens,
    }
    if attention is not None and attention not in BACKENDS:
        raise ValueError(f"attention {attention!r}; expected one of {', '.join(BACKENDS)}")
    if checkpointing is not None:
        if checkpointing not in CHECKPOINTING:
            raise ValueError(f"checkpointing {checkpointing!r}; expected one of {', '.join(CHECKPOINTING)}")
        if checkpointing == "none":
            model.gradient_checkpointing_disable()
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        options.checkpoint_attention = False
        if checkpointing == "low_memory":
            updates["mlp_chunk_tokens"] = mlp_chunk_tokens or 1024
            updates["loss_chunk_rows"] = loss_chunk_rows or 512
        elif mlp_chunk_tokens is None:
            options.mlp_chunk_tokens = None
    if checkpoint_attention is not None:
        options.checkpoint_attention = checkpoint_attention
    if fused_lora is not None:
        fuse_lora(model, fused_lora)
        options.fused_lora = fused_lora
    for key, value in updates.items():
        if value is not None:
            setattr(options, key, value)
    return options
