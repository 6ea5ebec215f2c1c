"""ChatGLM3 (`model_type` "chatglm"), built natively under the checkpoint's own module names.

The official checkpoints ship their model as remote code, which lorakit never runs. This module computes the
same function under the same names, so an adapter trained on `query_key_value` here loads unchanged with the
official code and peft. Facts: shared/design/CHATGLM3.md. One layer, pre-norm:

    q | k | v = rows of query_key_value(norm(x))        q: heads × d, k and v: groups × d
    x = x + dense(attention(rope(q), rope(k), v))      head h reads group h // (heads / groups), causal
    a | b     = halves of dense_h_to_4h(norm(x))
    x = x + dense_4h_to_h(silu(a) * b)

rope rotates the first half of each head's dims in adjacent pairs (2i, 2i+1); the rest pass through.
Attention inputs are batch-first here ([batch, heads, time, d]); the official code is time-first, which
changes no weight.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..kernels.attention import PackedAttention, make_packed_attention, packed_attention
from ..kernels.elementwise import op
from ..kernels.loss import linear_cross_entropy, shift_labels
from ..kernels.options import FastOptions
from ..kernels.packing import positions_from_cu_seqlens
from ..kernels.rmsnorm import rms_norm as triton_rms_norm
from ..kernels.rotary import rotary as triton_rotary
from ..kernels.swiglu import swiglu as triton_swiglu
from .checkpoint import find_weights, load_error, load_weights, read_config

INV_FREQ = "transformer.rotary_pos_emb.inv_freq"  # saved by the official code, recomputed here
_REQUIRED = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "kv_channels")

KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (key, value): [batch, groups, time, d]


@dataclass
class ChatGLMOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast plus `n_tokens`: the trained tokens the loss covers (0-d tensor)."""

    n_tokens: torch.Tensor | None = None


