"""Fuzzing the engine's file readers with hypothesis: the plan (protocol.read_plan), prepared data
(data.Prepared), a training checkpoint (checkpoint.read_files / read_state) and a model folder
(models.checkpoint: config.json, the index, safetensors and .bin shards). Inputs are real files — a plan
make_plan writes, prepared data in the product's format, a checkpoint of a real optimizer, the fixture
checkpoints — with bytes flipped, inserted, deleted or cut and their JSON edited. Every input is read, or
refused with the engine's error type (EngineError) naming the file: never another
exception, never a hang (each case runs under an alarm).

CI runs a fixed, seeded number of examples; FUZZ_RUNS=20 multiplies them, FUZZ_SEED=n starts elsewhere.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from prepared import make_plan, write_prepared
from safetensors.torch import save_file

from lorakit_engine import checkpoint as ckpt
from lorakit_engine import files
from lorakit_engine.data import Prepared
from lorakit_engine.models.checkpoint import find_weights, iter_tensors, read_config
from lorakit_engine.plan import read_plan
from lorakit_engine.protocol import EngineError

RUNS = float(os.environ.get("FUZZ_RUNS", "1"))
SEED = int(os.environ.get("FUZZ_SEED", "20261130"))
CASE_S = float(os.environ.get("FUZZ_CASE_S", "20"))


def fuzz(ci: int):
    """`ci` examples (times FUZZ_RUNS) from the suite's seed; no example database, no deadline (the alarm
    bounds a case instead)."""

    def wrap(f):
        f = settings(
            max_examples=max(1, round(ci * RUNS)),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(f)
        return seed(SEED)(f)

    return wrap


class Hang(BaseException):
    """A case that ran past its time bound (a BaseException: no `except Exception` swallows it)."""


@contextlib.contextmanager
def bounded(seconds: float = CASE_S):
    def alarm(*_):
        raise Hang(f"the case ran for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def read_or_refused(fn, *names: Path | str):
    """fn()'s result, or None when it raised the engine's error naming one of `names`; anything else fails."""
    try:
        with bounded():
            return fn()
    except EngineError as e:
        text = str(e)
        assert any(str(n) in text for n in names), f"the error names no file ({names}): {text}"
        return None


# ---------------------------------------------------------------- mutations


@st.composite
def edited_bytes(draw, data: bytes, hot: tuple[int, int] | None = None) -> bytes:
    """`data` with 1-4 edits: a bit flipped, a byte set, bytes inserted, deleted, copied, or the end cut.
    `hot` is a byte range (a header) that half of the edits aim at."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        lo, hi = hot if hot and draw(st.booleans()) else (0, len(b))
        hi = min(hi, len(b))
        at = draw(st.integers(lo, max(lo, hi - 1))) if hi > lo else 0
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "copy"]))
        if kind in ("flip", "set", "delete", "truncate", "copy") and not b:
            continue
        at = min(at, len(b) - 1) if b else 0
        if kind == "flip":
            b[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            b[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            b[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del b[at : at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del b[at:]
        else:
            src = draw(st.integers(0, len(b) - 1))
            b[at:at] = b[src : src + draw(st.integers(1, 256))]
    return bytes(b)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def _paths(v, prefix=()):
    yield prefix
    if isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, (*prefix, i))
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, (*prefix, k))


@st.composite
def edited_json(draw, doc):
    """A copy of `doc` with 1-3 edits: a value replaced (by anything, or by a value nested thousands deep),
    a key deleted or renamed, an element duplicated."""
    root = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(root))
        p = paths[draw(st.integers(0, len(paths) - 1))]
        kind = draw(st.sampled_from(["replace", "replace", "delete", "rename", "duplicate", "deep"]))
        if not p:
            if kind in ("replace", "deep"):
                root = draw(json_values) if kind == "replace" else _deep(draw(st.sampled_from([100, 5000])))
            continue
        parent = root
        for k in p[:-1]:
            parent = parent[k]
        key = p[-1]
        if kind == "replace":
            parent[key] = draw(json_values)
        elif kind == "deep":
            parent[key] = _deep(draw(st.sampled_from([100, 5000])))
        elif kind == "delete":
            del parent[key]
        elif kind == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = parent.pop(key)
        elif kind == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
    return root


class _Deep:
    """A marker for a value nested `depth` levels: written by `dumps` as text (json.dumps would recurse)."""

    def __init__(self, depth: int):
        self.depth = depth


def _deep(depth: int) -> _Deep:
    return _Deep(depth)


def dumps(doc) -> str:
    marks: dict[str, int] = {}

    def mark(o):
        if isinstance(o, _Deep):
            key = f"\u0001deep{len(marks)}\u0001"
            marks[key] = o.depth
            return key
        raise TypeError(type(o).__name__)

    text = json.dumps(doc, default=mark, allow_nan=True)
    for key, depth in marks.items():
        text = text.replace(json.dumps(key), "[" * depth + "]" * depth)
    return text


@pytest.fixture(scope="module")
def work():
    root = Path(tempfile.mkdtemp(prefix="lorakit-fuzz-engine-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def fresh(work: Path) -> Path:
    """The current example's folder, emptied: a long run never holds more than one example's files."""
    d = work / "case"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    return d


# ---------------------------------------------------------------- the plan


@pytest.fixture(scope="module")
def plan_text(work, fixtures_dir) -> str:
    root = work / "plan-seed"
    return json.dumps(make_plan(root, fixtures_dir / "models" / "tiny-llama"), indent=2)


@fuzz(150)
@given(data=st.data())
def test_plan_mutated_bytes(work, plan_text, data):
    d = fresh(work)
    path = d / "plan.json"
    path.write_bytes(data.draw(edited_bytes(plan_text.encode())))
    read_or_refused(lambda: read_plan(path), path)


@fuzz(150)
@given(data=st.data())
def test_plan_edited_json(work, plan_text, data):
    d = fresh(work)
    path = d / "plan.json"
    path.write_text(dumps(data.draw(edited_json(json.loads(plan_text)))), encoding="utf-8")
    read_or_refused(lambda: read_plan(path), path)


# ---------------------------------------------------------------- prepared data


SAMPLES = [
    ([1, 5, 6, 7, 2], [-100, -100, 6, 7, 2]),
    ([1, 9, 2], [-100, 9, 2]),
    ([1, 3, 4, 8, 8, 2], [-100] * 3 + [8, 8, 2]),
]


@pytest.fixture(scope="module")
def prepared_seed(work) -> tuple[bytes, bytes]:
    d = work / "prepared-seed"
    write_prepared(d, SAMPLES)
    return (d / "tokens.safetensors").read_bytes(), (d / "manifest.json").read_bytes()


def use_prepared(d: Path):
    """Everything training reads of a split: its counts, every sample, the largest id."""
    p = Prepared(d)
    p.check(len(p), p.n_tokens, vocab_rows=1 << 20)
    for i in range(len(p)):
        ids, labels = p.sample(i)
        assert len(ids) == len(labels)
    return p


@fuzz(200)
@given(data=st.data())
def test_prepared_mutated(work, prepared_seed, data):
    tokens, manifest = prepared_seed
    header = 8 + int.from_bytes(tokens[:8], "little")
    d = fresh(work)
    if data.draw(st.booleans()):
        (d / "tokens.safetensors").write_bytes(data.draw(edited_bytes(tokens, hot=(0, header))))
        (d / "manifest.json").write_bytes(manifest)
    else:
        (d / "tokens.safetensors").write_bytes(tokens)
        (d / "manifest.json").write_bytes(data.draw(edited_bytes(manifest)))
    read_or_refused(lambda: use_prepared(d), d)


@fuzz(100)
@given(data=st.data())
def test_prepared_edited_header(work, prepared_seed, data):
    """The tokens file's JSON header edited (dtype, shape, offsets, names), its data as written."""
    tokens, manifest = prepared_seed
    n = int.from_bytes(tokens[:8], "little")
    header = json.loads(tokens[8 : 8 + n])
    text = dumps(data.draw(edited_json(header))).encode()
    d = fresh(work)
    (d / "tokens.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + tokens[8 + n :])
    (d / "manifest.json").write_bytes(manifest)
    read_or_refused(lambda: use_prepared(d), d)


# ---------------------------------------------------------------- a training checkpoint


@pytest.fixture(scope="module")
def checkpoint_seed(work) -> Path:
    """A checkpoint folder in the engine's layout, from a real optimizer and scheduler after one step."""
    d = work / "checkpoint-seed"
    d.mkdir()
    torch.manual_seed(0)
    lora_a = torch.nn.Parameter(torch.randn(4, 16))
    lora_b = torch.nn.Parameter(torch.zeros(16, 4))
    opt = torch.optim.AdamW([lora_a, lora_b], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    (lora_b @ lora_a).sum().backward()
    opt.step()
    sched.step()
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {f"{prefix}.lora_A.weight": lora_a.detach(), f"{prefix}.lora_B.weight": lora_b.detach()},
        str(d / "adapter_model.safetensors"),
    )
    (d / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    torch.save(opt.state_dict(), d / "optimizer.pt")
    torch.save(sched.state_dict(), d / "scheduler.pt")
    torch.save(ckpt.rng_state(), d / "rng.pt")
    (d / ckpt.STATE).write_text(json.dumps({"step": 1, "epoch": 0, "micro_batch": 2, "plan_hash": "0" * 16}))
    files.write_sums(d)  # as the engine writes a checkpoint: SHA256SUMS last
    return d


CHECKPOINT_FILES = ["adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", ckpt.STATE]


@fuzz(150)
@given(data=st.data())
def test_checkpoint_files_mutated(work, checkpoint_seed, data):
    d = fresh(work) / "step-1"
    shutil.copytree(checkpoint_seed, d)
    name = data.draw(st.sampled_from(CHECKPOINT_FILES))
    target = d / name
    if data.draw(st.integers(0, 9)) == 0:
        target.unlink()  # a missing file: the error may name the folder that lacks it
        read_or_refused(lambda: ckpt.read_files(d), target, d)
    else:
        target.write_bytes(data.draw(edited_bytes(target.read_bytes())))
        if data.draw(st.booleans()):
            # Damage written whole, SHA256SUMS and all (a writer's bug, not the disk): the readers' turn.
            files.write_sums(d)
        read_or_refused(lambda: ckpt.read_files(d), target)


@fuzz(60)
@given(data=st.data())
def test_checkpoint_state_edited(work, checkpoint_seed, data):
    d = fresh(work) / "step-1"
    shutil.copytree(checkpoint_seed, d)
    state = json.loads((checkpoint_seed / ckpt.STATE).read_text())
    (d / ckpt.STATE).write_text(dumps(data.draw(edited_json(state))))
    files.write_sums(d)  # a state.json written whole with other values: the checksum holds, the reader judges
    read_or_refused(lambda: ckpt.read_files(d), d / ckpt.STATE)


# ---------------------------------------------------------------- a model folder


def read_model_folder(folder: Path) -> int:
    """What loading a model folder reads before building the model: config.json, the layout, every tensor."""
    read_config(folder)
    weights = find_weights(folder)
    return sum(1 for path in weights.files for _ in iter_tensors(path))


MODEL_FILES = {
    "family-llama": ["config.json", "model.safetensors"],
    "chatglm3-6b-tiny": [
        "config.json",
        "pytorch_model.bin.index.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
    ],
}


@fuzz(150)
@given(data=st.data())
def test_model_folder_mutated(work, fixtures_dir, data):
    model = data.draw(st.sampled_from(sorted(MODEL_FILES)))
    d = fresh(work) / model
    shutil.copytree(fixtures_dir / "models" / model, d)
    name = data.draw(st.sampled_from(MODEL_FILES[model]))
    target = d / name
    raw = target.read_bytes()
    hot = (0, 8 + int.from_bytes(raw[:8], "little")) if name.endswith(".safetensors") else None
    target.write_bytes(data.draw(edited_bytes(raw, hot=hot)))
    read_or_refused(lambda: read_model_folder(d), target, d)


@fuzz(80)
@given(data=st.data())
def test_model_folder_edited_json(work, fixtures_dir, data):
    d = fresh(work) / "chatglm3-6b-tiny"
    shutil.copytree(fixtures_dir / "models" / "chatglm3-6b-tiny", d)
    name = data.draw(st.sampled_from(["config.json", "pytorch_model.bin.index.json"]))
    target = d / name
    target.write_text(dumps(data.draw(edited_json(json.loads(target.read_text())))))
    read_or_refused(lambda: read_model_folder(d), target, d)


# ---------------------------------------------------------------- found by fuzzing (pinned examples)


def test_plan_not_utf8_or_too_deep_or_invalid_names_the_file(tmp_path, plan_text):
    path = tmp_path / "plan.json"
    path.write_bytes(b"\x80" + plan_text.encode()[1:])  # was a raw UnicodeDecodeError
    with pytest.raises(EngineError, match="not UTF-8") as e:
        read_plan(path)
    assert e.value.code == "PLAN_INVALID" and str(path) in e.value.message
    path.write_text("[" * 100_000 + "]" * 100_000)  # was a raw RecursionError
    with pytest.raises(EngineError, match=str(path)):
        read_plan(path)
    path.write_text(json.dumps({**json.loads(plan_text), "version": "one"}))
    with pytest.raises(EngineError, match=f"{path}: the plan has 2 problem"):
        read_plan(path)


def test_prepared_manifest_not_json_names_the_folder(tmp_path):
    write_prepared(tmp_path, SAMPLES)
    (tmp_path / "manifest.json").write_bytes(b'{\x0b  "version": 1}')  # was a raw JSONDecodeError
    with pytest.raises(EngineError, match="manifest.json is not JSON") as e:
        Prepared(tmp_path)
    assert e.value.code == "DATA_INVALID" and str(tmp_path) in e.value.message
    (tmp_path / "manifest.json").write_text("[1]")
    with pytest.raises(EngineError, match="not a JSON object"):
        Prepared(tmp_path)


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("optimizer.pt", lambda b: b[: len(b) // 2]),  # was RuntimeError (PytorchStreamReader)
        ("scheduler.pt", lambda b: b"\x80" + b[1:]),  # was RuntimeError / UnpicklingError
        ("rng.pt", lambda b: b""),
        ("adapter_model.safetensors", lambda b: b[:20]),  # was SafetensorError
        (ckpt.STATE, lambda b: b"[1, 2]"),  # a list: train.py's `saved.get` was an AttributeError
        (ckpt.STATE, lambda b: b"\xfb" + b),  # was UnicodeDecodeError
    ],
)
def test_damaged_checkpoint_file_is_named(tmp_path, checkpoint_seed, name, damage):
    d = tmp_path / "step-1"
    shutil.copytree(checkpoint_seed, d)
    (d / name).write_bytes(damage((d / name).read_bytes()))
    with pytest.raises(EngineError) as e:  # the disk's damage: SHA256SUMS no longer matches
        ckpt.read_files(d)
    assert e.value.code == "CHECKPOINT_CORRUPT" and str(d / name) in e.value.message
    files.write_sums(d)  # the same bytes written whole (a writer's bug): the reader refuses them, located
    with pytest.raises(EngineError) as e:
        ckpt.read_files(d)
    assert e.value.code == "CHECKPOINT_UNREADABLE" and str(d / name) in e.value.message
    assert ckpt.read_files(checkpoint_seed)["state"]["step"] == 1  # the intact one reads


def test_damaged_model_folder_file_is_named(tmp_path, fixtures_dir):
    d = tmp_path / "m"
    shutil.copytree(fixtures_dir / "models" / "chatglm3-6b-tiny", d)
    shard = d / "pytorch_model-00001-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[:1000])  # was RuntimeError / OSError from torch.load
    with pytest.raises(EngineError) as e:
        read_model_folder(d)
    assert e.value.code == "MODEL_LOAD_FAILED" and str(shard) in e.value.message
    index = d / "pytorch_model.bin.index.json"
    index.write_bytes(b"\xf4" + index.read_bytes())  # was UnicodeDecodeError
    with pytest.raises(EngineError, match="weight_map"):
        find_weights(d)
    index.write_text(json.dumps({"weight_map": {"a": ["x.bin"]}}))  # was TypeError: unhashable list
    with pytest.raises(EngineError, match="outside the folder") as e:
        find_weights(d)
    assert str(index) in e.value.message
    (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)  # was RecursionError
    with pytest.raises(EngineError, match="not valid JSON"):
        read_config(d)
    s = tmp_path / "s"
    shutil.copytree(fixtures_dir / "models" / "family-llama", s)
    (s / "model.safetensors").write_bytes(bytes(4))  # was SafetensorError
    with pytest.raises(EngineError) as e:
        read_model_folder(s)
    assert str(s / "model.safetensors") in e.value.message
