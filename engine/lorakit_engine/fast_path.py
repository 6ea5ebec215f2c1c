"""How the model trains, set up once after LoRA is attached: on the fast path (`train.fast_path`, decided by
the product) or in the padded loop.

On the fast path a native model (ChatGLM3) trains through lorakit_engine.kernels: each micro-batch one row
without padding (varlen attention; on the CPU, SDPA with a block mask), the loss fused with the output
projection, fused LoRA, checkpointing by the model's own layers. Otherwise micro-batches are padded, with
transformers' gradient checkpointing where the model has it.
"""

from __future__ import annotations

import torch

from .plan import Plan
from .protocol import Emit, EngineError, log


def prepare_training(
    model, plan: Plan, sharded: bool, device: torch.device, dtype: torch.dtype, emit: Emit
) -> bool:
    """Set the model up for training as the plan says; whether micro-batches are packed rows."""
    t = plan.train
    if t.fast_path:
        from .kernels import configure_fast_path, fast_options
        from .kernels.attention import describe_backend
        from .kernels.elementwise import compile_works

        if fast_options(model) is None:
            raise EngineError(
                "PLAN_INVALID",
                f"train.fast_path is true but this {plan.model.model_type} model has no fast path "
                "(lorakit_engine.kernels serves the natively built families)",
                "Set train.fast_path to auto or false for this model.",
            )
        options = configure_fast_path(
            model,
            compile=device.type == "cuda" and compile_works(str(device)),
            fused_lora=True,
            checkpointing=t.checkpointing,
            # "low_memory" keeps the token table in host memory unless FSDP2 places every weight itself
            embedding_on_host=False if sharded else None,
        )
        log(
            emit,
            "fast path: packed rows without padding, fused loss and LoRA (lorakit_engine.kernels); "
            f"checkpointing: {t.checkpointing}; "
            f"attention: {describe_backend(device, dtype, options.attention)}",
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
