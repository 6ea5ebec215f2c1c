"""ChatGLM3 golden vectors: an independent implementation of the official finetune_demo semantics.

The inputs live in tests/fixtures/chatglm3-golden.json (records in alpaca, OpenAI `messages` or ChatGLM3
`conversations` form, tool conversations included); this module computes their ids, labels and generation
prompt with the `sentencepiece` library and asserts they equal the JSON: `ids`/`labels`/`prompt_ids` on
the spm-chatglm3 fixture tokenizer, `real` on the official ChatGLM3-6B tokenizer.model
(../shared/models/chatglm3-6b; special tokens = the SentencePiece vocabulary size + their offset). The
TypeScript renderer is held to the same JSON by tests/data-template.test.ts.

The semantics, from ChatGLM3's own code: `[gMASK] sop`, per message `<|role|>` + encode(metadata + "\\n") +
encode(content), eos; a system message's `tools` appended to its content as "\\n" + json.dumps(tools,
indent=4, ensure_ascii=False) (the tokenizer's build_chat_input); the record's top-level `tools` as a system
message of their own, first (finetune_demo's format_conversation); the first finetune_demo's `tool` turn as an
assistant call with metadata and an observation without loss; the loss mask shifted right by one into the
labels. Without a `loss` flag assistant messages are learned and the others are not.

Regenerate the expected values (after changing the cases) with:
    python engine/tests/test_chatglm3_golden.py --write
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import tokenizers as fx

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "fixtures" / "chatglm3-golden.json"
REAL = REPO.parent / "shared" / "models" / "chatglm3-6b" / "tokenizer.model"
SPECIALS = fx.CHATGLM_SPECIALS  # the nine specials, in id order after the vocabulary
TOOLS_SYSTEM = "Answer the following questions as best as you can. You have access to the following tools:"
IGNORE = -100


class GLM3:
    """What ChatGLM3's own tokenizer does: sp encode without bos/eos, specials appended after the vocab."""

    def __init__(self, model_file: Path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        n = self.sp.vocab_size()
        self.special = {tok: n + i for i, tok in enumerate(SPECIALS)}
        self.eos = self.sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def single_message(self, role: str, metadata: str, content: str) -> list[int]:
        return [self.special[f"<|{role}|>"], *self.encode(f"{metadata}\n"), *self.encode(content)]


def dumps(tools: object) -> str:
    return json.dumps(tools, indent=4, ensure_ascii=False)


def old_tool_turn(turn: dict) -> list[dict]:
    """The first finetune_demo's `tool` turn: the call as Python code, then what the tool returned."""
    args = ", ".join(f"{k}={v!r}" for k, v in turn["parameters"].items())
    call = {"role": "assistant", "metadata": turn["name"], "content": f"```python\ntool_call({args})\n```"}
    if "loss" in turn:
        call["loss"] = turn["loss"]
    obs = turn["observation"]
    result = obs if isinstance(obs, str) else json.dumps(obs, ensure_ascii=False)
    return [call, {"role": "observation", "content": result}]


def to_messages(case: dict) -> list[dict]:
    """The record as the messages ChatGLM3 renders (role, metadata, content, loss), tools written in."""
    rec = case["record"]
    system = case.get("system")
    if case["format"] == "alpaca":
        msgs = []
        if rec.get("system") or system:
            msgs.append({"role": "system", "content": rec.get("system") or system})
        user = "\n".join(p for p in (rec["instruction"], rec.get("input") or "") if p)
        return [*msgs, {"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]
    turns = rec["messages" if case["format"] == "messages" else "conversations"]
    msgs = []
    for turn in turns:
        if turn["role"] == "tool" and ("parameters" in turn or "observation" in turn):
            msgs += old_tool_turn(turn)
            continue
        m = {k: turn[k] for k in ("role", "metadata", "content", "loss") if k in turn}
        if m["role"] == "tool":  # OpenAI's name for a tool result
            m["role"] = "observation"
        if "tools" in turn:
            m["content"] += "\n" + dumps(turn["tools"])
        msgs.append(m)
    if system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    if "tools" in rec:
        msgs.insert(0, {"role": "system", "content": TOOLS_SYSTEM + "\n" + dumps(rec["tools"])})
    return msgs


def learned(m: dict) -> bool:
    return m.get("loss", m["role"] == "assistant")


def render(tok: GLM3, msgs: list[dict]) -> tuple[list[int], list[int]]:
    """finetune_demo: per-token loss mask, eos appended, the mask shifted right by one into labels."""
    ids, mask = [tok.special["[gMASK]"], tok.special["sop"]], [False, False]
    for m in msgs:
        new = tok.single_message(m["role"], m.get("metadata", ""), m["content"])
        ids += new
        mask += [learned(m)] * len(new)
    ids.append(tok.eos)
    mask.append(False)
    shifted = [False, *mask[:-1]]
    return ids, [i if m else IGNORE for i, m in zip(ids, shifted, strict=True)]


def prompt(tok: GLM3, msgs: list[dict]) -> list[int]:
    while msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    ids = [tok.special["[gMASK]"], tok.special["sop"]]
    for m in msgs:
        ids += tok.single_message(m["role"], m.get("metadata", ""), m["content"])
    return [*ids, tok.special["<|assistant|>"]]


def expected(tok: GLM3, case: dict) -> dict:
    msgs = to_messages(case)
    ids, labels = render(tok, msgs)
    return {"ids": ids, "labels": labels, "prompt_ids": prompt(tok, msgs)}


def _cases() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def glm3(fixtures_dir: Path) -> GLM3:
    return GLM3(fixtures_dir / "tokenizers" / "spm-chatglm3" / "tokenizer.model")


@pytest.fixture(scope="module")
def real() -> GLM3:
    if not REAL.exists():
        pytest.skip(f"the official ChatGLM3-6B tokenizer.model is not at {REAL}")
    return GLM3(REAL)


@pytest.mark.parametrize("name", [c["name"] for c in _cases()["cases"]])
def test_golden_case(glm3: GLM3, name: str) -> None:
    case = next(c for c in _cases()["cases"] if c["name"] == name)
    got = expected(glm3, case)
    assert got["ids"] == case["ids"]
    assert got["labels"] == case["labels"]
    assert got["prompt_ids"] == case["prompt_ids"]


@pytest.mark.parametrize("name", [c["name"] for c in _cases()["cases"]])
def test_golden_case_real_tokenizer(real: GLM3, name: str) -> None:
    case = next(c for c in _cases()["cases"] if c["name"] == name)
    assert expected(real, case) == case["real"]


def test_real_tokenizer_facts(real: GLM3) -> None:
    """The ids ChatGLM3-6B's code gives its special tokens, and the leading "▁" piece before each text."""
    assert real.sp.vocab_size() == 64789
    assert [real.special[t] for t in SPECIALS] == list(range(64789, 64798))
    assert real.eos == 2
    assert real.encode("\n") == [30910, 13]  # finetune_demo's sanity check prints '' 30910, '\n' 13


def test_golden_semantics(glm3: GLM3) -> None:
    """The shape of the finetune_demo mask, checked on the cases themselves."""
    for case in _cases()["cases"]:
        ids, labels = case["ids"], case["labels"]
        assert ids[:2] == [glm3.special["[gMASK]"], glm3.special["sop"]]
        assert ids[-1] == glm3.eos
        for i, tok in enumerate(ids):
            if tok == glm3.special["<|assistant|>"] and labels[i - 1] == IGNORE:
                assert labels[i] == IGNORE, case["name"]  # the role token itself is never learned
        trained = [lab for lab in labels if lab != IGNORE]
        # the last trained label is a stop: eos or the role token that follows a reply
        assert trained[-1] in (glm3.eos, glm3.special["<|user|>"], glm3.special["<|observation|>"])


def write() -> None:
    data = _cases()
    sys.path.insert(0, str(REPO / "engine" / "tests"))
    from fixtures.build_all import main as build_fixtures

    out = REPO / "tests" / ".fixtures"
    build_fixtures(["--out", str(out)])
    tok = GLM3(out / "tokenizers" / "spm-chatglm3" / "tokenizer.model")
    if not REAL.exists():
        raise SystemExit(f"the official tokenizer.model is needed for the `real` vectors: {REAL}")
    official = GLM3(REAL)
    for case in data["cases"]:
        case.update(expected(tok, case))
        case["real"] = expected(official, case)
    GOLDEN.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    biome = REPO / "node_modules" / ".bin" / "biome"
    if biome.exists():  # the repository's JSON style (number lists filled to the line width)
        subprocess.run([str(biome), "format", "--write", str(GOLDEN)], check=True, capture_output=True)


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    else:
        print(__doc__)
