"""The layers of the native ChatGLM3 model (models/chatglm.py), under the checkpoint's own module names:
norms, rotary embedding, attention, MLP, the block, the token table, the encoder and `transformer.*`. The
math of one layer is in models/chatglm.py's docstring."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..kernels.attention import PackedAttention, packed_attention
from ..kernels.elementwise import op
from ..kernels.options import FastOptions
from ..kernels.rmsnorm import rms_norm as triton_rms_norm
from ..kernels.rotary import rotary as triton_rotary
from ..kernels.swiglu import swiglu as triton_swiglu
from .chatglm_config import ChatGLMConfig

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (key, value): [batch, groups, time, d]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, fast: FastOptions | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.fast = fast or FastOptions()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast.compile and x.is_cuda:
            # Triton (frozen weight, the LoRA case); compiled only where the weight trains
            y = triton_rms_norm(x, self.weight, self.eps)
            if y is not None:
                return y
            # compiled only for a trained weight: a compiled function inside checkpointing can fail the
            # recomputation check (kernels/rmsnorm.py), so a frozen weight without Triton stays eager
            return op("rms_norm", self.weight.requires_grad)(x, self.weight, self.eps)
        return op("rms_norm", False)(x, self.weight, self.eps)


def _norm(config: ChatGLMConfig, fast: FastOptions | None = None) -> nn.Module:
    if config.rmsnorm:
        return RMSNorm(config.hidden_size, config.layernorm_epsilon, fast)
    return nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


class RotaryEmbedding(nn.Module):
    """cos/sin for the rotated half of each head. Holds no tensor: the checkpoint's `inv_freq` buffer is
    recomputed (the official forward recomputes it too), so no meta-device or dtype rounding can stale it."""

    def __init__(self, rot_dim: int, base: float):
        super().__init__()
        self.rot_dim = rot_dim
        self.base = base

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        steps = torch.arange(0, self.rot_dim, 2, dtype=torch.float32, device=position_ids.device)
        inv_freq = 1.0 / (self.base ** (steps / self.rot_dim))
        angles = position_ids.float()[..., None] * inv_freq  # [batch, time, rot_dim / 2]
        cos, sin = angles.cos(), angles.sin()
        if dtype in (torch.float16, torch.bfloat16):  # as the official code: the table itself is rounded
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos[:, None], sin[:, None]  # broadcast over heads


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, compiled: bool = False
) -> torch.Tensor:
    """Rotate adjacent pairs (2i, 2i+1) of the first 2·cos.shape[-1] dims of x [batch, heads, time, d]
    (any layout that cos and sin broadcast to). `compiled`: the Triton kernel where the layout fits (packed
    rows), else torch.compile's fused expression; CUDA only."""
    if compiled and x.is_cuda:
        return triton_rotary(x, cos, sin, fallback=op("rotary", True))
    return op("rotary", False)(x, cos, sin)


