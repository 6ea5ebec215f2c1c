"""The fast-path switches a model carries (`model.fast`), shared by all its layers."""

from __future__ import annotations

from dataclasses import dataclass

CHECKPOINTING = ("none", "full", "low_memory")


@dataclass
class FastOptions:
    """compile: fused elementwise ops on CUDA: Triton kernels for SwiGLU and rotary (kernels.swiglu,
    kernels.rotary; each checked once on the device, torch.compile's fusion if the check fails) and
    torch.compile for RMSNorm; the CPU stays eager (the same function).
    attention: backend for packed rows (attention.BACKENDS). loss_chunk_rows: rows of logits computed at
    once by the fused output projection + cross-entropy. mlp_chunk_tokens: when set (training), the MLP
    runs over this many tokens at a time and is recomputed in backward, so its 2·ffn-wide intermediate
    never exists for the whole row (the low-memory setting). checkpoint_attention: in checkpointed
    layers, the attention half is recomputed once more in backward (measured: slower, no lower peak).
    fused_lora: peft's LoRA Linear layers run through kernels.lora (set by configure_fast_path, which
    patches the peft modules)."""

    compile: bool = False
    attention: str = "auto"
    loss_chunk_rows: int = 2048
    mlp_chunk_tokens: int | None = None
    checkpoint_attention: bool = False
    fused_lora: bool = False