@dataclass
class ChatGLMConfig:
    """config.json of a ChatGLM2/3 checkpoint (defaults: ChatGLM3-6B). Keys the model does not use
    (auto_map, torch_dtype, …) are kept in `extra` and readable as attributes, so `to_dict()` round-trips."""

    num_layers: int = 28
    hidden_size: int = 4096
    ffn_hidden_size: int = 13696
    num_attention_heads: int = 32
    kv_channels: int = 128
    multi_query_attention: bool = True
    multi_query_group_num: int = 2
    padded_vocab_size: int = 65024
    seq_length: int = 8192
    layernorm_epsilon: float = 1e-5
    rmsnorm: bool = True
    post_layer_norm: bool = True
    add_bias_linear: bool = False
    add_qkv_bias: bool = True
    apply_residual_connection_post_layernorm: bool = False
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    rope_ratio: float = 1.0
    original_rope: bool = True
    tie_word_embeddings: bool = False
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0
    model_type: str = "chatglm"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    # Read by peft and transformers utilities; not config.json keys.
    is_encoder_decoder = False
    return_dict = True
    use_return_dict = True

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path | str | None = None) -> ChatGLMConfig:
        _reject_unsupported(raw, path)
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise load_error(f"config.json lacks {', '.join(missing)} for a ChatGLM model", path)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in raw.items() if k in names}
        if known.get("rope_ratio") is None:
            known.pop("rope_ratio", None)
        return cls(**known, extra={k: v for k, v in raw.items() if k not in names})

    @classmethod
    def from_pretrained(cls, path: Path | str) -> ChatGLMConfig:
        """From a local folder only. peft's save_pretrained calls it on base_model_name_or_path to see
        whether the vocabulary changed (and then would save the embeddings too)."""
        return cls.from_dict(read_config(path), Path(path) / "config.json")

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update((f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "extra")
        return out

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict()

    def __getattr__(self, name: str) -> Any:
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def get_text_config(self, *args: Any, **kwargs: Any) -> ChatGLMConfig:
        return self

    @property
    def vocab_size(self) -> int:
        return self.padded_vocab_size

    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers

    @property
    def head_dim(self) -> int:
        return self.kv_channels

    @property
    def num_key_value_heads(self) -> int:
        return self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads


def _reject_unsupported(raw: dict[str, Any], path: Path | str | None) -> None:
    def fail(what: str, hint: str) -> None:
        raise load_error(what, path, hint)

    if "position_encoding_2d" in raw or "inner_hidden_size" in raw:
        fail(
            "this is a first-generation ChatGLM-6B checkpoint (2D positions, GLM-130B layout), "
            "a different architecture from ChatGLM2/3",
            "Use ChatGLM3-6B (THUDM/chatglm3-6b) or a transformers-format GLM-4.",
        )
    if raw.get("quantization_bit"):
        fail(
            f"the weights are quantized to {raw['quantization_bit']} bits by the checkpoint's own code",
            "Use the float16 checkpoint (chatglm3-6b, not -int4/-int8).",
        )
    if raw.get("pre_seq_len"):
        fail(
            "the config enables P-tuning v2 prefixes (pre_seq_len)",
            "Set pre_seq_len to null in config.json: lorakit trains LoRA adapters.",
        )
    if raw.get("original_rope") is False:
        fail(
            "original_rope is false: only the original rotary embedding is implemented",
            "Use a checkpoint with the original rotary embedding (ChatGLM2/3).",
        )


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


class ChatGLMForConditionalGeneration(nn.Module):
    """The whole model. Enough of the transformers model surface (config, embeddings accessors,
    prepare_inputs_for_generation, gradient checkpointing) for peft to wrap it as CAUSAL_LM."""

    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.config = config
        self.fast = FastOptions()  # switches shared by every layer: kernels.configure_fast_path
        self.transformer = ChatGLMModel(config, self.fast)
        self.name_or_path = ""  # peft records it as base_model_name_or_path

    @classmethod
    def from_pretrained(
        cls, path: Path | str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> ChatGLMForConditionalGeneration:
        """Build from a local folder in the official layout; nothing in the folder is executed."""
        folder = Path(path)
        config = ChatGLMConfig.from_dict(read_config(folder), folder / "config.json")
        weights = find_weights(folder)
        with torch.device("meta"):
            model = cls(config)
        load_weights(model, weights, dtype=dtype, device=device, ignore=lambda name: name == INV_FREQ)
        model.name_or_path = str(folder)
        return model.eval()

    # -- forward -------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        loss_reduction: str = "mean",
        return_logits: bool | None = None,
        **kwargs: Any,
    ) -> ChatGLMOutput | tuple:
        """`labels` line up with `input_ids` (shifted here, -100 ignored); `attention_mask` is 1 for real
        tokens, 0 for padding, and spans the cache plus the new tokens. Positions default to
        past_len, past_len+1, …; pass `position_ids` for anything else (left padding).

        Packed rows (kernels.pack_batch): input [1, T] holding several samples with boundaries `cu_seqlens`
        (int32 [n + 1]); each sample attends only to itself and positions restart per sample unless
        `position_ids` says otherwise. No attention_mask and no cache with them.

        Loss: `loss_reduction` "mean" (over trained tokens, or the sum over `num_items_in_batch` when given)
        or "sum"; `n_tokens` counts the trained tokens. Logits are returned unless `return_logits` is False,
        or it is None and there are labels with gradients on: then the output projection and cross-entropy
        run fused in chunks (kernels.linear_cross_entropy) and no logits tensor is ever made."""
        unknown = [k for k, v in kwargs.items() if v is not None and v is not False]
        if unknown:  # peft passes output_attentions=None etc.; anything real would be silently wrong
            raise TypeError(f"ChatGLM forward got unsupported arguments: {', '.join(unknown)}")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction {loss_reduction!r}; expected 'mean' or 'sum'")
        x = self.transformer.embedding(input_ids) if inputs_embeds is None else inputs_embeds
        b, t = x.shape[:2]
        past_len = past_key_values[0][0].shape[2] if past_key_values else 0
        packed = None
        if cu_seqlens is not None:
            if b != 1 or past_len or attention_mask is not None or use_cache:
                raise ValueError("packed rows (cu_seqlens) take one row [1, T], no attention_mask, no cache")
            if position_ids is None:
                position_ids = positions_from_cu_seqlens(cu_seqlens, t)
            packed = make_packed_attention(cu_seqlens, max_seqlen, t, self.fast.attention, x.dtype)
            mask, is_causal = None, False
        else:
            if position_ids is None:
                position_ids = torch.arange(past_len, past_len + t, device=x.device).expand(b, t)
            mask, is_causal = _attention_mask(attention_mask, t, past_len, x.device)
        cos, sin = self.transformer.rotary_pos_emb(position_ids, x.dtype)
        hidden, presents = self.transformer.encoder(
            x, cos, sin, mask, is_causal, past_key_values or None, packed
        )
        head = self.transformer.output_layer
        if return_logits is None:
            return_logits = labels is None or not torch.is_grad_enabled()
        if not return_logits and labels is not None and type(head) is nn.Linear and head.bias is None:
            logits = None
            loss, n_tokens = linear_cross_entropy(
                hidden, head.weight, shift_labels(labels), chunk_rows=self.fast.loss_chunk_rows
            )
            loss = _reduce(loss, n_tokens, loss_reduction, num_items_in_batch)
        else:
            if logits_to_keep and labels is None:
                hidden = hidden[:, -logits_to_keep:]
            logits = head(hidden)
            loss = n_tokens = None
            if labels is not None:
                loss = causal_lm_loss(logits, labels, reduction="sum")
                n_tokens = (labels[:, 1:] != -100).sum()
                loss = _reduce(loss, n_tokens, loss_reduction, num_items_in_batch)
            if not return_logits:
                logits = None
        out = ChatGLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=presents if use_cache else None,
            n_tokens=n_tokens,
        )
        return out if return_dict is not False else out.to_tuple()

    # -- generation ----------------------------------------------------------------------------------------

    def prepare_inputs_for_generation(
        self, input_ids, past_key_values=None, attention_mask=None, position_ids=None, **kwargs
    ) -> dict[str, Any]:
        if past_key_values:
            input_ids = input_ids[:, -1:]
            position_ids = position_ids[:, -1:] if position_ids is not None else None
        return {
            "input_ids": input_ids,
            "past_key_values": past_key_values,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": True,
        }

    @torch.no_grad()
    def generate_greedy(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        stop_ids: list[int] | tuple[int, ...] = (),
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Greedy decoding with a KV cache: the new tokens [batch, n], each row ending at its first stop id
        (kept) and padded after it with pad_token_id. Prompts in a batch must be LEFT-padded; positions then
        start at 0 on each row's first real token, as the official tokenizer pads them."""
        b = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        pad = self.config.pad_token_id or 0
        stop = torch.tensor(list(stop_ids), dtype=torch.long, device=input_ids.device)
        finished = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        out = self(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
        )
        next_pos = position_ids[:, -1:] + 1
        tokens = []
        for step in range(max_new_tokens):
            token = out.logits[:, -1].argmax(-1).masked_fill(finished, pad)
            tokens.append(token)
            finished |= torch.isin(token, stop)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            attention_mask = torch.cat((attention_mask, torch.ones_like(attention_mask[:, :1])), dim=1)
            out = self(
                token[:, None],
                attention_mask=attention_mask,
                position_ids=next_pos,
                past_key_values=out.past_key_values,
                use_cache=True,
                logits_to_keep=1,
            )
            next_pos = next_pos + 1
        return torch.stack(tokens, dim=1) if tokens else input_ids.new_zeros(b, 0)

    # -- the transformers model surface that peft and trainers call -----------------------------------------

    @property
    def device(self) -> torch.device:
        return self.transformer.output_layer.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.output_layer.weight.dtype

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.embedding.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.embedding.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.transformer.output_layer

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.transformer.output_layer = value

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.transformer.encoder.gradient_checkpointing

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.transformer.encoder.gradient_checkpointing = True
        self.transformer.encoder.checkpoint_kwargs = {
            "use_reentrant": False,
            **(gradient_checkpointing_kwargs or {}),
        }

    def gradient_checkpointing_disable(self) -> None:
        self.transformer.encoder.gradient_checkpointing = False

    def enable_input_require_grads(self) -> None:
        """Embedding output requires grad, so reentrant checkpointing keeps a graph over frozen bases."""
        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(
            lambda module, args, output: output.requires_grad_(True)
        )

    def disable_input_require_grads(self) -> None:
        hook = getattr(self, "_require_grads_hook", None)
        if hook is not None:
            hook.remove()
            del self._require_grads_hook


def _attention_mask(
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


def _reduce(
    loss_sum: torch.Tensor,
    n_tokens: torch.Tensor,
    reduction: str,
    num_items_in_batch: int | torch.Tensor | None,
) -> torch.Tensor:
    if reduction == "sum":
        return loss_sum
    return loss_sum / (num_items_in_batch if num_items_in_batch is not None else n_tokens)


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Next-token cross entropy in float32: logits at i predict labels at i + 1; -100 is ignored. The mean
    is over trained tokens, or a sum over `num_items_in_batch` when a trainer accumulates gradients;
    `reduction="sum"` gives the plain sum."""
    logits = logits[:, :-1].float().flatten(0, 1)
    targets = labels[:, 1:].to(logits.device).flatten()
    if reduction == "sum":
        return F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets, ignore_index=-100)
    return F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum") / num_items_in_batch
