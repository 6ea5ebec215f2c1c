"""Native ChatGLM3: the same function as transformers' GLM (an independent implementation), in every file
layout; adapters in the official layout; KV cache and greedy decoding; clear errors for damaged folders."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import pytest
import torch
from fixtures.chatglm import LAYOUTS, ROPE
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from lorakit_engine.models import load_model
from lorakit_engine.models.chatglm import RotaryEmbedding
from lorakit_engine.protocol import EngineError

ATOL = 1e-5
ALL = (*LAYOUTS, ROPE)
QKV = "self_attention.query_key_value"


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


def inputs(vocab: int, padded: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows of 12 tokens; with `padded`, the second is 7 real tokens then right padding (id 0)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (2, 12), generator=gen)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 7:] = 0
        ids[1, 7:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100  # a prompt without loss
    return ids, mask, labels


@cache
def native(name: str, fixtures: Path, dtype: torch.dtype = torch.float32):
    """Loaded once per test session; tests that attach adapters load their own copy."""
    return load_model(fixtures / "models" / name, dtype=dtype)


@cache
def glm_reference(name: str, fixtures: Path):
    """transformers' GlmForCausalLM holding the same tensors, read from the files without lorakit's loader:
    query_key_value split by rows into q | k | v, dense_h_to_4h -> gate_up_proj (gate = first half)."""
    from transformers import GlmConfig, GlmForCausalLM

    folder = fixtures / "models" / name
    cfg = json.loads((folder / "config.json").read_text())
    raw: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        raw.update(load_file(f))
    for f in sorted(folder.glob("*.bin")):
        raw.update(torch.load(f, weights_only=True))
    raw = {k: v.float() for k, v in raw.items()}
    d = cfg["kv_channels"]
    q, kv = cfg["num_attention_heads"] * d, cfg["multi_query_group_num"] * d
    sd = {
        "model.embed_tokens.weight": raw["transformer.embedding.word_embeddings.weight"],
        "model.norm.weight": raw["transformer.encoder.final_layernorm.weight"],
        "lm_head.weight": raw["transformer.output_layer.weight"],
    }
    for n in range(cfg["num_layers"]):
        src, dst = f"transformer.encoder.layers.{n}.", f"model.layers.{n}."
        for kind in ("weight", "bias"):
            parts = raw[f"{src}{QKV}.{kind}"].split([q, kv, kv])
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), parts, strict=True):
                sd[f"{dst}self_attn.{proj}.{kind}"] = part
        sd[dst + "self_attn.o_proj.weight"] = raw[src + "self_attention.dense.weight"]
        sd[dst + "mlp.gate_up_proj.weight"] = raw[src + "mlp.dense_h_to_4h.weight"]
        sd[dst + "mlp.down_proj.weight"] = raw[src + "mlp.dense_4h_to_h.weight"]
        sd[dst + "input_layernorm.weight"] = raw[src + "input_layernorm.weight"]
        sd[dst + "post_attention_layernorm.weight"] = raw[src + "post_attention_layernorm.weight"]
    config = GlmConfig(
        vocab_size=cfg["padded_vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["ffn_hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["multi_query_group_num"],
        head_dim=d,
        rms_norm_eps=cfg["layernorm_epsilon"],
        attention_bias=cfg["add_qkv_bias"],
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=2,
        max_position_embeddings=cfg["seq_length"],
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0 * cfg.get("rope_ratio", 1),
            "partial_rotary_factor": 0.5,
        },
    )
    config._attn_implementation = "eager"  # the plainest path: matmul + softmax, not SDPA like ours
    model = GlmForCausalLM(config)
    model.load_state_dict(sd, strict=True)
    return model.eval()


# -- the function: differential against transformers' GLM --------------------------------------------------


@pytest.mark.parametrize("padded", [False, True], ids=["full", "right-padded"])
@pytest.mark.parametrize("name", ALL)
def test_matches_transformers_glm(name, padded, fixtures_dir):
    model, ref = native(name, fixtures_dir), glm_reference(name, fixtures_dir)
    ids, mask, labels = inputs(model.config.padded_vocab_size, padded)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, labels=labels)
        theirs = ref(input_ids=ids, attention_mask=mask, labels=labels)
    real = mask.bool()
    assert ours.logits.shape == (2, 12, model.config.padded_vocab_size)
    assert ours.logits.abs().max() > 1  # O(1) logits: the tolerance is meaningful
    assert_close(ours.logits[real], theirs.logits[real])
    assert_close(ours.loss, theirs.loss)
    trained = labels[:, 1:] != -100
    manual = torch.nn.functional.cross_entropy(ours.logits[:, :-1][trained], labels[:, 1:][trained])
    assert_close(ours.loss, manual)


def test_layouts_hold_the_same_model_and_rope_ratio_matters(fixtures_dir):
    ids, _, _ = inputs(native(LAYOUTS[0], fixtures_dir).config.padded_vocab_size, False)
    with torch.no_grad():
        logits = [native(n, fixtures_dir)(input_ids=ids).logits for n in ALL]
    for other in logits[1 : len(LAYOUTS)]:
        assert torch.equal(other, logits[0])
    assert not torch.allclose(logits[-1], logits[0], atol=1e-3)
    assert native(ROPE, fixtures_dir).transformer.rotary_pos_emb.base == 500000.0


def test_padding_and_explicit_positions(fixtures_dir):
    model = native("chatglm3-single", fixtures_dir)
    ids, _, _ = inputs(model.config.padded_vocab_size, False)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        arange = torch.arange(12).expand(2, 12)
        assert_close(model(input_ids=ids, position_ids=arange).logits, plain)
        # rope is relative: a shift of every position changes nothing, a gap does
        assert_close(model(input_ids=ids, position_ids=arange + 5).logits, plain, atol=1e-4)
        gap = arange + 5 * (arange >= 6)
        assert not torch.allclose(
            model(input_ids=ids, position_ids=gap).logits[:, 6:], plain[:, 6:], atol=1e-3
        )
        # Left padding with positions counted from each row's first real token gives the unpadded logits.
        left = torch.cat((torch.zeros(2, 4, dtype=torch.long), ids), dim=1)
        mask = torch.cat((torch.zeros(2, 4, dtype=torch.long), torch.ones_like(ids)), dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=left, attention_mask=mask, position_ids=pos).logits
    assert out.isfinite().all()  # padding queries see only themselves: no empty softmax row
    assert_close(out[:, 4:], plain)


def test_kv_cache_and_greedy_generation(fixtures_dir):
    model = native("chatglm3-single", fixtures_dir)
    ids, _, _ = inputs(model.config.padded_vocab_size, False)
    with torch.no_grad():
        full = model(input_ids=ids).logits
        first = model(input_ids=ids[:, :8], use_cache=True)
        rest = model(input_ids=ids[:, 8:10], past_key_values=first.past_key_values, use_cache=True)
        last = model(input_ids=ids[:, 10:11], past_key_values=rest.past_key_values, use_cache=True)
        assert_close(torch.cat((first.logits, rest.logits, last.logits), dim=1), full[:, :11])

        prompt = ids[:1, :6]
        naive = prompt
        for _ in range(5):  # cache-less reference: the whole sequence again for every token
            naive = torch.cat((naive, model(input_ids=naive).logits[:, -1:].argmax(-1)), dim=1)
        new = naive[:, 6:]
        assert torch.equal(model.generate_greedy(prompt, 5), new)
        stopped = model.generate_greedy(prompt, 5, stop_ids=[int(new[0, 2])])
        assert torch.equal(stopped, new[:, : int((new[0] == new[0, 2]).nonzero()[0]) + 1])
        # A left-padded batch row decodes as it does alone.
        batch = torch.cat((torch.cat((torch.zeros(1, 3, dtype=torch.long), prompt), 1), ids[1:, :9]))
        mask = (torch.arange(9) >= torch.tensor([[3], [0]])).long()
        assert torch.equal(model.generate_greedy(batch, 5, attention_mask=mask)[:1], new)


def test_half_precision_rounds_the_rotary_table(fixtures_dir):
    pos = torch.arange(40)[None]
    cos32, sin32 = RotaryEmbedding(8, 10000.0)(pos, torch.float32)
    cos16, sin16 = RotaryEmbedding(8, 10000.0)(pos, torch.bfloat16)
    assert cos16.dtype == torch.bfloat16 and torch.equal(cos16, cos32.bfloat16())
    assert torch.equal(sin16, sin32.bfloat16())
    model = native("chatglm3-single", fixtures_dir, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids, _, _ = inputs(model.config.padded_vocab_size, False)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16
    assert_close(logits.float(), native("chatglm3-single", fixtures_dir)(input_ids=ids).logits, atol=0.5)


def test_gradient_checkpointing_gives_the_same_gradients(fixtures_dir):
    ids, _, labels = inputs(1024, False)
    grads = []
    for on in (False, True):
        model = load_model(fixtures_dir / "models" / "chatglm3-single").train()
        if on:
            model.gradient_checkpointing_enable()
        model(input_ids=ids.clamp(max=model.config.padded_vocab_size - 1), labels=labels).loss.backward()
        grads.append(model.transformer.encoder.layers[0].self_attention.query_key_value.weight.grad)
    assert_close(grads[1], grads[0], atol=1e-6)


# -- adapters: the official peft layout ---------------------------------------------------------------------


def test_adapter_has_the_official_layout_and_reloads(fixtures_dir, tmp_path):
    folder = fixtures_dir / "models" / "chatglm3-bin-sharded"
    lora = LoraConfig(
        target_modules=["query_key_value"], r=8, lora_alpha=32, lora_dropout=0.1, task_type="CAUSAL_LM"
    )
    model = get_peft_model(load_model(folder), lora)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    model.eval()
    ids, mask, _ = inputs(model.config.padded_vocab_size, True)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        base_logits = native("chatglm3-bin-sharded", fixtures_dir)(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(logits, base_logits, atol=1e-3)  # the adapter is live
    model.save_pretrained(tmp_path)

    cfg = model.config
    rows = (cfg.num_attention_heads + 2 * cfg.multi_query_group_num) * cfg.kv_channels
    prefix = "base_model.model.transformer.encoder.layers.{}.self_attention.query_key_value.lora_{}.weight"
    expected = {}
    for n in range(cfg.num_layers):
        expected[prefix.format(n, "A")] = (8, cfg.hidden_size)
        expected[prefix.format(n, "B")] = (rows, 8)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert {k: tuple(v.shape) for k, v in saved.items()} == expected
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert "query_key_value" in meta["target_modules"]
    assert (meta["peft_type"], meta["task_type"], meta["r"], meta["lora_alpha"]) == (
        "LORA",
        "CAUSAL_LM",
        8,
        32,
    )
    assert meta["base_model_name_or_path"] == str(folder)

    fresh = PeftModel.from_pretrained(load_model(folder), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids, attention_mask=mask).logits, logits)
        # generation goes through the wrapper to the native model and its cache
        assert fresh.generate_greedy(ids[:1, :5], 3).shape == (1, 3)


# -- errors -------------------------------------------------------------------------------------------------


def copy_model(fixtures_dir: Path, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(fixtures_dir / "models" / name, tmp_path / name))


def test_missing_shard_names_the_file(fixtures_dir, tmp_path):
    folder = copy_model(fixtures_dir, "chatglm3-bin-sharded", tmp_path)
    (folder / "pytorch_model-00002-of-00003.bin").unlink()
    with pytest.raises(EngineError, match="pytorch_model-00002-of-00003.bin") as e:
        load_model(folder)
    assert e.value.code == "MODEL_LOAD_FAILED"
    assert e.value.message.endswith("pytorch_model.bin.index.json]")


def test_missing_tensor_names_the_tensor_and_file(fixtures_dir, tmp_path):
    folder = copy_model(fixtures_dir, "chatglm3-single", tmp_path)
    gone = "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"
    tensors = load_file(folder / "model.safetensors")
    del tensors[gone]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(EngineError, match=gone) as e:
        load_model(folder)
    assert e.value.code == "MODEL_LOAD_FAILED" and e.value.message.endswith("model.safetensors]")


def test_index_without_a_tensor_fails_before_reading_shards(fixtures_dir, tmp_path):
    folder = copy_model(fixtures_dir, "chatglm3-safetensors-sharded", tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    del index["weight_map"]["transformer.output_layer.weight"]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(EngineError, match="transformer.output_layer.weight") as e:
        load_model(folder)
    assert e.value.code == "MODEL_LOAD_FAILED"


def test_unexpected_tensor_and_wrong_shape(fixtures_dir, tmp_path):
    folder = copy_model(fixtures_dir, "chatglm3-single", tmp_path)
    tensors = load_file(folder / "model.safetensors")
    save_file({**tensors, "transformer.prefix_encoder.embedding.weight": torch.zeros(2, 2)}, folder / "x")
    (folder / "x").replace(folder / "model.safetensors")
    with pytest.raises(EngineError, match="prefix_encoder") as e:
        load_model(folder)
    assert e.value.code == "MODEL_LOAD_FAILED"

    save_file(tensors, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "ffn_hidden_size": 80}))
    with pytest.raises(EngineError, match=r"mlp\.dense_\w+\.weight has shape \[(192, 64|64, 96)\]") as e:
        load_model(folder)
    assert e.value.code == "MODEL_LOAD_FAILED"


def test_unsupported_chatglm_variants_and_empty_folder(fixtures_dir, tmp_path):
    folder = copy_model(fixtures_dir, "chatglm3-single", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for extra, words in (
        ({"position_encoding_2d": True}, "first-generation"),
        ({"quantization_bit": 4}, "quantized"),
        ({"pre_seq_len": 128}, "P-tuning"),
    ):
        (folder / "config.json").write_text(json.dumps({**config, **extra}))
        with pytest.raises(EngineError, match=words) as e:
            load_model(folder)
        assert e.value.code == "MODEL_LOAD_FAILED"
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").unlink()
    with pytest.raises(EngineError, match="no weights found") as e:
        load_model(folder)
    assert e.value.code == "MODEL_LOAD_FAILED"
