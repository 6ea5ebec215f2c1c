"""The jinja reference ids (templates/expected-jinja.json, written at fixture-build time by
fixtures/templates.py) are what transformers gives now, and mean what the TypeScript test assumes:
the rendered text tokenized with special tokens parsed and nothing added."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def expected(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "templates" / "expected-jinja.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tok(fixtures_dir: Path):
    from fixtures.tokenizers import hf_tokenizers

    hf_tokenizers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(fixtures_dir / "tokenizers" / "bpe-bytelevel"))


def test_expected_ids_are_current(expected: dict, tok) -> None:
    assert len(expected["cases"]) >= 10
    for case in expected["cases"]:
        agp = case["add_generation_prompt"]
        text = tok.apply_chat_template(case["messages"], tokenize=False, add_generation_prompt=agp)
        assert text == case["text"], case["name"]
        ids = tok.apply_chat_template(
            case["messages"], tokenize=True, add_generation_prompt=agp, return_dict=False
        )
        assert [int(i) for i in ids] == case["ids"], case["name"]
        # apply_chat_template = the text tokenized with specials parsed and no bos/eos added
        assert tok(text, add_special_tokens=False)["input_ids"] == case["ids"]


def test_typed_special_becomes_special_in_transformers(expected: dict, tok) -> None:
    """Where lorakit deliberately differs: transformers turns a typed `<|im_end|>` into the token."""
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for case in expected["cases"]:
        msgs = case["messages"]
        n_turn_ends = len(msgs) + (msgs[0]["role"] != "system")  # + the template's default system turn
        n = case["ids"].count(im_end)
        if case["content_spells_special"]:
            assert n == n_turn_ends + 1, case["name"]
        else:
            assert n == n_turn_ends, case["name"]