class SelfAttention(nn.Module):
    def __init__(self, config: ChatGLMConfig, fast: FastOptions | None = None):
        super().__init__()
        self.fast = fast or FastOptions()
        self.heads = config.num_attention_heads
        self.groups = config.num_key_value_heads
        self.head_dim = config.kv_channels
        self.multi_query = config.multi_query_attention
        self.dropout = config.attention_dropout
        q, kv = self.heads * self.head_dim, self.groups * self.head_dim
        self.sizes = (q, kv, kv)
        self.query_key_value = nn.Linear(
            config.hidden_size, q + 2 * kv, bias=config.add_bias_linear or config.add_qkv_bias
        )
        self.dense = nn.Linear(q, config.hidden_size, bias=config.add_bias_linear)

    def forward(self, x, cos, sin, mask, is_causal, past, packed: PackedAttention | None = None):
        b, t, _ = x.shape
        qkv = self.query_key_value(x)
        if self.multi_query:
            q, k, v = qkv.split(self.sizes, dim=-1)
            q = q.view(b, t, self.heads, self.head_dim)
            k = k.view(b, t, self.groups, self.head_dim)
            v = v.view(b, t, self.groups, self.head_dim)
        else:  # ChatGLM2-style full attention keeps [q_h | k_h | v_h] together per head
            q, k, v = qkv.view(b, t, self.heads, 3 * self.head_dim).split(self.head_dim, dim=-1)
        compiled = self.fast.compile
        if packed is not None:  # one row [1, T]; time-major [T, heads, d] as varlen kernels want, no copies
            cos, sin = cos.transpose(1, 2), sin.transpose(1, 2)  # [1, T, 1, rot/2]
            q, k = apply_rotary(q, cos, sin, compiled), apply_rotary(k, cos, sin, compiled)
            out = packed_attention(q[0], k[0], v[0], packed)
            return self.dense(out.reshape(b, t, -1)), None
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rotary(q, cos, sin, compiled), apply_rotary(k, cos, sin, compiled)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        present = (k, v)
        rep = self.heads // self.groups
        gqa = rep > 1 and mask is None  # kernels share a group among its heads; a mask rules out flash
        if rep > 1 and not gqa:  # head h reads group h // rep
            k = k[:, :, None].expand(-1, -1, rep, -1, -1).flatten(1, 2)
            v = v[:, :, None].expand(-1, -1, rep, -1, -1).flatten(1, 2)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            enable_gqa=gqa,
        )
        return self.dense(out.transpose(1, 2).flatten(2)), present


class MLP(nn.Module):
    def __init__(self, config: ChatGLMConfig, fast: FastOptions | None = None):
        super().__init__()
        h, f = config.hidden_size, config.ffn_hidden_size
        self.fast = fast or FastOptions()
        self.dense_h_to_4h = nn.Linear(h, 2 * f, bias=config.add_bias_linear)
        self.dense_4h_to_h = nn.Linear(f, h, bias=config.add_bias_linear)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dense_h_to_4h(x)
        return self.dense_4h_to_h(
            triton_swiglu(h) if self.fast.compile and h.is_cuda else op("swiglu", False)(h)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunk = self.fast.mlp_chunk_tokens
        if not chunk or not (self.training and torch.is_grad_enabled()) or x.shape[:-1].numel() <= chunk:
            return self._mlp(x)
        # Low memory: the 2·ffn-wide intermediate exists for `chunk` tokens at a time, in backward too.
        flat = x.reshape(-1, x.shape[-1])
        parts = [
            checkpoint(self._mlp, flat[i : i + chunk], use_reentrant=False)
            for i in range(0, flat.shape[0], chunk)
        ]
        return torch.cat(parts).view(*x.shape[:-1], -1)


class GLMBlock(nn.Module):
    def __init__(self, config: ChatGLMConfig, fast: FastOptions | None = None):
        super().__init__()
        self.fast = fast = fast or FastOptions()
        self.residual_from_norm = config.apply_residual_connection_post_layernorm
        self.hidden_dropout = config.hidden_dropout
        self.input_layernorm = _norm(config, fast)
        self.self_attention = SelfAttention(config, fast)
        self.post_attention_layernorm = _norm(config, fast)
        self.mlp = MLP(config, fast)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.hidden_dropout, True) if self.hidden_dropout and self.training else x

    def _attention(self, x, cos, sin, mask, is_causal, packed):
        return self.self_attention(self.input_layernorm(x), cos, sin, mask, is_causal, None, packed)[0]

    def forward(self, x, cos, sin, mask, is_causal, past=None, packed=None):
        recompute = self.fast.checkpoint_attention and self.training and torch.is_grad_enabled()
        if recompute and past is None and not self.residual_from_norm:
            # Low memory: inside a checkpointed layer, the attention half is recomputed once more in backward,
            # so its activations never coexist with the MLP's. No cache is returned on this path.
            attn = checkpoint(self._attention, x, cos, sin, mask, is_causal, packed, use_reentrant=False)
            x, present = x + self._dropout(attn), None
        else:
            h = self.input_layernorm(x)
            attn, present = self.self_attention(h, cos, sin, mask, is_causal, past, packed)
            x = (h if self.residual_from_norm else x) + self._dropout(attn)
        h = self.post_attention_layernorm(x)
        x = (h if self.residual_from_norm else x) + self._dropout(self.mlp(h))
        return x, present


