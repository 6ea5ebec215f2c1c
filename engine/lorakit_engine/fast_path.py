"""How the model trains, decided once after LoRA is attached: on the fast path or in the padded loop.

Native models (ChatGLM3) train through lorakit_engine.kernels: each micro-batch packed into one row without
padding (varlen attention; on the CPU, SDPA with a block mask), the loss fused with the output projection,
fused LoRA, checkpointing by the model's own layers. Every other model takes padded micro-batches, with
transformers' gradient checkpointing where it has it.
"""

from __future__ import annotations

import os

import torch

from .parallel import Single
from .plan import Plan
from .protocol import Emit, log


def wants_fast_path(model, device: torch.device) -> bool:
    """LORAKIT_FAST=1 forces the fast path (also on the CPU), LORAKIT_FAST=0 turns it off; by default native
    models on CUDA take it."""
    from .kernels import fast_options

    want = os.environ.get("LORAKIT_FAST", "auto")
    return not (want == "0" or fast_options(model) is None or (want == "auto" and device.type != "cuda"))


def prepare_training(
    model, plan: Plan, parallel: Single, device: torch.device, dtype: torch.dtype, emit: Emit
) -> bool:
    """Set the model up for training; whether micro-batches are packed rows (the fast path)."""
    t = plan.train
    if wants_fast_path(model, device):
        from .kernels import configure_fast_path
        from .kernels.attention import describe_backend
        from .kernels.elementwise import compile_works

        options = configure_fast_path(
            model,
            compile=device.type == "cuda" and compile_works(str(device)),
            fused_lora=True,
            checkpointing=t.checkpointing,
            # "low_memory" keeps the token table in host memory unless FSDP2 places every weight itself
            embedding_on_host=False if parallel.shards_the_base else None,
        )
        log(
            emit,
            "fast path: packed rows without padding, fused loss and LoRA (lorakit_engine.kernels); "
            f"checkpointing: {t.checkpointing}; attention: "
            f"{describe_backend(device, dtype, options.attention)}",
        )
        return True
    if t.pack_tokens:
        log(
            emit,
            f"train.pack_tokens: each micro-batch is a row of samples up to {t.pack_tokens} tokens, "
            "padded to its longest sample here; packing is padding-free only on the fast path (ChatGLM3 on "
            "CUDA)",
        )
    if t.gradient_checkpointing:
        if getattr(model.get_base_model(), "supports_gradient_checkpointing", False):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
            if t.checkpointing == "low_memory":
                log(
                    emit,
                    "gradient_checkpointing: low_memory is plain layer checkpointing here (its MLP and loss "
                    "chunks and host token table need lorakit's native ChatGLM3 kernels)",
                )
        else:
            log(
                emit,
                f"{plan.model.model_type} does not support gradient checkpointing; it stays off",
                "warning",
            )
    return False
