"""The official ChatGLM3-6B tokenizer files as a test input (../shared/models/chatglm3-6b/, never committed).

What vitest holds the TypeScript tokenizer to (tests/.fixtures/chatglm3-6b/expected.json) is what the
`sentencepiece` library answers now; the facts of CHATGLM3.md hold on the real file; the tiny checkpoint
carries the official config and tokenizer files. A missing file fails these tests, saying which.
"""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm
from fixtures import chatglm
from fixtures import chatglm3_6b as fx
from fixtures.tokenizers import CHATGLM_SPECIALS


@pytest.fixture(scope="module")
def official():
    missing = [str(fx.OFFICIAL / f) for f in fx.OFFICIAL_FILES if not (fx.OFFICIAL / f).is_file()]
    assert not missing, (
        f"the official ChatGLM3-6B tokenizer files are missing: {', '.join(missing)}. Put tokenizer.model, "
        "tokenizer_config.json and config.json of THUDM/chatglm3-6b in ../shared/models/chatglm3-6b/ beside "
        "the repository (CI has them)."
    )
    return fx.OFFICIAL


@pytest.fixture(scope="module")
def built(official, fixtures_dir):
    folder = fixtures_dir / "chatglm3-6b"
    assert (folder / "expected.json").is_file(), f"{folder} was not built although {official} is there"
    return folder


@pytest.fixture(scope="module")
def sp(official):
    return spm.SentencePieceProcessor(model_file=str(official / "tokenizer.model"))


def test_expected_is_what_the_library_produces(official, built):
    stored = json.loads((built / "expected.json").read_text(encoding="utf-8"))
    fresh = json.loads(json.dumps(fx.expected(official), ensure_ascii=False))
    assert stored.keys() == fresh.keys()
    for key in fresh:
        assert stored[key] == fresh[key], key


def test_chatglm3_facts_hold_on_the_real_file(sp):
    assert sp.get_piece_size() == 64789
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)] == [b + 3 for b in range(256)]
    assert sp.id_to_piece(31168) == "\ufeff" and sp.id_to_piece(44227) == "\ufeff\ufeff"
    assert sp.encode("2024") == [sp.piece_to_id("▁"), *[sp.piece_to_id(d) for d in "2024"]]  # digits split
    assert sp.encode("a  b") != sp.encode("a b")  # extra whitespace kept
    # The nine specials are not SentencePiece pieces: their spellings come out as ordinary pieces.
    assert all(i < 64789 for t in CHATGLM_SPECIALS for i in sp.encode(t))


def test_the_no_dummy_prefix_variant_differs_only_there(sp, built):
    variant = (built / "no-dummy-prefix" / "tokenizer.model").read_bytes()
    other = spm.SentencePieceProcessor(model_proto=variant)
    assert other.get_piece_size() == sp.get_piece_size()
    assert sp.encode("hi") == [sp.piece_to_id("▁hi")]
    assert other.encode("hi") == [sp.piece_to_id("hi")]
    assert other.encode(" hi") == sp.encode("hi")
    stored = json.loads((built / "no-dummy-prefix" / "expected.json").read_text(encoding="utf-8"))
    corpus = fx._corpus()
    assert stored == fx.expected_no_dummy_prefix(variant, corpus["texts"] + corpus["dialogue"])


def test_tiny_checkpoint_carries_the_official_files(official, fixtures_dir):
    folder = fixtures_dir / "models" / "chatglm3-6b-tiny"
    config = json.loads((folder / "config.json").read_text())
    real = json.loads((official / "config.json").read_text())
    assert config == {**real, **chatglm.TINY}
    assert config["padded_vocab_size"] == 65024 and config["model_type"] == "chatglm"
    for name in ("tokenizer.model", "tokenizer_config.json"):
        assert (folder / name).read_bytes() == (official / name).read_bytes()
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
    ]
