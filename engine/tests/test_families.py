"""One contract, every family: load through the front door, forward, LoRA on the registry's default targets,
one training step, save with peft, reload on a fresh base, same logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures.families import FAMILIES as TRANSFORMERS_FAMILIES
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from lorakit_engine.lora import linear_module_names
from lorakit_engine.models import (
    get_family,
    layer_count,
    load_model,
    read_config,
    supported_model_types,
)
from lorakit_engine.protocol import EngineError

FOLDERS = {"chatglm": "chatglm3-safetensors-sharded", **{f: f"family-{f}" for f in TRANSFORMERS_FAMILIES}}


@pytest.mark.parametrize("family", list(FOLDERS))
def test_family_contract(family, fixtures_dir, tmp_path):
    folder = fixtures_dir / "models" / FOLDERS[family]
    spec = get_family(family)
    model = load_model(folder)
    assert model.config.model_type == family and not model.training
    assert set(spec.targets) <= set(linear_module_names(model))

    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (2, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        base = model(input_ids=ids, labels=labels)
    assert base.logits.shape == (2, 10, vocab) and base.loss.isfinite()

    lora = LoraConfig(
        target_modules=list(spec.targets), r=8, lora_alpha=32, lora_dropout=0.1, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, lora)
    wrapped = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    assert len(wrapped) == layer_count(read_config(folder)) * len(spec.targets)
    assert linear_module_names(peft_model)[: len(spec.targets)] == list(spec.targets)

    peft_model.eval()
    with torch.no_grad():
        before = peft_model(input_ids=ids, labels=labels)
    torch.testing.assert_close(before.logits, base.logits, atol=1e-6, rtol=0)  # B starts at zero

    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    peft_model(input_ids=ids, labels=labels).loss.backward()
    with_grad = [n for n, p in peft_model.named_parameters() if p.grad is not None]
    assert with_grad and all("lora_" in n for n in with_grad)
    assert len(with_grad) == len(trainable) == 2 * len(wrapped)
    opt.step()

    peft_model.eval()
    with torch.no_grad():
        after = peft_model(input_ids=ids, labels=labels)
    assert abs(after.loss.item() - before.loss.item()) > 1e-4

    peft_model.save_pretrained(tmp_path)
    fresh = PeftModel.from_pretrained(load_model(folder), tmp_path).eval()
    with torch.no_grad():
        reloaded = fresh(input_ids=ids, labels=labels)
    torch.testing.assert_close(reloaded.logits, after.logits, atol=1e-5, rtol=0)


def test_registry():
    assert supported_model_types() == ["chatglm", "llama", "qwen2", "qwen3", "mistral", "glm", "glm4"]
    assert get_family("chatglm").targets == ("query_key_value",)
    assert get_family("chatglm").builder == "native" and get_family("glm4").builder == "transformers"
    assert get_family("glm").name == "glm" and get_family("glm4").name == "glm4"  # two classes, two families


def test_unknown_model_type_is_named_with_the_supported_list(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    with pytest.raises(
        EngineError, match="'gpt_neox'.*chatglm, llama, qwen2, qwen3, mistral, glm, glm4"
    ) as e:
        load_model(tmp_path)
    assert isinstance(e.value, EngineError) and e.value.code == "MODEL_LOAD_FAILED"
    with pytest.raises(EngineError, match="no config.json"):
        load_model(tmp_path / "nowhere")


def test_missing_shard_is_reported_for_transformers_families_too(fixtures_dir, tmp_path):
    src = fixtures_dir / "models" / "family-qwen2"
    (tmp_path / "config.json").write_bytes((src / "config.json").read_bytes())
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(EngineError, match="model-00002-of-00002.safetensors") as e:
        load_model(tmp_path)
    assert e.value.code == "MODEL_LOAD_FAILED"


def test_importing_the_package_does_not_import_torch():
    code = (
        "import sys, lorakit_engine; "
        "assert callable(lorakit_engine.load_model); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True)
