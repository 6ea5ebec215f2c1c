"""Nothing damaged is trained on or resumed from: checkpoints, the adapter and prepared data carry SHA256SUMS
(lorakit_engine.files), and a flipped byte anywhere in any of their files is named when the folder is read.
A resume passes over a damaged checkpoint to the newest one that verifies, and says so."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from prepared import make_plan, memorize_set, of_type, write_plan
from safetensors.torch import load_file

from lorakit_engine import checkpoint as ckpt
from lorakit_engine import files
from lorakit_engine.adapter import check_adapter, stable_config
from lorakit_engine.plan import read_plan
from lorakit_engine.protocol import EngineError
from lorakit_engine.run import check_inputs, run

OVER = {"train.total_steps": 4, "train.save_every": 2, "train.keep_checkpoints": 3, "samples.before": False}


def flip(path: Path, at: float = 0.5) -> None:
    """One bit of one byte of `path` flipped, `at` of the way in (0: the first byte, 1: the last)."""
    data = bytearray(path.read_bytes())
    i = min(len(data) - 1, int(len(data) * at))
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fixtures_dir) -> Path:
    """A finished run on the tiny llama: checkpoints step-2 and step-4 and the adapter."""
    root = tmp_path_factory.mktemp("trained")
    plan = make_plan(root, fixtures_dir / "models" / "tiny-llama", train=memorize_set(8), **OVER)
    events: list[dict] = []
    run(read_plan(write_plan(root, plan)), events.append)
    assert [e["step"] for e in of_type(events, "checkpoint")] == [2, 4]
    return root


def copy_of(trained: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(trained, root)
    plan = json.loads((root / "plan.json").read_text())
    plan["resume"] = True
    (root / "plan.json").write_text(json.dumps(plan))
    return root


def test_every_folder_written_carries_sums_that_sha256sum_accepts(trained):
    assert check_adapter(trained / "run" / "adapter") == []
    for folder in [*sorted((trained / "run" / "checkpoints").iterdir()), trained / "run" / "adapter"]:
        assert folder.name == "adapter" or ckpt.check(folder) == []
        listed = (folder / files.SUMS).read_text().splitlines()
        assert len(listed) >= 6
        r = subprocess.run(["sha256sum", "--check", "--strict", files.SUMS], cwd=folder, capture_output=True)
        assert r.returncode == 0, r.stdout + r.stderr
    names = {
        line.split("  ")[1]
        for line in (trained / "run/checkpoints/step-4" / files.SUMS).read_text().splitlines()
    }
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"} <= names
    assert "README.md" not in (trained / "run/adapter" / files.SUMS).read_text()  # lorakit's card replaces it


CHECKPOINT_FILES = [
    "adapter_model.safetensors",
    "adapter_config.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng.pt",
    "state.json",
    "README.md",
    files.SUMS,
]


@pytest.mark.parametrize("at", [0.0, 0.5, 1.0], ids=["first", "middle", "last"])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_flipped_byte_in_any_checkpoint_file_is_named_and_never_loaded(trained, tmp_path, name, at):
    step = tmp_path / "step-4"
    shutil.copytree(trained / "run" / "checkpoints" / "step-4", step)
    flip(step / name, at)
    with pytest.raises(EngineError) as e:
        ckpt.read_files(step)
    assert e.value.code == "CHECKPOINT_CORRUPT"
    named = str(step / name) if name != files.SUMS else str(step)
    assert named in e.value.message, e.value.message


def test_a_truncated_or_missing_checkpoint_file_is_named(trained, tmp_path):
    step = tmp_path / "step-4"
    shutil.copytree(trained / "run" / "checkpoints" / "step-4", step)
    opt = step / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:-1])
    assert any(str(opt) in p and "does not match" in p for p in ckpt.check(step))
    opt.unlink()
    assert any(str(opt) in p and "missing" in p for p in ckpt.check(step))
    (step / "stray.pt").write_bytes(b"x")  # a file the checkpoint was not written with
    assert any("stray.pt" in p and "not listed" in p for p in ckpt.check(step))


def test_resume_passes_over_a_damaged_checkpoint_and_says_which_and_why(trained, tmp_path):
    root = copy_of(trained, tmp_path)
    base = root / "run" / "checkpoints"
    flip(base / "step-4" / "optimizer.pt")
    plan = read_plan(root / "plan.json")
    inputs = check_inputs(plan)
    assert inputs.resume_from == base / "step-2"
    [(path, why)] = inputs.skipped
    assert path == base / "step-4" and str(base / "step-4" / "optimizer.pt") in why

    events: list[dict] = []
    result = run(plan, events.append)
    warnings = [e["message"] for e in of_type(events, "log") if e["level"] == "warning"]
    assert any("step-4 does not verify" in w and "optimizer.pt" in w and "from step-2" in w for w in warnings)
    assert of_type(events, "start")[0]["start_step"] == 2
    assert [e["step"] for e in of_type(events, "step")] == [3, 4]
    assert result.step == 4
    # The damaged folder is kept for a look, under a name no resume or pruning reads; the new step-4 verifies.
    assert (base / "damaged-step-4").is_dir() and ckpt.check(base / "step-4") == []


def test_resume_with_every_checkpoint_damaged_names_each(trained, tmp_path):
    root = copy_of(trained, tmp_path)
    base = root / "run" / "checkpoints"
    flip(base / "step-4" / "rng.pt")
    (base / "step-2" / "state.json").unlink()
    with pytest.raises(EngineError) as e:
        check_inputs(read_plan(root / "plan.json"))
    assert e.value.code == "CHECKPOINT_CORRUPT"
    assert str(base / "step-4" / "rng.pt") in e.value.message
    assert str(base / "step-2" / "state.json") in e.value.message


def test_the_best_checkpoint_restored_for_the_adapter_is_verified_first(trained, tmp_path):
    step = tmp_path / "step-2"
    shutil.copytree(trained / "run" / "checkpoints" / "step-2", step)
    flip(step / "adapter_model.safetensors", 0.9)
    with pytest.raises(EngineError) as e:
        ckpt.restore_adapter(None, step)  # refused before the model is touched
    assert e.value.code == "CHECKPOINT_CORRUPT" and "adapter_model.safetensors" in e.value.message


@pytest.mark.parametrize(
    "name", ["adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja"]
)
def test_a_flipped_byte_in_the_adapter_is_named(trained, tmp_path, name):
    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "run" / "adapter", adapter)
    (adapter / "README.md").write_text("lorakit's model card, written after the run\n")
    assert check_adapter(adapter) == []
    flip(adapter / name)
    [problem] = check_adapter(adapter)
    assert str(adapter / name) in problem and "does not match SHA256SUMS" in problem


def test_the_reload_check_names_a_damaged_adapter_file(trained, tmp_path):
    from lorakit_engine.verify.files import check_files

    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "run" / "adapter", adapter)
    flip(adapter / "tokenizer.json")  # a file the tensor comparison never reads
    plan = read_plan(trained / "plan.json")
    problems = check_files(adapter, {}, plan.lora, {})
    assert any(str(adapter / "tokenizer.json") in p for p in problems), problems


@pytest.mark.parametrize(
    ("split", "name"),
    [("train", "tokens.safetensors"), ("train", "manifest.json"), ("eval", "tokens.safetensors")],
)
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_prepared_data_is_never_trained_on(trained, tmp_path, split, name, damage):
    root = copy_of(trained, tmp_path)
    shutil.rmtree(root / "run")
    plan = json.loads((root / "plan.json").read_text())
    plan["resume"] = False
    (root / "plan.json").write_text(json.dumps(plan))
    target = root / "prepared" / split / name
    if damage == "flip":
        flip(target, 0.7)
    else:
        target.write_bytes(target.read_bytes()[:-3])
    events: list[dict] = []
    with pytest.raises(EngineError) as e:
        run(read_plan(root / "plan.json"), events.append)
    assert e.value.code == "DATA_CORRUPT" and str(target) in e.value.message
    assert not of_type(events, "step") and not (root / "run" / "checkpoints").exists()


def test_a_damaged_rows_file_is_never_trained_on(tmp_path, fixtures_dir):
    plan = make_plan(tmp_path, fixtures_dir / "models" / "tiny-llama", **{**OVER, "train.pack_tokens": 32})
    rows = tmp_path / plan["data"]["train"]["rows"]
    data = bytearray(rows.read_bytes())
    second = 8 + int.from_bytes(data[:8], "little") + 8  # the low byte of starts[1]
    data[second] ^= 0x01
    rows.write_bytes(bytes(data))
    starts = load_file(str(rows))["starts"].tolist()
    assert starts == sorted(set(starts))  # still rows that rise: only the checksum tells
    with pytest.raises(EngineError) as e:
        check_inputs(read_plan(write_plan(tmp_path, plan)))
    assert e.value.code == "DATA_CORRUPT" and str(rows) in e.value.message


def test_the_same_adapter_is_the_same_bytes_from_any_process(trained, tmp_path):
    """peft writes target_modules in the order of the process's string hashing; the engine sorts them, so an
    adapter written again (a resume, another machine) has the same bytes and SHA256SUMS, and peft reads it."""
    from peft import LoraConfig

    adapter = trained / "run" / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert len(cfg["target_modules"]) > 1
    assert cfg["target_modules"] == sorted(cfg["target_modules"])
    file = tmp_path / "adapter_config.json"
    shuffled = dict(cfg, target_modules=sorted(cfg["target_modules"], reverse=True))
    file.write_text(json.dumps(shuffled, indent=2, sort_keys=True))
    stable_config(file)
    assert file.read_bytes() == (adapter / "adapter_config.json").read_bytes()
    loaded = LoraConfig.from_pretrained(str(adapter))
    assert set(loaded.target_modules) == set(cfg["target_modules"])
