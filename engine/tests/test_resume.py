"""Resume exactness: a run stopped (by a `stop` control line, then by SIGINT) and resumed twice gives the
same per-step losses, grad norms, eval losses and final adapter as the run that was never interrupted
(dropout on, so the RNG state must come back too). Plus the resume refusals."""

from __future__ import annotations

import json
import signal
import subprocess
from dataclasses import replace

import pytest
import torch
from prepared import engine_cmd, engine_env, make_plan, memorize_set, of_type, run_engine, write_plan
from safetensors.torch import load_file

from lorakit_engine import checkpoint as ckpt
from lorakit_engine.files import write_sums
from lorakit_engine.plan import read_plan
from lorakit_engine.protocol import EngineError
from lorakit_engine.run import check_inputs

TOTAL = 14
OVER = {
    "train.total_steps": TOTAL,
    "train.eval_every": 3,
    "train.save_every": 0,  # a checkpoint at each epoch end (every 3 steps: 9 samples, batch 2, accum 2)
    "train.keep_checkpoints": 3,
    "samples.before": False,
}


def _plan(root, model_dir, **extra):
    return make_plan(root, model_dir, train=memorize_set(9), **{**OVER, **extra})


def run_until(plan_path, after_step: int, how: str) -> tuple[list[dict], int]:
    """Run the engine; once the event for `after_step` arrives, interrupt it with `how` (stop | sigint)."""
    p = subprocess.Popen(
        engine_cmd("train", plan_path),
        env=engine_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    p.stdin.write("not json\n")
    p.stdin.write('{"type": "pause"}\n')
    p.stdin.flush()
    events, sent = [], False
    for line in p.stdout:
        e = json.loads(line)
        events.append(e)
        if not sent and e["type"] == "step" and e["step"] >= after_step:
            sent = True
            if how == "stop":
                p.stdin.write('{"type": "stop"}\n')
                p.stdin.flush()
            else:
                p.send_signal(signal.SIGINT)
    p.stdin.close()
    return events, p.wait(timeout=60)


def metrics(events):
    steps = {e["step"]: (e["loss"], e["grad_norm"], e["lr"]) for e in of_type(events, "step")}
    evals = {e["step"]: e["loss"] for e in of_type(events, "eval")}
    return steps, evals


@pytest.fixture(scope="module")
def model_dir(fixtures_dir):
    return fixtures_dir / "models" / "tiny-llama"


def test_resume_continues_exactly(tmp_path, model_dir):
    whole = tmp_path / "whole"
    ref_events, rc, err = run_engine(write_plan(whole, _plan(whole, model_dir)))
    assert rc == 0, err[-2000:]
    ref_steps, ref_evals = metrics(ref_events)
    assert sorted(ref_steps) == list(range(1, TOTAL + 1))

    parts = tmp_path / "parts"
    plan_path = write_plan(parts, _plan(parts, model_dir))
    first, rc = run_until(plan_path, 2, "stop")
    assert rc == 0
    warnings = [e for e in of_type(first, "log") if e["level"] == "warning"]
    assert len(warnings) == 2  # the two bad control lines: ignored, reported
    done = first[-1]
    assert done["type"] == "done" and done["stopped_early"] is True
    stop1 = done["step"]
    assert 2 <= stop1 < TOTAL and of_type(first, "checkpoint")[-1]["step"] == stop1

    write_plan(parts, _plan(parts, model_dir, resume=True))
    second, rc = run_until(plan_path, stop1 + 3, "sigint")
    assert rc == 0
    assert of_type(second, "start")[0]["start_step"] == stop1
    stop2 = second[-1]["step"]
    assert second[-1]["stopped_early"] is True and stop1 < stop2 < TOTAL

    third, rc, err = run_engine(plan_path)
    assert rc == 0, err[-2000:]
    assert of_type(third, "start")[0]["start_step"] == stop2 and third[-1]["stopped_early"] is False

    got_steps, got_evals = {}, {}
    for part in (first, second, third):
        s, ev = metrics(part)
        assert not set(s) & set(got_steps)  # no step is trained twice
        got_steps.update(s)
        got_evals.update(ev)
    assert sorted(got_steps) == sorted(ref_steps)
    for step, (loss, gnorm, lr) in ref_steps.items():
        g = got_steps[step]
        assert abs(g[0] - loss) < 1e-5 and abs(g[1] - gnorm) < 1e-5 and g[2] == pytest.approx(lr), step
    assert got_evals.keys() == ref_evals.keys()
    assert all(abs(got_evals[k] - ref_evals[k]) < 1e-5 for k in ref_evals)
    a = load_file(str(whole / "run" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(parts / "run" / "adapter" / "adapter_model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert not torch.equal(a[next(k for k in a if "lora_B" in k)], torch.zeros(1))


def test_resume_without_checkpoint_is_an_error(tmp_path, model_dir):
    plan = read_plan(write_plan(tmp_path, _plan(tmp_path, model_dir, resume=True)))
    (tmp_path / "run" / "checkpoints" / ".tmp-step-3").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / ".tmp-step-3" / "state.json").write_text("{}")  # partial: ignored
    with pytest.raises(EngineError) as err:
        check_inputs(plan)
    assert err.value.code == "NO_CHECKPOINT"


def test_resume_refuses_changed_settings(tmp_path, model_dir):
    plan = read_plan(write_plan(tmp_path, _plan(tmp_path, model_dir, resume=True)))
    folder = tmp_path / "run" / "checkpoints" / "step-3"
    folder.mkdir(parents=True)
    old = ckpt.plan_subset(replace(plan, train=replace(plan.train, batch_size=4)))
    (folder / "state.json").write_text(
        json.dumps({"step": 3, "plan_hash": ckpt.subset_hash(old), "plan_subset": old})
    )
    write_sums(folder)  # as every checkpoint is written: the folder verifies
    with pytest.raises(EngineError) as err:
        check_inputs(plan)
    assert err.value.code == "RESUME_MISMATCH" and "train" in err.value.message
