"""Model inspection on the tiny fixtures, each failure planted in the model itself: targets the model
does not have, targets matching only some layers, frozen or unfrozen parameters, half-precision adapters,
a template the model has never seen. The healthy recipe gives no finding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorakit_engine.inspect_model import (
    check_peft_model,
    inspect,
    template_findings,
    template_loss,
    trainable_facts,
    trainable_findings,
)
from lorakit_engine.lora import attach
from lorakit_engine.models import load_model
from lorakit_engine.protocol import schema_errors

ENGINE = Path(__file__).resolve().parents[1]


def codes(result) -> list[str]:
    for f in result["findings"]:
        assert schema_errors("event", f) == [], f
    return [f["code"] for f in result["findings"]]


@pytest.fixture(scope="module")
def models(fixtures_dir) -> Path:
    return fixtures_dir / "models"


def test_healthy_chatglm3_recipe(models):
    r = inspect(str(models / "chatglm3-single"), ["query_key_value"], r=8, alpha=32, dropout=0.1)
    assert codes(r) == []
    f = r["facts"]
    assert f["model_type"] == "chatglm" and f["layers"] == 2 and f["lora_modules"] == 2
    # qkv: in 64, out 64 + 2 groups × 16 × 2 = 128; A r×in + B out×r per layer.
    assert f["params"]["trainable"] == f["params"]["lora"] == 2 * 8 * (64 + 128)
    assert f["params"]["trainable_dtypes"] == {"float32": 4} and f["params"]["base_trainable"] == []
    assert f["targets"]["per_target"]["query_key_value"]["layers"] == 2


def test_llama_names_on_chatglm(models):
    r = inspect(str(models / "chatglm3-single"), ["q_proj", "v_proj"], r=8, alpha=32)
    assert codes(r) == ["MODEL_TARGETS_NOT_FOUND"]
    ev = r["findings"][0]["evidence"]
    assert ev["recommended"] == ["query_key_value"]
    assert ev["linear_modules"] == [
        "query_key_value",
        "dense",
        "dense_h_to_4h",
        "dense_4h_to_h",
        "output_layer",
    ]
    assert "query_key_value" in r["findings"][0]["fix"]
    assert "params" not in r["facts"]  # peft was never asked


def test_targets_partly_matched(models):
    r = inspect(str(models / "tiny-llama"), ["q_proj", "x_proj", "layers.0.self_attn.v_proj"], r=4, alpha=8)
    assert codes(r) == ["MODEL_TARGETS_PARTIAL"]
    ev = r["findings"][0]["evidence"]
    assert ev["short"] == {
        "x_proj": {"matched": 0, "layers": 0, "expected_layers": 2},
        "layers.0.self_attn.v_proj": {"matched": 1, "layers": 1, "expected_layers": 2},
    }
    assert ev["matched_total"] == 3 and ev["expected_total"] == 6


def test_output_layer_target_is_not_partial(models):
    """A module outside the decoder layers (lm_head) is matched once, as expected."""
    r = inspect(str(models / "tiny-llama"), ["q_proj", "lm_head"], r=4, alpha=8)
    assert codes(r) == []


def test_peft_refuses_a_norm_layer(models):
    r = inspect(str(models / "tiny-llama"), ["input_layernorm"], r=4, alpha=8)
    assert codes(r) == ["MODEL_LORA_ATTACH_FAILED"]
    assert "q_proj" in r["findings"][0]["evidence"]["linear_modules"]


def test_half_precision_adapters(models):
    bad = inspect(
        str(models / "tiny-llama"), ["q_proj", "v_proj"], r=4, alpha=8, dtype="float16", fp32_adapters=False
    )
    assert codes(bad) == ["MODEL_ADAPTER_DTYPE"]
    assert bad["findings"][0]["evidence"]["dtypes"] == {"float16": 8}
    good = inspect(str(models / "tiny-llama"), ["q_proj", "v_proj"], r=4, alpha=8, dtype="float16")
    assert codes(good) == [] and good["facts"]["params"]["trainable_dtypes"] == {"float32": 8}


def test_nothing_trainable_and_base_trainable(models):
    model = attach(load_model(models / "tiny-llama"), ["q_proj"], r=4, alpha=8, dropout=0.0)
    model.requires_grad_(False)
    assert [f["code"] for f in trainable_findings(trainable_facts(model))] == ["MODEL_NOTHING_TRAINABLE"]

    model = attach(load_model(models / "tiny-llama"), ["q_proj"], r=4, alpha=8, dropout=0.0)
    model.base_model.model.lm_head.weight.requires_grad_(True)
    found = trainable_findings(trainable_facts(model))
    assert [f["code"] for f in found] == ["MODEL_BASE_TRAINABLE"]
    assert found[0]["evidence"]["names"] == ["base_model.model.lm_head.weight"]


def test_check_peft_model_for_the_training_loop(models):
    model = attach(load_model(models / "chatglm3-single"), ["query_key_value"], r=8, alpha=32, dropout=0.1)
    facts, found = check_peft_model(model, ["query_key_value"], layers=2)
    assert found == [] and facts["params"]["lora"] == 3072


def test_model_that_cannot_load(tmp_path):
    r = inspect(str(tmp_path), ["q_proj"], r=8, alpha=16)
    assert codes(r) == ["MODEL_LOAD_FAILED"]
    assert r["findings"][0]["evidence"]["code"] == "MODEL_LOAD_FAILED"


# ---------------------------------------------------------------- template loss


PATTERN = list(range(10, 34))  # a cycle of 24 ids the model learns to continue
MARKERS = list(range(500, 524))


@pytest.fixture(scope="module")
def fluent_model(models):
    """tiny-llama trained for a moment on plain text (the cycle), so that text is easy for it."""
    torch.manual_seed(0)
    model = load_model(models / "tiny-llama")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seq = torch.tensor([PATTERN * 3])
    for _ in range(60):
        batch = torch.cat([torch.roll(seq, -k, dims=1)[:, :48] for k in range(0, 24, 3)])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_template_the_model_never_saw(fluent_model):
    text = PATTERN * 2
    # The "template" puts a marker before every token; labels are the text tokens only.
    ids = [t for pair in zip(MARKERS * 2, text, strict=True) for t in pair]
    labels = [-100 if i % 2 == 0 else t for i, t in enumerate(ids)]
    samples = {"formatted": [{"input_ids": ids, "labels": labels}], "plain": [{"input_ids": text}]}
    loss = template_loss(fluent_model, samples)
    found = template_findings(loss)
    assert [f["code"] for f in found] == ["MODEL_TEMPLATE_LOSS_HIGH"]
    ev = found[0]["evidence"]
    assert ev["plain_loss"] < 1.0 and ev["ratio"] >= 1.5
    assert loss["formatted"]["tokens"] == 48 and loss["plain"]["tokens"] == 47


def test_template_that_fits(fluent_model):
    text = PATTERN * 2
    labels = [-100] * 8 + text[8:]  # prompt = the first 8 tokens, no template around them
    samples = {"formatted": [{"input_ids": text, "labels": labels}], "plain": [{"input_ids": text}]}
    assert template_findings(template_loss(fluent_model, samples)) == []


def test_cli_writes_one_json_object(models, tmp_path):
    samples = tmp_path / "samples.json"
    ids = list(range(5, 40))
    samples.write_text(
        json.dumps(
            {
                "formatted": [{"input_ids": ids, "labels": [-100] * 10 + ids[10:]}],
                "plain": [{"input_ids": ids}],
            }
        )
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lorakit_engine.inspect_model",
            "--model",
            str(models / "chatglm3-single"),
            "--targets",
            "query_key_value",
            "--r",
            "8",
            "--samples",
            str(samples),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ENGINE)},
        check=True,
        timeout=300,
    )
    (line,) = r.stdout.strip().splitlines()
    out = json.loads(line)
    assert out["findings"] == []  # random weights: no template is foreign, none is familiar
    tl = out["facts"]["template_loss"]
    assert tl["formatted"]["tokens"] == 25 and tl["plain"]["tokens"] == 34 and 0.5 < tl["ratio"] < 1.5
    assert out["facts"]["params"]["trainable"] == 3072
