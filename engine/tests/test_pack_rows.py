"""`train.pack_tokens`: rows of whole samples as micro-batches, cut by the product and read by the engine
from `rows-<pack_tokens>.safetensors`. The rows against the golden vector shared with src/data/pack.ts
(tests/fixtures/pack-rows-golden.json: the test helper cuts them as the product does, the engine reads them
back and shuffles them per epoch), dealing over ranks, a damaged rows file, and training: packed rows on the
fast path give the padded rows' losses; one row of everything gives a plain batch of everything's losses; a
run stopped mid-epoch resumes exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from prepared import (
    CHATGLM3,
    REPO,
    cut_rows,
    make_plan,
    memorize_set,
    of_type,
    run_engine,
    write_plan,
    write_prepared,
    write_rows,
)
from safetensors.torch import save_file
from test_resume import metrics, run_until

from lorakit_engine import checkpoint as ckpt
from lorakit_engine.batches import Batches
from lorakit_engine.data import Prepared, read_rows
from lorakit_engine.files import write_sums
from lorakit_engine.plan import read_plan
from lorakit_engine.protocol import EngineError
from lorakit_engine.run import check_inputs, run

GOLDEN = json.loads((REPO / "tests" / "fixtures" / "pack-rows-golden.json").read_text())


def samples_of_lengths(lengths: list[int]) -> list[tuple[list[int], list[int]]]:
    return [([1] + [10 + i % 50] * (n - 1), [-100] + [10 + i % 50] * (n - 1)) for i, n in enumerate(lengths)]


def rows_written(tmp_path: Path, lengths: list[int], rows: list[list[int]], pack_tokens: int):
    """The prepared samples and their rows file, as the product writes them; the engine's row starts."""
    data = Prepared(write_prepared(tmp_path, samples_of_lengths(lengths))["dir"])
    return data, read_rows(write_rows(tmp_path, rows, pack_tokens), data, pack_tokens)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_rows_match_the_golden_vector(case, tmp_path):
    if "error" in case:  # the product's error; a rows file that holds such a row anyway is refused
        with pytest.raises(ValueError, match=f"sample {case['error']['sample']} has"):
            cut_rows(case["lengths"], case["pack_tokens"])
        alone = [[i] for i in range(len(case["lengths"]))]
        with pytest.raises(EngineError) as err:
            rows_written(tmp_path, case["lengths"], alone, case["pack_tokens"])
        assert err.value.code == "DATA_INVALID"
        assert f"row {case['error']['sample']} holds {case['error']['length']} tokens" in err.value.message
        return
    assert cut_rows(case["lengths"], case["pack_tokens"]) == case["rows"]
    data, starts = rows_written(tmp_path, case["lengths"], case["rows"], case["pack_tokens"])
    assert [list(range(a, b)) for a, b in zip(starts, starts[1:], strict=False)] == case["rows"]
    batches = Batches(data, 4, 42, 0, row_starts=starts)
    assert batches.per_epoch == len(case["rows"])
    for pinned in case.get("orders", []):
        again = Batches(data, 4, pinned["seed"], 0, row_starts=starts)
        assert again.order(pinned["epoch"]) == pinned["order"]


def test_a_damaged_rows_file_is_refused(tmp_path):
    lengths = [5, 6, 7, 8]
    data = Prepared(write_prepared(tmp_path, samples_of_lengths(lengths))["dir"])
    bad = {
        "missing": None,
        "wrong dtype": {"starts": torch.tensor([0, 2, 4], dtype=torch.int32)},
        "not from 0": {"starts": torch.tensor([1, 2, 4])},
        "not to the end": {"starts": torch.tensor([0, 2, 3])},
        "an empty row": {"starts": torch.tensor([0, 2, 2, 4])},
    }
    for name, tensors in bad.items():
        path = tmp_path / f"rows-{name.replace(' ', '-')}.safetensors"
        if tensors is not None:
            save_file(tensors, str(path))
            write_sums(tmp_path)  # written as lorakit writes it: its checksum matches, its content is wrong
        with pytest.raises(EngineError) as err:
            read_rows(path, data, 32)
        assert err.value.code == "DATA_INVALID" and path.name in err.value.message, name


