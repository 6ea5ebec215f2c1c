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

The config is read in models/chatglm_config.py, the layers live in models/chatglm_layers.py; this module
holds the whole model: loading, forward, loss and the transformers surface peft needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..kernels.attention import make_packed_attention
from ..kernels.loss import linear_cross_entropy, shift_labels
from ..kernels.options import FastOptions
from ..kernels.packing import positions_from_cu_seqlens
from .chatglm_config import ChatGLMConfig
from .chatglm_layers import ChatGLMModel, KVCache, sdpa_mask
from .chatglm_layers import RotaryEmbedding as RotaryEmbedding  # imported from here by callers
from .checkpoint import find_weights, load_weights, read_config

INV_FREQ = "transformer.rotary_pos_emb.inv_freq"  # saved by the official code, recomputed here


@dataclass
class ChatGLMOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast plus `n_tokens`: the trained tokens the loss covers (0-d tensor)."""

    n_tokens: torch.Tensor | None = None


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
            mask, is_causal = sdpa_mask(attention_mask, t, past_len, x.device)
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
