"""Data-parallel training under torchrun, on the CPU (gloo), two processes on the tiny Llama:

- 2 processes × batch 2 train exactly what 1 process × batch 4 trains (dropout 0): the same per-step losses,
  grad norms and eval losses, the same adapter; every event is written once (by rank 0);
- stopped by a control line, crashed on rank 1, and resumed twice, a 2-process run (dropout on: every rank's
  RNG comes back) gives what the uninterrupted 2-process run gives; the crash is one `error` event;
- the slicing of micro-batches over ranks, and the refusals, in process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from prepared import engine_env, fault_env, make_plan, memorize_set, of_type, parse_events, write_plan
from safetensors.torch import load_file

from lorakit_engine import checkpoint as ckpt
from lorakit_engine import verify
from lorakit_engine.batches import Batches, deal, in_order
from lorakit_engine.data import Prepared
from lorakit_engine.plan import read_plan
from lorakit_engine.protocol import EngineError, schema_errors
from lorakit_engine.run import load_base, run

N_SAMPLES = 9  # global micro-batches of 4: [4, 4, 1], so rank 1 gets nothing from the last one


@pytest.fixture(scope="module")
def model_dir(fixtures_dir):
    return fixtures_dir / "models" / "tiny-llama"


def torchrun_cmd(plan_path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "lorakit_engine",
        "train",
        "--plan",
        str(plan_path),
    ]


def dist_env(**extra: str) -> dict:
    return engine_env(OMP_NUM_THREADS="1", **extra)  # two processes on two cores


def torchrun(
    plan_path, stop_after: int | None = None, env: dict | None = None
) -> tuple[list[dict], int, str]:
    """Run the engine under torchrun; with `stop_after`, send `stop` on stdin once that step's event is in."""
    p = subprocess.Popen(
        torchrun_cmd(plan_path),
        env=dist_env(**(env or {})),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines, sent = [], False
    for line in p.stdout:
        lines.append(line)
        e = json.loads(line)  # every stdout line is an event
        if stop_after is not None and not sent and e["type"] == "step" and e["step"] >= stop_after:
            sent = True
            p.stdin.write('{"type": "stop"}\n')
            p.stdin.flush()
    p.stdin.close()
    stderr = p.stderr.read()
    return parse_events("".join(lines)), p.wait(timeout=120), stderr


def metrics(events):
    steps = {e["step"]: (e["loss"], e["grad_norm"], e["lr"], e["tokens"]) for e in of_type(events, "step")}
    evals = {e["step"]: e["loss"] for e in of_type(events, "eval")}
    return steps, evals


def assert_same(got: dict, ref: dict) -> None:
    for step, g in got.items():
        r = ref[step]
        assert abs(g[0] - r[0]) < 1e-5 and abs(g[1] - r[1]) < 1e-5, (step, g, r)
        assert g[2] == pytest.approx(r[2]) and g[3] == r[3], (step, g, r)


# Adam moves every weight by up to lr (1e-2 here) per step whatever its gradient's size, so a weight whose
# gradient is ~0 can land elsewhere by a small fraction of lr when float32 sums are taken in another order
# (two processes' all-reduce vs one): adapters agree to 1% of one step's largest move, losses to 1e-5.
ADAPTER_TOL = 1e-4


def max_diff(a_dir, b_dir) -> float:
    a = load_file(str(a_dir / "adapter_model.safetensors"))
    b = load_file(str(b_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ---------------------------------------------------------------- 2 processes = 1 process, same global batch

EQUAL = {
    "train.total_steps": 6,
    "train.grad_accum": 2,
    "train.eval_every": 3,
    "train.save_every": 2,
    "train.keep_checkpoints": 3,
    "lora.dropout": 0.0,
}


def test_two_processes_train_what_one_process_trains(tmp_path, model_dir):
    one = tmp_path / "one"
    plan = make_plan(one, model_dir, train=memorize_set(N_SAMPLES), **EQUAL, **{"train.batch_size": 4})
    ref_events: list[dict] = []
    run(read_plan(write_plan(one, plan)), ref_events.append)
    ref_steps, ref_evals = metrics(ref_events)

    two = tmp_path / "two"
    over = {**EQUAL, "train.batch_size": 2, "train.devices": 2}
    plan = make_plan(two, model_dir, train=memorize_set(N_SAMPLES), **over)
    events, rc, stderr = torchrun(write_plan(two, plan))
    assert rc == 0, stderr[-3000:]
    assert all(schema_errors("event", e) == [] for e in events)

    steps, evals = metrics(events)
    assert sorted(steps) == sorted(ref_steps) == list(range(1, 7))
    assert_same(steps, ref_steps)
    assert evals.keys() == ref_evals.keys() == {3, 6}
    assert all(abs(evals[k] - ref_evals[k]) < 1e-5 for k in evals)
    assert max_diff(two / "run" / "adapter", one / "run" / "adapter") < ADAPTER_TOL

    # Once each, from rank 0 alone: the other rank's stdout stays empty, its logs go to stderr, marked.
    kinds = [e["type"] for e in events]
    assert [e["step"] for e in of_type(events, "step")] == list(range(1, 7))
    assert kinds.count("start") == 1 and kinds.count("done") == 1 and kinds[-1] == "done"
    assert [e["step"] for e in of_type(events, "checkpoint")] == [2, 4, 6]
    assert [e["step"] for e in of_type(events, "eval")] == [3, 6]
    assert sorted((e["phase"], e["index"]) for e in of_type(events, "sample")) == sorted(
        (e["phase"], e["index"]) for e in of_type(ref_events, "sample")
    )
    assert "error" not in kinds and "[lorakit-engine rank 1]" in stderr
    start = of_type(events, "start")[0]
    assert start["trainable_params"] == of_type(ref_events, "start")[0]["trainable_params"]
    assert events[-1]["stopped_early"] is False
    step6 = two / "run" / "checkpoints" / "step-6"
    names = {p.name for p in step6.iterdir()}
    assert {"rng-rank0.pt", "rng-rank1.pt", "optimizer.pt", "adapter_model.safetensors"} <= names
    assert "rng.pt" not in names
    assert json.loads((step6 / "state.json").read_text())["plan_subset"]["train"]["devices"] == 2


# ---------------------------------------------------------------- stop, crash on rank 1, resume

RESUME = {
    "train.total_steps": 8,
    "train.batch_size": 2,
    "train.grad_accum": 2,
    "train.devices": 2,
    "train.save_every": 2,
    "train.keep_checkpoints": 4,
    "lora.dropout": 0.1,
    "samples.before": False,
    "samples.items": [],
}


def reference_run(root, plan) -> tuple[dict, dict]:
    """The uninterrupted two-process run of `plan(root)` that a stopped and resumed one must equal."""
    events, rc, stderr = torchrun(write_plan(root, plan(root)))
    assert rc == 0, stderr[-3000:]
    steps, evals = metrics(events)
    assert sorted(steps) == list(range(1, 9))
    return steps, evals


def test_two_processes_stop_crash_and_resume_exactly(tmp_path, model_dir):
    def plan(root, **extra):
        return make_plan(root, model_dir, train=memorize_set(N_SAMPLES), **{**RESUME, **extra})

    whole = tmp_path / "whole"
    ref_steps, ref_evals = reference_run(whole, plan)

    parts = tmp_path / "parts"
    plan_path = write_plan(parts, plan(parts))
    first, rc, stderr = torchrun(plan_path, stop_after=2)
    assert rc == 0, stderr[-3000:]
    done = first[-1]
    assert done["type"] == "done" and done["stopped_early"] is True
    stop1 = done["step"]
    assert 2 <= stop1 <= 5 and of_type(first, "checkpoint")[-1]["step"] == stop1

    # Resumed, then rank 1 fails at the start of step stop1 + 2: one error event (rank 0 writes it), exit ≠ 0.
    write_plan(parts, plan(parts, resume=True))
    second, rc, stderr = torchrun(plan_path, env=fault_env(stop1 + 2))
    assert rc != 0
    errors = of_type(second, "error")
    assert len(errors) == 1 and second[-1] is errors[0], [e["type"] for e in second]
    assert errors[0]["code"] == "ENGINE_CRASH"
    message = f"rank 1: RuntimeError: injected fault: failing on purpose at the start of step {stop1 + 2}"
    assert errors[0]["message"] == message and "RuntimeError" in errors[0]["traceback"]
    assert "rank 0 did not answer" not in stderr
    assert of_type(second, "start")[0]["start_step"] == stop1
    assert [e["step"] for e in of_type(second, "step")] == [stop1 + 1]
    assert not of_type(second, "done")
    assert not list((parts / "run" / "checkpoints").glob(".tmp-*"))

    last_saved = ckpt.complete(parts / "run")[-1][0]
    assert stop1 <= last_saved <= stop1 + 1
    write_plan(parts, plan(parts, resume=True))
    third, rc, stderr = torchrun(plan_path)
    assert rc == 0, stderr[-3000:]
    assert of_type(third, "start")[0]["start_step"] == last_saved
    assert third[-1]["type"] == "done" and third[-1]["stopped_early"] is False

    for part in (first, second, third):  # a step trained again after the crash must come out the same
        s, ev = metrics(part)
        assert_same(s, ref_steps)
        assert all(abs(ev[k] - ref_evals[k]) < 1e-5 for k in ev)
    got = set().union(*(metrics(p)[0].keys() for p in (first, second, third)))
    assert got == set(ref_steps)
    assert max_diff(parts / "run" / "adapter", whole / "run" / "adapter") < ADAPTER_TOL


# ---------------------------------------------------------------- in process


def test_micro_batches_are_dealt_over_ranks(tmp_path):
    from prepared import write_prepared

    data = Prepared(write_prepared(tmp_path / "d", memorize_set(N_SAMPLES))["dir"])
    whole = Batches(data, 4, seed=5, pad_id=0)
    ranks = [Batches(data, 2, seed=5, pad_id=0, rank=r, world=2) for r in (0, 1)]
    assert whole.per_epoch == ranks[0].per_epoch == 3
    for epoch in (0, 1):
        for i in range(3):
            parts = [b.input_ids.tolist() for b in (r.get(epoch, i) for r in ranks) if b is not None]
            mine = sorted([t for t in row if t] for rows in parts for row in rows)  # pad_id 0 stripped
            assert mine == sorted([t for t in row if t] for row in whole.get(epoch, i).input_ids.tolist())
    assert ranks[1].get(0, 2) is None and ranks[0].get(0, 2).input_ids.shape[0] == 1
    shards = [list(in_order(data, 2, 0, rank=r, world=2)) for r in (0, 1)]
    assert [b.input_ids.shape[0] for b in shards[0]] == [2, 2, 1] and len(shards[1]) == 2


def test_deal_balances_padded_size():
    # One long sample and seven short ones: the long one alone, the short ones together.
    assert deal([100, 10, 10, 10, 400, 10, 10, 10], 2) == [[4], [0, 1, 2, 3, 5, 6, 7]]
    assert deal([5, 5, 5, 5], 2) == [[0, 1], [2, 3]] and deal([7], 3) == [[0], [], []]
    g = torch.Generator().manual_seed(0)
    for world in (2, 3, 4):
        for _ in range(200):
            lengths = torch.randint(
                1, 512, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g
            ).tolist()
            parts = deal(lengths, world)
            assert len(parts) == world and sorted(i for p in parts for i in p) == list(range(len(lengths)))
            cost = max((len(p) * max(lengths[i] for i in p) for p in parts if p), default=0)
            even = -(-len(lengths) // world) * max(lengths)
            assert cost <= even


def test_devices_must_match_the_processes(tmp_path, model_dir):
    plan = read_plan(write_plan(tmp_path, make_plan(tmp_path, model_dir, **{"train.devices": 2})))
    with pytest.raises(EngineError) as err:
        run(plan, lambda e: None)
    assert err.value.code == "DEVICES_MISMATCH" and "nproc_per_node=2" in err.value.hint
    # batch_size is per device: a checkpoint of 2 processes does not resume under 1
    one = ckpt.plan_subset(replace(plan, train=replace(plan.train, devices=1)))
    assert "devices" not in one["train"] and ckpt.plan_subset(plan)["train"]["devices"] == 2


# ---------------------------------------------------------------- FSDP2: the base sharded over the ranks

SHARDED = {"train.devices": 2, "train.shard": "fsdp"}


def test_sharded_processes_train_what_one_process_trains(tmp_path, model_dir):
    from peft import PeftModel

    one = tmp_path / "one"
    ev = memorize_set(5, seed=7)  # eval batches of 2: rank 0 takes 2, rank 1 one (and then an idle forward)
    plan = make_plan(
        one, model_dir, train=memorize_set(N_SAMPLES), eval=ev, **EQUAL, **{"train.batch_size": 4}
    )
    ref_events: list[dict] = []
    run(read_plan(write_plan(one, plan)), ref_events.append)
    ref_steps, ref_evals = metrics(ref_events)

    two = tmp_path / "fsdp"
    plan = make_plan(
        two, model_dir, train=memorize_set(N_SAMPLES), eval=ev, **EQUAL, **SHARDED, **{"train.batch_size": 2}
    )
    events, rc, stderr = torchrun(write_plan(two, plan))
    assert rc == 0, stderr[-3000:]
    assert all(schema_errors("event", e) == [] for e in events)
    assert any("FSDP2" in e["message"] for e in of_type(events, "log"))

    # The tail micro-batch leaves rank 1 nothing (it runs an idle forward), the eval split too: same numbers.
    steps, evals = metrics(events)
    assert sorted(steps) == list(range(1, 7))
    assert_same(steps, ref_steps)
    assert evals.keys() == {3, 6} and all(abs(evals[k] - ref_evals[k]) < 1e-5 for k in evals)
    assert not [f for f in of_type(events, "finding") if f["severity"] == "error"]
    kinds = [e["type"] for e in events]
    assert kinds.count("start") == 1 and kinds[-1] == "done" and "error" not in kinds

    # Samples are generated on every rank, emitted once: the base's answers are the unsharded run's.
    def outputs(evs, phase):
        return {e["index"]: e["output_ids"] for e in of_type(evs, "sample") if e["phase"] == phase}

    assert outputs(events, "before") == outputs(ref_events, "before") and len(outputs(events, "after")) == 2

    # Whole tensors in peft's format and in the optimizer state, as an unsharded run writes them.
    assert max_diff(two / "run" / "adapter", one / "run" / "adapter") < ADAPTER_TOL
    assert (
        max_diff(two / "run" / "checkpoints" / "step-6", one / "run" / "checkpoints" / "step-6") < ADAPTER_TOL
    )
    opt = torch.load(two / "run" / "checkpoints" / "step-6" / "optimizer.pt", weights_only=True)
    ref_opt = torch.load(one / "run" / "checkpoints" / "step-6" / "optimizer.pt", weights_only=True)
    assert opt["state"].keys() == ref_opt["state"].keys()
    for i, s in opt["state"].items():
        for k in ("exp_avg", "exp_avg_sq"):
            assert type(s[k]) is torch.Tensor and s[k].shape == ref_opt["state"][i][k].shape
            assert torch.allclose(s[k], ref_opt["state"][i][k], atol=1e-6), (i, k)

    reloaded = PeftModel.from_pretrained(
        load_base(str(model_dir), torch.float32, "cpu"), str(two / "run" / "adapter")
    )
    batch = verify.reference_batch(None, Prepared(two / "prepared" / "train"), pad_id=0)
    ref_result = verify.logits_of(
        PeftModel.from_pretrained(
            load_base(str(model_dir), torch.float32, "cpu"), str(one / "run" / "adapter")
        ),
        batch,
        "cpu",
    )
    assert float((verify.logits_of(reloaded, batch, "cpu") - ref_result).abs().max()) < 1e-4


def test_sharded_stop_and_resume_exactly_also_from_an_unsharded_checkpoint(tmp_path, model_dir):
    def plan(root, **extra):
        return make_plan(root, model_dir, train=memorize_set(N_SAMPLES), **{**RESUME, **SHARDED, **extra})

    whole = tmp_path / "whole"
    ref_steps, ref_evals = reference_run(whole, plan)

    # Stopped sharded, resumed sharded.
    parts = tmp_path / "parts"
    plan_path = write_plan(parts, plan(parts))
    first, rc, stderr = torchrun(plan_path, stop_after=2)
    assert rc == 0, stderr[-3000:]
    stop1 = first[-1]["step"]
    assert first[-1]["stopped_early"] is True and of_type(first, "checkpoint")[-1]["step"] == stop1
    write_plan(parts, plan(parts, resume=True))
    second, rc, stderr = torchrun(plan_path)
    assert rc == 0, stderr[-3000:]
    assert of_type(second, "start")[0]["start_step"] == stop1 and second[-1]["stopped_early"] is False
    for part in (first, second):
        s, ev = metrics(part)
        assert_same(s, ref_steps)
        assert all(abs(ev[k] - ref_evals[k]) < 1e-5 for k in ev)
    assert max_diff(parts / "run" / "adapter", whole / "run" / "adapter") < ADAPTER_TOL

    # Stopped unsharded (plain data parallel, the same global batch), resumed sharded: the same run.
    mixed = tmp_path / "mixed"
    plan_path = write_plan(mixed, plan(mixed, **{"train.shard": "none"}))
    first, rc, stderr = torchrun(plan_path, stop_after=2)
    assert rc == 0, stderr[-3000:]
    stop1 = first[-1]["step"]
    write_plan(mixed, plan(mixed, resume=True))
    second, rc, stderr = torchrun(plan_path)
    assert rc == 0, stderr[-3000:]
    assert of_type(second, "start")[0]["start_step"] == stop1
    for part in (first, second):
        assert_same(metrics(part)[0], ref_steps)
    assert max_diff(mixed / "run" / "adapter", whole / "run" / "adapter") < ADAPTER_TOL


def test_sharding_refuses_fp16():
    """train.shard fsdp with fp16 is refused (its loss scaler would skip steps rank by rank); one process has
    nothing to shard over and says so."""
    from types import SimpleNamespace

    from lorakit_engine.parallel import Sharded, Single, choose

    train, logs = SimpleNamespace(shard="fsdp", precision="fp16"), []
    with pytest.raises(EngineError, match="precision fp16") as e:
        choose(train, torch.float16, 2, logs.append)
    assert e.value.code == "SHARD_UNSUPPORTED"
    assert choose(train, torch.bfloat16, 2, logs.append) is Sharded
    assert choose(train, torch.float16, 1, logs.append) is Single
    assert "nothing to shard over" in logs[-1]["message"]