def test_packed_micro_batches_are_the_shuffled_rows(tmp_path):
    case = next(c for c in GOLDEN["cases"] if "orders" in c)
    rows, lengths = case["rows"], case["lengths"]
    data, starts = rows_written(tmp_path, lengths, rows, case["pack_tokens"])
    one = Batches(data, 4, seed=42, pad_id=0, row_starts=starts)
    for epoch in (0, 1):
        order = one.order(epoch)
        assert sorted(order) == list(range(len(rows)))
        assert order == Batches(data, 4, 42, 0, row_starts=starts).order(epoch)
        for i in range(one.per_epoch):
            b = one.get(epoch, i)
            assert b.attention_mask.sum(dim=1).tolist() == [lengths[s] for s in rows[order[i]]]
            assert b.real_tokens <= 512
    assert one.order(0) != one.order(1)

    # Data parallel: micro-batch i holds rows i*world … i*world+world-1 of the epoch's order, row i*world+r on
    # rank r; past the last row a rank gets None. Every row once per epoch.
    world = 3
    ranks = [Batches(data, 4, 42, 0, rank=r, world=world, row_starts=starts) for r in range(world)]
    assert all(r.per_epoch == -(-len(rows) // world) == 5 for r in ranks)
    for epoch in (0, 1):
        order = one.order(epoch)
        seen = []
        for i in range(ranks[0].per_epoch):
            for r, part in enumerate(b.get(epoch, i) for b in ranks):
                at = i * world + r
                if at >= len(rows):
                    assert part is None
                    continue
                assert part.attention_mask.sum(dim=1).tolist() == [lengths[s] for s in rows[order[at]]]
                seen.append(order[at])
        assert sorted(seen) == list(range(len(rows)))


def test_rows_are_checked_against_the_plan_before_the_model_loads(tmp_path, fixtures_dir):
    """A rows file whose row is longer than pack_tokens, rows without pack_tokens, a steps_per_epoch the data
    does not give: refused by check_inputs (`validate`), before any model loads."""
    model_dir = fixtures_dir / "models" / "tiny-llama"
    train = samples_of_lengths([12, 40, 9])
    long_row = write_rows(tmp_path, [[0], [1], [2]], 32)
    over = {"train.pack_tokens": 32, "data.train.rows": str(long_row)}
    plan = read_plan(write_plan(tmp_path, make_plan(tmp_path, model_dir, train=train, **over)))
    with pytest.raises(EngineError) as err:
        check_inputs(plan)
    assert err.value.code == "DATA_INVALID" and "row 1 holds 40 tokens" in err.value.message
    # pack_tokens is part of what a resumed run must keep (and named only when set)
    assert ckpt.plan_subset(plan)["train"]["pack_tokens"] == 32
    unpacked = replace(plan, train=replace(plan.train, pack_tokens=None))
    assert "pack_tokens" not in ckpt.plan_subset(unpacked)["train"]

    for over, words in (
        ({"data.train.rows": str(long_row)}, "rows go with pack_tokens"),
        ({"train.steps_per_epoch": 7}, "train.steps_per_epoch is 7 but the prepared data makes 1"),
    ):
        plan = read_plan(write_plan(tmp_path, make_plan(tmp_path, model_dir, train=train, **over)))
        with pytest.raises(EngineError, match=words) as err:
            check_inputs(plan)
        assert err.value.code == "PLAN_INVALID"


# ---------------------------------------------------------------- training


def _close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) > 0 and all(
        abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(a, b, strict=True)
    )


def test_packed_rows_on_the_fast_path_match_the_padded_rows(tmp_path, fixtures_dir):
    """ChatGLM3, pack_tokens rows: the fast path (one padding-free row; SDPA with a block mask on the CPU)
    and the padded loop (each row's samples padded to its longest) train on the same rows and agree."""
    model_dir = fixtures_dir / "models" / "chatglm3-single"
    over = {
        **CHATGLM3,
        "train.total_steps": 5,
        "train.grad_accum": 2,
        "train.pack_tokens": 30,
    }
    runs = {}
    for fast_path in (False, True):
        root = tmp_path / f"fast-{fast_path}"
        events: list[dict] = []
        plan = make_plan(root, model_dir, **over, **{"train.fast_path": fast_path})
        run(read_plan(write_plan(root, plan)), events.append)
        runs[fast_path] = events
    plain, fast = runs[False], runs[True]
    notes = [e["message"] for e in of_type(plain, "log") if "pack_tokens" in e["message"]]
    assert len(notes) == 1 and "padding-free only on the fast path" in notes[0]
    assert not [e for e in of_type(fast, "log") if "pack_tokens" in e["message"]]
    assert any("fast path" in e["message"] for e in of_type(fast, "log"))
    for kind, key in (("step", "loss"), ("step", "grad_norm"), ("step", "tokens"), ("eval", "loss")):
        a, b = [e[key] for e in of_type(plain, kind)], [e[key] for e in of_type(fast, kind)]
        assert _close(a, b), (kind, key, a, b)
    # 8 samples of 9-15 tokens in rows of ≤ 30: the step events' epoch advances by rows, not by batch_size
    rows = len(cut_rows([len(x) for x, _ in memorize_set(8)], 30))
    assert of_type(fast, "step")[0]["epoch"] == pytest.approx(2 / rows)


def test_one_row_of_everything_trains_like_one_batch_of_everything(tmp_path, fixtures_dir):
    """The loss stays Σ CE / the window's trained tokens: a row holding every sample gives the losses of a
    plain micro-batch of every sample (padded loop, dropout 0: the order inside a batch changes nothing)."""
    model_dir = fixtures_dir / "models" / "tiny-llama"
    base = {"lora.dropout": 0.0, "train.total_steps": 4, "train.grad_accum": 1, "samples.before": False}
    got = {}
    for name, extra in (("packed", {"train.pack_tokens": 1000}), ("batch", {"train.batch_size": 8})):
        root = tmp_path / name
        events: list[dict] = []
        run(read_plan(write_plan(root, make_plan(root, model_dir, **base, **extra))), events.append)
        got[name] = events
    for key in ("loss", "grad_norm", "tokens", "epoch"):
        a, b = (
            [e[key] for e in of_type(got["packed"], "step")],
            [e[key] for e in of_type(got["batch"], "step")],
        )
        assert _close(a, b), (key, a, b)


def test_a_packed_run_stopped_mid_epoch_resumes_exactly(tmp_path, fixtures_dir):
    model_dir = fixtures_dir / "models" / "tiny-llama"
    over = {
        "train.total_steps": 10,
        "train.grad_accum": 1,
        "train.pack_tokens": 24,
        "train.eval_every": 4,
        "train.keep_checkpoints": 5,
        "samples.before": False,
    }
    rows = len(cut_rows([len(x) for x, _ in memorize_set(9)], 24))
    assert rows >= 5  # several steps an epoch: the stop lands inside one

    def plan(root, **extra):
        return make_plan(root, model_dir, train=memorize_set(9), **{**over, **extra})

    whole = tmp_path / "whole"
    ref, rc, err = run_engine(write_plan(whole, plan(whole)))
    assert rc == 0, err[-2000:]

    parts = tmp_path / "parts"
    plan_path = write_plan(parts, plan(parts))
    first, rc = run_until(plan_path, 1, "stop")
    assert rc == 0 and first[-1]["stopped_early"] is True
    stop = first[-1]["step"]
    state = json.loads((parts / "run" / "checkpoints" / f"step-{stop}" / "state.json").read_text())
    assert 0 < state["micro_batch"] < rows, state  # mid-epoch
    write_plan(parts, plan(parts, resume=True))
    second, rc, err = run_engine(plan_path)
    assert rc == 0, err[-2000:]
    assert of_type(second, "start")[0]["start_step"] == stop

    ref_steps, ref_evals = metrics(ref)
    got_steps, got_evals = metrics(first)
    more_steps, more_evals = metrics(second)
    got_steps.update(more_steps)
    got_evals.update(more_evals)
    assert sorted(got_steps) == sorted(ref_steps) == list(range(1, 11))
    for step, (loss, gnorm, lr) in ref_steps.items():
        g = got_steps[step]
        assert abs(g[0] - loss) < 1e-5 and abs(g[1] - gnorm) < 1e-5 and g[2] == pytest.approx(lr), step
    assert got_evals.keys() == ref_evals.keys()
    assert all(abs(got_evals[k] - ref_evals[k]) < 1e-5 for k in ref_evals)
    from safetensors.torch import load_file

    a = load_file(str(Path(whole) / "run" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(Path(parts) / "run" / "adapter" / "adapter_model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert not torch.equal(a[next(k for k in a if "lora_B" in k)], torch.zeros(1))
