"""Crashes: a failure mid-run is one `error` event and exit 1, the checkpoints written before it stay complete
and loadable, a half-written checkpoint is never taken for a complete one, and the run resumes from the last
good checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from prepared import fault_env, make_plan, of_type, run_engine, write_plan

from lorakit_engine import checkpoint as ckpt
from lorakit_engine.plan import read_plan
from lorakit_engine.protocol import schema_errors
from lorakit_engine.run import run


@pytest.fixture(scope="module")
def model_dir(fixtures_dir):
    return fixtures_dir / "models" / "tiny-llama"


def test_crash_leaves_the_last_checkpoint_intact_and_resumable(tmp_path, model_dir):
    over = {"train.save_every": 2, "train.total_steps": 8, "samples.before": False}
    plan_path = write_plan(tmp_path, make_plan(tmp_path, model_dir, **over))
    events, rc, stderr = run_engine(plan_path, env=fault_env(5))
    assert rc == 1
    assert all(schema_errors("event", e) == [] for e in events)
    err = events[-1]
    assert err["type"] == "error" and err["code"] == "ENGINE_CRASH"
    assert "step 5" in err["message"] and "RuntimeError" in err["traceback"] and err["hint"]
    assert [e["step"] for e in of_type(events, "step")] == [1, 2, 3, 4]
    assert [e["step"] for e in of_type(events, "checkpoint")] == [2, 4]
    assert not of_type(events, "done")

    base = tmp_path / "run" / "checkpoints"
    assert not list(base.glob(".tmp-*"))
    assert ckpt.newest(tmp_path / "run") == base / "step-4"
    state = json.loads((base / "step-4" / "state.json").read_text())
    assert state["step"] == 4 and state["tokens_seen"] > 0
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.load(base / "step-4" / name, weights_only=True)

    # A crash while writing step 6 left a partial folder, even with a state.json: never read, cleared.
    partial = base / ".tmp-step-6"
    partial.mkdir()
    (partial / "state.json").write_text(json.dumps({"step": 6}))
    assert ckpt.newest(tmp_path / "run") == base / "step-4"

    resumed = make_plan(tmp_path, model_dir, resume=True, **over)
    events = []
    result = run(read_plan(write_plan(tmp_path, resumed)), events.append)
    assert of_type(events, "start")[0]["start_step"] == 4
    assert [e["step"] for e in of_type(events, "step")] == [5, 6, 7, 8]
    assert result.step == 8 and not partial.exists()


def test_crash_bad_model_folder_is_model_load_failed(tmp_path):
    (tmp_path / "model").mkdir()
    events, rc, _ = run_engine(write_plan(tmp_path, make_plan(tmp_path, tmp_path / "model", eval=False)))
    assert rc == 1 and len(events) == 1
    assert events[0]["code"] == "MODEL_LOAD_FAILED" and "config.json" in events[0]["message"]
