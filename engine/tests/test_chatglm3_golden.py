"""ChatGLM3 golden vectors: an independent implementation of the official finetune_demo semantics.

The inputs live in tests/fixtures/chatglm3-golden.json (records in alpaca or ChatGLM3 `conversations`
form); this module computes their ids, labels and generation prompt with the `sentencepiece` library on
the spm-chatglm3 fixture tokenizer (special tokens = the SentencePiece vocabulary size + their offset) and
asserts they equal the JSON. The TypeScript renderer is held to the same JSON by tests/data-template.test.ts.

Regenerate the expected values (after changing the cases) with:
    python engine/tests/test_chatglm3_golden.py --write
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "fixtures" / "chatglm3-golden.json"
SPECIALS = [
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
]
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


def to_messages(case: dict) -> tuple[list[dict], object]:
    """The record as finetune_demo messages (role, content, metadata, loss) and its tools."""
    rec = case["record"]
    system = case.get("system")
    if case["format"] == "alpaca":
        msgs = []
        if rec.get("system") or system:
            msgs.append({"role": "system", "content": rec.get("system") or system})
        user = "\n".join(p for p in (rec["instruction"], rec.get("input") or "") if p)
        return [
            *msgs,
            {"role": "user", "content": user},
            {"role": "assistant", "content": rec["output"]},
        ], None
    tools = rec.get("tools")
    msgs = []
    for turn in rec["conversations"]:
        if turn["role"] == "tool":  # the first finetune_demo's form: the call, then what it returned
            args = ", ".join(f"{k}={v!r}" for k, v in turn["parameters"].items())
            call = {
                "role": "assistant",
                "metadata": turn["name"],
                "content": f"```python\ntool_call({args})\n```",
            }
            if "loss" in turn:
                call["loss"] = turn["loss"]
            obs = turn["observation"]
            msgs += [
                call,
                {
                    "role": "observation",
                    "content": obs if isinstance(obs, str) else json.dumps(obs, ensure_ascii=False),
                },
            ]
            continue
        if turn["role"] == "system" and "tools" in turn:
            tools = turn["tools"]
        msgs.append({k: v for k, v in turn.items() if k != "tools"})
    if system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs, tools


def with_tools(msgs: list[dict], tools: object) -> list[dict]:
    if tools is None:
        return msgs
    dumped = json.dumps(tools, indent=4, ensure_ascii=False)
    out = [dict(m) for m in msgs]
    for m in out:
        if m["role"] == "system":
            m["content"] = m["content"] + "\n" + dumped
            return out
    return [{"role": "system", "content": TOOLS_SYSTEM + "\n" + dumped}, *out]


def render(tok: GLM3, msgs: list[dict]) -> tuple[list[int], list[int]]:
    """finetune_demo: per-token loss mask, eos appended, the mask shifted right by one into labels."""
    ids, mask = [tok.special["[gMASK]"], tok.special["sop"]], [False, False]
    for m in msgs:
        role = "observation" if m["role"] == "tool" else m["role"]
        loss = role == "assistant" and m.get("loss", True)
        new = tok.single_message(role, m.get("metadata", ""), m["content"])
        ids += new
        mask += [loss] * len(new)
    ids.append(tok.eos)
    mask.append(False)
    shifted = [False, *mask[:-1]]
    return ids, [i if m else IGNORE for i, m in zip(ids, shifted, strict=True)]


def prompt(tok: GLM3, msgs: list[dict]) -> list[int]:
    while msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    ids = [tok.special["[gMASK]"], tok.special["sop"]]
    for m in msgs:
        role = "observation" if m["role"] == "tool" else m["role"]
        ids += tok.single_message(role, m.get("metadata", ""), m["content"])
    return [*ids, tok.special["<|assistant|>"]]


def expected(tok: GLM3, case: dict) -> dict:
    msgs, tools = to_messages(case)
    msgs = with_tools(msgs, tools)
    ids, labels = render(tok, msgs)
    return {"ids": ids, "labels": labels, "prompt_ids": prompt(tok, msgs)}


def _cases() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def glm3(fixtures_dir: Path) -> GLM3:
    return GLM3(fixtures_dir / "tokenizers" / "spm-chatglm3" / "tokenizer.model")


@pytest.mark.parametrize("name", [c["name"] for c in _cases()["cases"]])
def test_golden_case(glm3: GLM3, name: str) -> None:
    case = next(c for c in _cases()["cases"] if c["name"] == name)
    got = expected(glm3, case)
    assert got["ids"] == case["ids"]
    assert got["labels"] == case["labels"]
    assert got["prompt_ids"] == case["prompt_ids"]


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
    for case in data["cases"]:
        case.update(expected(tok, case))
    GOLDEN.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    biome = REPO / "node_modules" / ".bin" / "biome"
    if biome.exists():  # the repository's JSON style (number lists filled to the line width)
        subprocess.run([str(biome), "format", "--write", str(GOLDEN)], check=True, capture_output=True)


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    else:
        print(__doc__)
