"""The model families lorakit supports, keyed by config.json `model_type`: how each is built, where LoRA
goes by default, how to count its layers, and the pitfalls the doctor warns about. No torch at import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Family:
    model_type: str
    builder: Literal["native", "transformers"]
    lora_targets: tuple[str, ...]  # leaf module names, as peft's `target_modules`
    layer_count_key: str  # the config.json key holding the number of decoder layers
    pitfalls: tuple[str, ...] = ()


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family(
            "chatglm",
            "native",
            ("query_key_value",),
            "num_layers",
            (
                "config.json auto_map points at remote code: lorakit builds the model natively",
                "role tokens written as text ('<|user|>') are not special tokens: insert them by id",
                "float16 base with newer peft drove the loss to 0 in copies of the Self-LLM recipe: "
                "keep adapter weights in float32 or load the base in bfloat16",
                "padded_vocab_size (65024) exceeds the tokenizer (64798 ids): extra logits are never targets",
                "glm-4-9b-chat (remote-code release) also says chatglm: same blocks, rope_ratio 500, "
                "another tokenizer and template",
                "first-generation ChatGLM-6B, -int4/-int8 quantized folders and P-tuning (pre_seq_len) "
                "are not supported",
            ),
        ),
        Family(
            "llama",
            "transformers",
            _ATTENTION,
            "num_hidden_layers",
            (
                "the tokenizer has no pad token: pad with eos and mask padding out of the labels",
                "Llama-3 chat turns end with <|eot_id|>, not the tokenizer's eos: stop on both",
            ),
        ),
        Family(
            "qwen2",
            "transformers",
            _ATTENTION,
            "num_hidden_layers",
            (
                "small Qwen2/2.5 models tie the output layer to the embedding (tie_word_embeddings)",
                "chat turns end with <|im_end|>; the base models' eos is <|endoftext|>",
            ),
        ),
        Family(
            "qwen3",
            "transformers",
            _ATTENTION,
            "num_hidden_layers",
            (
                "the chat template adds <think> blocks; data without them changes thinking behaviour",
                "chat turns end with <|im_end|>",
            ),
        ),
        Family(
            "mistral",
            "transformers",
            _ATTENTION,
            "num_hidden_layers",
            (
                "the tokenizer has no pad token: pad with eos and mask padding out of the labels",
                "the [INST] template of v0.1 has no system role",
            ),
        ),
        Family(
            "glm",
            "transformers",
            _ATTENTION,
            "num_hidden_layers",
            (
                "transformers-format GLM-4 (glm-4-9b-chat-hf): q/k/v are separate, unlike chatglm's "
                "query_key_value, so adapters do not transfer between the two releases",
                "eos is a list (151329, 151336, 151338): stop on all of them",
            ),
        ),
        Family(
            "glm4",
            "transformers",
            _ATTENTION,
            "num_hidden_layers",
            (
                "GLM-4-0414 models: extra post_self_attn_layernorm / post_mlp_layernorm in every layer",
                "eos is a list: stop on all of its ids",
            ),
        ),
    )
}


def supported_model_types() -> list[str]:
    return list(FAMILIES)


def get_family(model_type: str | None) -> Family:
    family = FAMILIES.get(model_type or "")
    if family is None:
        from .checkpoint import load_error

        raise load_error(
            f"model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)}",
            hint="Point model at a checkpoint of a supported family (config.json `model_type`).",
        )
    return family


def layer_count(config: dict) -> int:
    return int(config[get_family(config.get("model_type")).layer_count_key])
