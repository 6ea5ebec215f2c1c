"""The fast-path switches a model carries (`model.fast`), shared by all its layers."""

from __future__ import annotations

from dataclasses import dataclass

CHECKPOINTING = ("none", "full", "low_memory")


@dataclass
class FastOptions:
    """compile: fuse RMSNorm / rotary / SwiGLU with torch.compile (CUDA; eager on CPU is the same function).
    attention: backend for packed rows (attention.BACKENDS). loss_chunk_rows: rows of logits computed at
    once by the fused output projection + cross-entropy. mlp_chunk_tokens: when set (training), the MLP
    runs over this many tokens at a time and is recomputed in backward, so its 2·ffn-wide intermediate
    never exists for the whole row (the low-memory setting). fused_lora: peft's LoRA Linear layers run
    through kernels.lora (set by configure_fast_path, which patches the peft modules)."""

    compile: bool = False
    attention: str = "auto"
    loss_chunk_rows: int = 2048
    mlp_chunk_tokens: int | None = None
    fused_lora: bool = False
