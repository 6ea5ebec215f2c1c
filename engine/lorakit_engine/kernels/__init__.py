"""lorakit's fast paths for training: padding-free packing, fused output projection + cross-entropy, fused
elementwise ops, low-memory checkpointing. The training loop's side (lorakit_engine.batches builds the rows
from prepared data):

    from lorakit_engine.kernels import configure_fast_path, pack_batch

    configure_fast_path(model, compile=True, fused_lora=True)        # once, after peft wraps the model
    for samples in micro_batches:                                     # (input_ids, labels) pairs
        batch = pack_batch(samples).to(device)                        # one row, cu_seqlens, positions
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
from .packing import PackedBatch, pack_batch

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
    embedding_on_host: bool | None = None,
) -> FastOptions:
    """Set the fast-path switches of a native model (arguments left None keep their value).

    checkpointing: "none" (fastest, most memory), "full" (each layer recomputed in backward), "low_memory"
    (full, plus the MLP recomputed 1,024 tokens at a time, the loss in 512-row chunks and the frozen
    token table in host memory: one 8,192-token ChatGLM3-6B sample within 14 GiB, bench/RESULTS.md).
    embedding_on_host: keep the frozen input embedding table in (pinned) host memory, look tokens up there
    (set by "low_memory" unless given; False brings the table back to the model's device).
    checkpoint_attention=True also recomputes each layer's attention half a second time (measured: 17%
    slower, no lower peak; off by default).
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
            if embedding_on_host is None:
                embedding_on_host = True
        elif mlp_chunk_tokens is None:
            options.mlp_chunk_tokens = None
    if checkpoint_attention is not None:
        options.checkpoint_attention = checkpoint_attention
    if embedding_on_host is not None:
        _place_embedding(model, embedding_on_host)
    if fused_lora is not None:
        fuse_lora(model, fused_lora)
        options.fused_lora = fused_lora
    for key, value in updates.items():
        if value is not None:
            setattr(options, key, value)
    return options


def _place_embedding(model: nn.Module, on_host: bool) -> None:
    """Move the frozen input embedding table to pinned host memory, or back to the output layer's device."""
    table = model.get_input_embeddings().weight
    if table.requires_grad:
        raise ValueError("embedding_on_host needs a frozen input embedding (it is trained here)")
    device = model.get_output_embeddings().weight.device
    if on_host and table.device.type != "cpu":
        host = table.data.to("cpu")
        table.data = host.pin_memory() if device.type == "cuda" else host
    elif not on_host and table.device != device:
        table.data = table.data.to(device)
