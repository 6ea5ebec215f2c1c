"""The golden tokenizer vectors are what the reference libraries produce: re-run sentencepiece and Rust
`tokenizers` on the built fixture tokenizers and compare with expected.json (which vitest checks the
TypeScript tokenizers against); rebuilding gives the same files; ChatGLM3's nine specials follow the
SentencePiece vocabulary."""

from __future__ import annotations

import hashlib
import json

import pytest
import sentencepiece as spm
from fixtures import tokenizers as fx


@pytest.fixture(scope="module")
def tok_dir(fixtures_dir):
    return fixtures_dir / "tokenizers"


@pytest.fixture(scope="module")
def stored(tok_dir):
    return json.loads((tok_dir / "expected.json").read_text(encoding="utf-8"))


def test_expected_is_what_the_libraries_produce(tok_dir, stored):
    fresh = json.loads(json.dumps(fx.expected_all(tok_dir, fx.corpus_texts()), ensure_ascii=False))
    assert stored["corpus_sha256"] == fresh["corpus_sha256"], "corpus changed: rebuild fixtures with --force"
    assert set(stored["tokenizers"]) == set(fresh["tokenizers"])
    for name, exp in fresh["tokenizers"].items():
        got = stored["tokenizers"][name]
        for key in exp:
            if key not in ("cases", "fuzz_cases", "decode_cases"):
                assert got[key] == exp[key], (name, key)
        for a, b in zip(got["cases"] + got["fuzz_cases"], exp["cases"] + exp["fuzz_cases"], strict=True):
            assert a == b, (name, a["text"])
        assert got["decode_cases"] == exp["decode_cases"], name


def test_rebuild_is_byte_identical(tok_dir, tmp_path):
    fx.build(tmp_path)
    fresh_dir = tmp_path / "tokenizers"

    def files(root):
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())

    assert files(fresh_dir) == files(tok_dir)
    for rel in files(fresh_dir):
        digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (fresh_dir / rel, tok_dir / rel)]
        assert digest[0] == digest[1], rel


def test_chatglm3_specials_follow_the_sentencepiece_vocabulary(tok_dir, stored):
    folder = tok_dir / "spm-chatglm3"
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    n = sp.get_piece_size()
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    listed = {int(k): v["content"] for k, v in config["added_tokens_decoder"].items()}
    assert listed == {n + i: t for i, t in enumerate(fx.CHATGLM_SPECIALS)}
    assert config["tokenizer_class"] == "ChatGLMTokenizer" and config["eos_token"] == "</s>"
    exp = stored["tokenizers"]["spm-chatglm3"]
    assert exp["sp_size"] == n and exp["vocab_size"] == n + 9
    assert {t: exp["special_tokens"][t] for t in fx.CHATGLM_SPECIALS} == {
        t: n + i for i, t in enumerate(fx.CHATGLM_SPECIALS)
    }
    # <unk> 0 (ChatGLM3's pad), <s> 1, </s> 2; the specials never come out of SentencePiece itself.
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    for case in exp["cases"]:
        assert max(case["ids"], default=0) < n


def test_fixture_models_exercise_what_they_should(tok_dir, stored):
    glm = spm.SentencePieceProcessor(model_file=str(tok_dir / "spm-chatglm3" / "tokenizer.model"))
    nfkc = spm.SentencePieceProcessor(model_file=str(tok_dir / "spm-nfkc" / "tokenizer.model"))
    # identity normalization keeps full-width forms (they fall back to bytes); nmt_nfkc folds them to ASCII
    assert glm.decode(glm.encode("ＡＢＣ１２３")) == "ＡＢＣ１２３"
    assert nfkc.decode(nfkc.encode("ＡＢＣ１２３")) == "ABC123"
    assert any(glm.id_to_piece(i).startswith("<0x") for i in glm.encode("𠀀"))  # byte fallback
    assert glm.encode("2024") == [glm.piece_to_id("▁"), *[glm.piece_to_id(d) for d in "2024"]]  # split digits
    assert nfkc.piece_to_id("<br>") in nfkc.encode("a<br>b")  # user-defined piece kept whole
    texts = fx.corpus_texts()
    assert len(texts) >= 60 and "" in texts
    for name in ("bpe-bytelevel", "bpe-metaspace"):
        cases = stored["tokenizers"][name]["cases"]
        specials = set(stored["tokenizers"][name]["special_tokens"].values())
        # without special parsing, no text yields a special id; with it, some do
        assert not any(specials & set(c["ids"]) for c in cases)
        assert any(specials & set(c["ids_special"]) for c in cases)