class Embedding(nn.Module):
    """The frozen token table. It may live in host memory (the low-memory setting, or
    kernels.configure_fast_path(embedding_on_host=True)): the lookup then runs on the host and only the row's
    vectors travel to the device (64 MiB for 8,192 ChatGLM3-6B tokens, against a 0.5 GiB table)."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        table = self.word_embeddings.weight
        # Called as a module either way, so hooks on it (enable_input_require_grads) still run.
        x = self.word_embeddings(input_ids.to(table.device))
        if x.device == input_ids.device:
            return x
        # A host table is frozen (_place_embedding checks): the graph starts again on the device, so backward
        # sends no gradient back to the host.
        needs_grad = x.requires_grad
        x = x.detach()
        if x.device.type == "cpu" and input_ids.device.type == "cuda":
            x = x.pin_memory()
        return x.to(input_ids.device, non_blocking=True).requires_grad_(needs_grad)


class Encoder(nn.Module):
    def __init__(self, config: ChatGLMConfig, fast: FastOptions | None = None):
        super().__init__()
        self.layers = nn.ModuleList(GLMBlock(config, fast) for _ in range(config.num_layers))
        if config.post_layer_norm:
            self.final_layernorm = _norm(config, fast)
        self.gradient_checkpointing = False
        self.checkpoint_kwargs: dict[str, Any] = {"use_reentrant": False}

    def forward(self, x, cos, sin, mask, is_causal, past: KVCache | None, packed=None):
        presents = []
        for i, layer in enumerate(self.layers):
            layer_past = past[i] if past is not None else None
            if self.gradient_checkpointing and self.training:
                x, present = checkpoint(
                    layer, x, cos, sin, mask, is_causal, layer_past, packed, **self.checkpoint_kwargs
                )
            else:
                x, present = layer(x, cos, sin, mask, is_causal, layer_past, packed)
            presents.append(present)
        if hasattr(self, "final_layernorm"):
            x = self.final_layernorm(x)
        return x, tuple(presents)


class ChatGLMModel(nn.Module):
    """`transformer.*` of the checkpoint; `output_layer` lives here as in the official layout."""

    def __init__(self, config: ChatGLMConfig, fast: FastOptions | None = None):
        super().__init__()
        self.embedding = Embedding(config)
        self.rotary_pos_emb = RotaryEmbedding(config.kv_channels // 2, 10000.0 * config.rope_ratio)
        self.encoder = Encoder(config, fast)
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)


def sdpa_mask(
    attention_mask: torch.Tensor | None, t: int, past_len: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """(boolean mask [batch, 1, t, past_len + t] or None, is_causal) for scaled_dot_product_attention."""
    total = past_len + t
    if attention_mask is not None:
        if attention_mask.shape[-1] != total:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions; "
                f"the cache plus the input are {total}"
            )
        if bool(attention_mask.all()):
            attention_mask = None
    if attention_mask is None and past_len == 0:
        return None, True
    if attention_mask is None and t == 1:
        return None, False
    q_pos = torch.arange(past_len, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = k_pos <= q_pos
    if attention_mask is not None:
        # A padding query still sees itself, so no softmax row is empty (which would give NaN).
        allowed = (allowed & attention_mask[:, None, None, :].bool()) | (k_pos == q_pos)
    return allowed.expand(attention_mask.shape[0] if attention_mask is not None else 1, 1, t, total), False
