"""Training on the tiny Llama: the real subprocess and its events, learning, the PEFT files and their round
trip, accumulation invariance, LoRA target errors, the never-learned and non-finite findings, samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from prepared import CHATGLM3, TARGETS, losses, make_plan, memorize_set, of_type, run_engine, write_plan
from safetensors import safe_open

from lorakit_engine import loss as loss_mod
from lorakit_engine.generate import _cut, greedy
from lorakit_engine.plan import read_plan
from lorakit_engine.protocol import EngineError, schema_errors
from lorakit_engine.run import check_inputs, run


@pytest.fixture(scope="module")
def model_dir(fixtures_dir):
    return fixtures_dir / "models" / "tiny-llama"


def run_inprocess(tmp_path, model_dir, **over):
    plan = read_plan(write_plan(tmp_path, make_plan(tmp_path, model_dir, **over)))
    events: list[dict] = []

    def emit(e):
        assert schema_errors("event", e) == [], e
        assert "{" not in e.get("title", "") + e.get("fix", ""), e  # every template key in the evidence
        events.append(e)

    return run(plan, emit), events, plan


# ---------------------------------------------------------------- the real subprocess


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("cli")
    plan = make_plan(root, model_dir, **{"train.total_steps": 20, "train.eval_every": 5, "train.lr": 2e-2})
    events, rc, stderr = run_engine(write_plan(root, plan))
    return root, plan, events, rc, stderr


def test_train_subprocess_events_follow_the_schema(cli_run):
    root, plan, events, rc, stderr = cli_run
    assert rc == 0, stderr[-3000:]
    for e in events:
        assert schema_errors("event", e) == [], e
    kinds = [e["type"] for e in events]
    assert kinds[0] == "sample" and kinds[-1] == "done"
    assert kinds.index("start") < kinds.index("step")
    assert [e["step"] for e in of_type(events, "step")] == list(range(1, 21))
    assert {e["phase"] for e in of_type(events, "sample")} == {"before", "after"}
    assert len(of_type(events, "sample")) == 2 * len(plan["samples"]["items"])
    start = of_type(events, "start")[0]
    assert start["lora_modules"] == 2 * len(TARGETS) and 0 < start["trainable_params"] < start["total_params"]
    # eval every 5 steps, and at each epoch end when eval_every is 0: here every 5 and at 20 (end)
    assert [e["step"] for e in of_type(events, "eval")] == [5, 10, 15, 20]
    done = events[-1]
    assert done["stopped_early"] is False and done["step"] == 20
    assert not [e for e in of_type(events, "finding") if e["severity"] == "error"]
    assert "[lorakit-engine]" in stderr  # human logs went to stderr


def test_train_loss_decreases_on_a_memorizable_set(cli_run):
    _, _, events, _, _ = cli_run
    loss = losses(events)
    first, last = loss[1], sum(loss[s] for s in (18, 19, 20)) / 3
    assert last < 0.6 * first, loss
    evals = [e["loss"] for e in of_type(events, "eval")]
    assert all(isinstance(x, float) for x in evals)


def test_train_writes_peft_adapter_extras_files_and_pruned_checkpoints(cli_run):
    root, plan, events, _, _ = cli_run
    adapter = root / "run" / "adapter"
    assert events[-1]["adapter_dir"] == str(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == sorted(TARGETS)
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        assert len(keys) == 2 * 2 * len(TARGETS)  # A and B per module, 2 layers
        assert all(("lora_A" in k or "lora_B" in k) and f.get_tensor(k).dtype == torch.float32 for k in keys)
    for name, text in plan["adapter_extras"].items():
        assert (adapter / name).read_text() == text
    assert sorted(plan["adapter_files"]) == ["tokenizer.json", "tokenizer_config.json"]  # what tiny-llama has
    for name, source in plan["adapter_files"].items():
        assert (adapter / name).read_bytes() == Path(source).read_bytes()
    ckpts = sorted(p.name for p in (root / "run" / "checkpoints").iterdir())
    assert ckpts == ["step-18", "step-20"]  # keep 2; saved at each epoch end (every 2 steps)
    step20 = root / "run" / "checkpoints" / "step-20"
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"} <= {
        p.name for p in step20.iterdir()
    }
    state = json.loads((step20 / "state.json").read_text())
    assert state["step"] == 20 and state["epoch"] == 10 and state["micro_batch"] == 0


def test_adapter_files_must_be_plain_names_of_existing_files(tmp_path, model_dir):
    def refused(files: dict) -> str:
        plan = read_plan(write_plan(tmp_path, make_plan(tmp_path, model_dir, adapter_files=files)))
        with pytest.raises(EngineError) as e:
            check_inputs(plan)
        assert e.value.code == "PLAN_INVALID"
        return str(e.value)

    assert "not a file" in refused({"tokenizer.model": str(tmp_path / "gone.model")})
    assert "'../x'" in refused({"../x": str(model_dir / "config.json")})
    assert "adapter_config.json" in refused({"adapter_config.json": str(model_dir / "config.json")})
    # a name adapter_extras writes
    assert "chat_template.jinja" in refused({"chat_template.jinja": str(model_dir / "config.json")})


# ---------------------------------------------------------------- in process


def test_train_adapter_round_trips_through_peft(tmp_path, model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, events, plan = run_inprocess(tmp_path, model_dir, **{"train.total_steps": 6})
    assert result.reload is not None and result.reload.ok and result.reload.numeric == "pass"
    assert result.reload.stats["max_abs_logit_diff"] == 0.0  # the same function on the same weights
    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    reloaded = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    ids = torch.tensor([memorize_set(4)[3][0]])
    with torch.no_grad():
        mine = result.model(input_ids=ids).logits
        theirs = reloaded(input_ids=ids).logits
        with reloaded.disable_adapter():
            plain = reloaded(input_ids=ids).logits
    assert (mine - theirs).abs().max() < 1e-5
    assert (mine - plain).abs().max() > 1e-3  # the adapter changes the model
    assert not of_type(events, "finding")


def _one_step(tmp_path, model_dir, batch_size, grad_accum):
    root = tmp_path / f"b{batch_size}x{grad_accum}"
    result, events, _ = run_inprocess(
        root,
        model_dir,
        train=memorize_set(4),
        eval=False,
        **{
            "train.total_steps": 1,
            "train.batch_size": batch_size,
            "train.grad_accum": grad_accum,
            "train.warmup_steps": 0,
            "lora.dropout": 0.0,
            "samples.before": False,
            "samples.items": [],
        },
    )
    from peft import get_peft_model_state_dict

    weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(result.model).items()}
    return losses(events)[1], of_type(events, "step")[0], weights


def test_train_loss_and_update_do_not_depend_on_accumulation(tmp_path, model_dir):
    ref_loss, ref_step, ref_w = _one_step(tmp_path, model_dir, 4, 1)
    for bs, acc in ((2, 2), (1, 4)):
        loss, step, w = _one_step(tmp_path, model_dir, bs, acc)
        assert abs(loss - ref_loss) < 1e-5, (bs, acc, loss, ref_loss)
        assert step["tokens"] == ref_step["tokens"]
        assert abs(step["grad_norm"] - ref_step["grad_norm"]) < 1e-5
        assert max(float((w[k] - ref_w[k]).abs().max()) for k in ref_w) < 1e-5


def test_train_unknown_lora_targets_name_the_linear_modules(tmp_path, model_dir):
    with pytest.raises(EngineError) as err:
        run_inprocess(tmp_path, model_dir, **{"lora.targets": ["query_key_value"], "samples.before": False})
    assert err.value.code == "MODEL_TARGETS_NOT_FOUND"
    assert "query_key_value" in err.value.message and "q_proj" in err.value.message
    assert "lm_head" in err.value.message


def test_train_adapter_that_never_moved_is_reported(tmp_path, model_dir):
    _, events, _ = run_inprocess(
        tmp_path, model_dir, **{"train.total_steps": 1, "train.lr": 1e-12, "samples.before": False}
    )
    found = [e for e in of_type(events, "finding") if e["code"] == "ADAPTER_NEVER_LEARNED"]
    assert found and found[0]["severity"] == "warning" and found[0]["evidence"]["layers"] == ["0", "1"]
    assert any("adapter norms" in e["message"] for e in of_type(events, "log"))


def test_train_nonfinite_loss_stops_without_saving(tmp_path, model_dir, monkeypatch):
    real = loss_mod.token_ce_sum
    calls = []

    def poisoned(model, batch, device):
        calls.append(1)
        ce = real(model, batch, device)
        return ce * float("nan") if len(calls) > 8 else ce  # steps 1-4 fine (2 micro-batches each)

    monkeypatch.setattr(loss_mod, "token_ce_sum", poisoned)
    events: list[dict] = []
    plan = read_plan(
        write_plan(tmp_path, make_plan(tmp_path, model_dir, eval=False, **{"train.save_every": 2}))
    )
    with pytest.raises(EngineError) as err:
        run(plan, events.append)
    assert err.value.code == "TRAIN_NONFINITE_LOSS"
    # detected once, by the monitor: one finding, with the last good step and the losses before it
    (found,) = [e for e in of_type(events, "finding") if e["code"] == "TRAIN_NONFINITE_LOSS"]
    assert found["evidence"]["step"] == 5 and found["evidence"]["last_good_step"] == 4
    assert len(found["evidence"]["recent_losses"]) == 4 and [e["step"] for e in of_type(events, "step")] == [
        1,
        2,
        3,
        4,
    ]
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step-2", "step-4"]
    assert not (tmp_path / "run" / "adapter").exists()


def test_train_greedy_batched_equals_one_by_one(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    prompts = [[1, 50, 60], [1, 70, 80, 90, 100, 110], [1, 5]]
    together = greedy(model, prompts, max_new_tokens=6, stop_ids=[2], pad_id=0)
    alone = [greedy(model, [p], max_new_tokens=6, stop_ids=[2], pad_id=0)[0] for p in prompts]
    assert together == alone
    assert all(len(ids) == 6 and not stopped for ids, stopped in together)
    assert _cut([5, 6, 2, 7], {2}) == ([5, 6], True) and _cut([5, 6], {2}) == ([5, 6], False)


def test_train_relative_plan_paths_resolve_against_the_plan(tmp_path, model_dir):
    plan = make_plan(tmp_path / "a", model_dir, **{"train.total_steps": 1, "samples.before": False})
    (tmp_path / "a" / "tok").mkdir()
    (tmp_path / "a" / "tok" / "tokenizer.model").write_bytes(b"\x00\xffbinary")
    plan["adapter_files"]["tokenizer.model"] = "tok/tokenizer.model"
    write_plan(tmp_path / "a", plan)
    shutil.move(tmp_path / "a", tmp_path / "b")  # copied elsewhere, it still runs
    resolved = read_plan(tmp_path / "b" / "plan.json")
    assert resolved.run_dir == tmp_path / "b" / "run"
    assert resolved.data.train.dir == tmp_path / "b" / "prepared" / "train"
    assert resolved.adapter_files["tokenizer.model"] == tmp_path / "b" / "tok" / "tokenizer.model"
    result = run(resolved, lambda e: None)
    assert result.adapter_dir == tmp_path / "b" / "run" / "adapter"
    assert (result.adapter_dir / "tokenizer.model").read_bytes() == b"\x00\xffbinary"


def test_train_gradient_checkpointing_changes_nothing(tmp_path, model_dir):
    over = {"train.total_steps": 3, "samples.before": False, "samples.items": []}
    _, plain, _ = run_inprocess(tmp_path / "plain", model_dir, eval=False, **over)
    _, ckpt, _ = run_inprocess(
        tmp_path / "gc", model_dir, eval=False, **over, **{"train.gradient_checkpointing": True}
    )
    a, b = losses(plain), losses(ckpt)
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


def test_train_chatglm3_native(tmp_path, fixtures_dir):
    """The first-class family, built natively: trains, samples through its own greedy loop, round-trips."""
    model_dir = fixtures_dir / "models" / "chatglm3-single"
    plan = make_plan(
        tmp_path,
        model_dir,
        **{
            "model.family": "chatglm",
            "model.model_type": "chatglm",
            "lora.targets": ["query_key_value"],
            "train.total_steps": 4,
        },
    )
    events: list[dict] = []
    result = run(read_plan(write_plan(tmp_path, plan)), events.append)
    assert not [e for e in events if e["type"] == "finding" and e["severity"] == "error"]
    assert of_type(events, "start")[0]["lora_modules"] == 2
    assert len(of_type(events, "sample")) == 4 and result.reload.ok and not result.reload.structural
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["target_modules"] == ["query_key_value"]


def test_train_overfitting_stops_early_and_keeps_the_best_checkpoint(tmp_path, model_dir):
    """Planted overfitting: eval prompts are the training prompts with other answers, so eval loss rises
    as the training set is memorized. With patience the run stops and the adapter is the best eval step."""
    train = memorize_set(8)
    wrong = [(x[: len(x) - len(y) + sum(1 for t in y if t == -100)], None) for x, y in train]
    evalset = []
    for (x, y), _ in zip(train, wrong, strict=True):
        n_prompt = sum(1 for t in y if t == -100)
        answer = [(t * 7 + 3) % 190 + 10 for t in x[n_prompt:-1]] + [2]
        evalset.append((x[:n_prompt] + answer, [-100] * n_prompt + answer))
    result, events, plan = run_inprocess(
        tmp_path,
        model_dir,
        train=train,
        eval=evalset,
        **{"train.total_steps": 40, "train.epochs": 20, "train.eval_every": 2, "train.patience": 6},
        **{"train.keep_checkpoints": 1, "train.save_every": 2, "lora.dropout": 0.0},
    )
    codes = [e["code"] for e in events if e["type"] == "finding"]
    assert "TRAIN_OVERFITTING" in codes
    evals = [(e["step"], e["loss"]) for e in events if e["type"] == "eval"]
    best_step = min(evals, key=lambda se: se[1])[0]
    assert result.step < 40, "early stopping ends the run before total_steps"
    assert any("early stopping" in e.get("message", "") for e in events if e["type"] == "log")
    # The best checkpoint survived pruning, and the adapter written is its weights.
    best = Path(tmp_path) / "run" / "checkpoints" / f"step-{best_step}" / "adapter_model.safetensors"
    assert best.is_file()
    from safetensors.torch import load_file

    written = load_file(str(Path(result.adapter_dir) / "adapter_model.safetensors"))
    kept = load_file(str(best))
    assert written.keys() == kept.keys()
    assert all(torch.equal(written[k], kept[k]) for k in written)


@pytest.mark.parametrize(("accum", "ckpt"), [(1, False), (2, False), (2, "low_memory")])
def test_train_chatglm3_fast_path_matches_the_padded_loop(tmp_path, fixtures_dir, accum, ckpt):
    """The training loop through lorakit_engine.kernels (packed rows, fused loss, fused LoRA) gives the padded
    loop's losses, gradient norms, eval losses and adapter (float32, dropout 0). Forced on the CPU here, where
    packed attention is SDPA with a block mask; on CUDA it is varlen attention. With `gradient_checkpointing:
    low_memory` the fast path recomputes layers and MLP chunks (the padded loop: plain checkpointing)."""
    model_dir = fixtures_dir / "models" / "chatglm3-single"
    over = {
        **CHATGLM3,
        "train.total_steps": 4,
        "train.batch_size": 3,
        "train.grad_accum": accum,
        "train.gradient_checkpointing": ckpt,
    }
    runs = {}
    for fast_path in (False, True):
        root = tmp_path / f"fast-{fast_path}"
        plan = make_plan(root, model_dir, **over, **{"train.fast_path": fast_path})
        events: list[dict] = []
        result = run(read_plan(write_plan(root, plan)), events.append)
        runs[fast_path] = (events, result)
    (plain, r0), (fast, r1) = runs[False], runs[True]
    mode = {False: "none", "low_memory": "low_memory"}[ckpt]
    assert any(
        "fast path: packed rows" in e.get("message", "")
        and f"checkpointing: {mode}; attention: sdpa with a block-diagonal mask" in e["message"]
        for e in fast
        if e["type"] == "log"
    )
    assert not any("fast path" in e.get("message", "") for e in plain if e["type"] == "log")
    for kind, key in (("step", "loss"), ("step", "grad_norm"), ("eval", "loss")):
        a = [e[key] for e in of_type(plain, kind)]
        b = [e[key] for e in of_type(fast, kind)]
        assert len(a) == len(b) > 0
        assert all(abs(x - y) <= 1e-5 * max(1.0, abs(x)) for x, y in zip(a, b, strict=True)), (kind, a, b)
    from safetensors.torch import load_file

    wa = load_file(str(Path(r0.adapter_dir) / "adapter_model.safetensors"))
    wb = load_file(str(Path(r1.adapter_dir) / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_profile_of_chosen_steps_is_written_per_rank(tmp_path, fixtures_dir):
    """The plan's profile {dir, first_step, steps} writes profile-rank0.txt over those steps, also when
    training ends inside them (relative to the plan, like every path in it)."""
    model_dir = fixtures_dir / "models" / "tiny-llama"
    root = tmp_path / "run"
    profile = {"dir": "prof", "first_step": 2, "steps": 5}  # past the last step: written at the end
    plan = make_plan(root, model_dir, **{"train.total_steps": 3, "profile": profile})
    run(read_plan(write_plan(root, plan)), lambda e: None)
    text = (root / "prof" / "profile-rank0.txt").read_text()
    assert text.startswith("rank 0, steps 2..3") and "step wall ms: 2: " in text and ", 3: " in text


def test_a_stop_during_the_last_step_finishes_the_run(tmp_path, model_dir):
    """Control lines take effect after the step that read them: a stop read at the start of the last step
    comes after all the work, so the run ends complete (final eval, adapter, not stopped early)."""
    from lorakit_engine.control import Controls

    root = tmp_path / "run"
    plan = read_plan(write_plan(root, make_plan(root, model_dir, **{"train.total_steps": 3})))
    controls, events = Controls(), []

    def emit(e):
        events.append(e)
        if e["type"] == "step" and e["step"] == 2:  # read when step 3, the last, starts
            controls.put("stop")

    result = run(plan, emit, controls)
    done = events[-1]
    assert done["type"] == "done" and done["step"] == 3 and done["stopped_early"] is False
    assert not result.stopped_early and of_type(events, "eval")


def test_a_stop_during_a_step_ends_the_run_after_that_step(tmp_path, model_dir):
    """Ctrl-C while a step computes: that step finishes, a checkpoint of it is saved and the run stops there,
    not one step later (the stop comes after the step read its control lines)."""
    from lorakit_engine.control import Controls

    class StopDuringStep3(Controls):
        reads = 0

        def take(self):
            taken = super().take()
            self.reads += 1
            if self.reads == 3:  # step 3 has read its (empty) control lines and computes when the stop comes
                self.put("stop")
            return taken

    root = tmp_path / "run"
    plan = read_plan(write_plan(root, make_plan(root, model_dir, **{"train.total_steps": 8})))
    events: list[dict] = []
    result = run(plan, events.append, StopDuringStep3())
    assert [e["step"] for e in of_type(events, "step")] == [1, 2, 3]
    assert of_type(events, "checkpoint")[-1]["step"] == 3
    done = events[-1]
    assert done["type"] == "done" and done["step"] == 3 and done["stopped_early"] is True
    assert result.stopped_early
