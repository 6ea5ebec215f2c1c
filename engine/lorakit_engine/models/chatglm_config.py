"""config.json of a ChatGLM2/3 checkpoint as the native model reads it (models/chatglm.py), and the
variants of it lorakit refuses with a located error (first-generation ChatGLM-6B, quantized, P-tuning v2,
a non-original rotary embedding)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import load_error, read_config

_REQUIRED = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "kv_channels")


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
