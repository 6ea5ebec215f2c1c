"""The adapter reload check (lorakit_engine/verify/) proven both ways: silent on a healthy run, failing on
planted faults in the saved adapter — wrong target names, wrong scaling, a dropped tensor, B saved as zeros.

Each case runs on the CPU in float32 and bf16 through the fast path (train.fast_path: fused LoRA), and on
CUDA when there is one (bf16 and fp32, the fast path with its Triton kernels). On the GPU machine:

    python3 -m pytest engine/tests/test_reload_check.py -q      (with PYTHONPATH=engine)

A trained tiny ChatGLM3 (lr 1e-2, the adapter's effect well above the noise) is checked against copies of its
adapter/ with one fault each; a two-step smoke-like run (lr 1e-4, the effect at the noise) must pass, its
numbers inconclusive in bf16, and a fault in it must still fail on the structure alone.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from prepared import make_plan, write_plan
from safetensors.torch import load_file, save_file

from lorakit_engine import verify
from lorakit_engine.data import Prepared
from lorakit_engine.plan import Plan, read_plan
from lorakit_engine.protocol import schema_errors
from lorakit_engine.run import Result, run

CASES = [("cpu", "fp32"), ("cpu", "bf16")]
if torch.cuda.is_available():
    CASES += [("cuda", "bf16"), ("cuda", "fp32")]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
RECIPE = {  # the Self-LLM recipe's adapter: query_key_value, r 8, alpha 32, dropout 0.1
    "model.family": "chatglm",
    "model.model_type": "chatglm",
    "lora.targets": ["query_key_value"],
    "lora.r": 8,
    "lora.alpha": 32,
    "lora.dropout": 0.1,
}


@dataclass
class Trained:
    result: Result
    plan: Plan
    device: torch.device
    dtype: torch.dtype
    events: list[dict]

    def batch(self):
        ev = self.plan.data.eval
        train = Prepared(self.plan.data.train.dir)
        return verify.reference_batch(Prepared(ev.dir) if ev else None, train, self.plan.data.pad_id)

    def check(self, adapter_dir: Path) -> tuple[verify.Verdict, list[dict]]:
        """The reload check of `adapter_dir` against the trained model, as the run makes it."""
        events: list[dict] = []

        def emit(e):
            assert schema_errors("event", e) == [], e
            events.append(e)

        model = self.result.model.to(self.device)  # the run left it on the CPU (one base on a GPU)
        batch = self.batch()
        verdict = verify.reload_check(model, adapter_dir, self.plan, batch, self.dtype, self.device, emit)
        return verdict, [e for e in events if e["type"] == "finding"]


def train(root: Path, model_dir: Path, device: str, precision: str, **over) -> Trained:
    plan = make_plan(
        root,
        model_dir,
        **{
            **RECIPE,
            "train.device": device,
            "train.precision": precision,
            "train.fast_path": True,  # the fast path, also on the CPU
            "train.total_steps": 12,
            "train.lr": 1e-2,
            **over,
        },
    )
    plan = read_plan(write_plan(root, plan))
    events: list[dict] = []
    result = run(plan, events.append)
    return Trained(result, plan, torch.device(device), DTYPES[precision], events)


@pytest.fixture(scope="module", params=CASES, ids=[f"{d}-{p}" for d, p in CASES])
def trained(request, fixtures_dir, tmp_path_factory):
    device, precision = request.param
    root = tmp_path_factory.mktemp(f"trained-{device}-{precision}")
    return train(root, fixtures_dir / "models" / "chatglm3-single", device, precision)


# ---------------------------------------------------------------- planted faults, one per copy of adapter/


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "adapter_model.safetensors"))


def _write_tensors(d: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})


def _edit_config(d: Path, **changes) -> None:
    path = d / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def wrong_targets(d: Path) -> None:
    """adapter_config names another module: peft puts fresh (B = 0) adapters there, the saved ones nowhere."""
    _edit_config(d, target_modules=["dense"])


def wrong_tensor_names(d: Path) -> None:
    """The tensors and the config name a module the base does not have."""
    tensors = {k.replace("query_key_value", "qkv_proj"): v for k, v in _tensors(d).items()}
    _write_tensors(d, tensors)
    _edit_config(d, target_modules=["qkv_proj"])


def wrong_scaling(d: Path) -> None:
    """lora_alpha 32 → 16: every module scales its update by 2 instead of 4."""
    _edit_config(d, lora_alpha=16)


def dropped_tensor(d: Path) -> None:
    """One of the two LoRA B matrices is not saved."""
    tensors = _tensors(d)
    del tensors[sorted(k for k in tensors if "lora_B" in k)[-1]]
    _write_tensors(d, tensors)


def b_saved_as_zeros(d: Path) -> None:
    _write_tensors(d, {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in _tensors(d).items()})


FAULTS = {
    "wrong_targets": (wrong_targets, "target_modules"),
    "wrong_tensor_names": (wrong_tensor_names, "qkv_proj"),
    "wrong_scaling": (wrong_scaling, "lora_alpha"),
    "dropped_tensor": (dropped_tensor, "lacks 1 of the adapter's 4 tensors"),
    "b_saved_as_zeros": (b_saved_as_zeros, "(all zeros)"),
}


def planted(trained: Trained, tmp_path: Path, fault) -> Path:
    d = tmp_path / "adapter"
    shutil.copytree(trained.result.adapter_dir, d)
    fault(d)
    return d


# ---------------------------------------------------------------- the trained model


def test_healthy_run_passes_exactly(trained):
    """The run's own check: no finding, the files and peft's load as trained, and the numbers judged (the
    effect stands far above the noise) with the reloaded logits equal to the trained ones bit for bit: both
    sides compute the same functions (peft's LoRA arithmetic in eval, the eager elementwise ops)."""
    errors = [e for e in trained.events if e["type"] == "finding" and e["severity"] == "error"]
    assert errors == []
    v = trained.result.reload
    assert v.ok and v.structural == [] and v.numeric == "pass", v
    assert v.stats["effect_over_noise"] >= verify.CONCLUSIVE
    assert v.stats["top1_agreement"] == 1.0
    if trained.device.type == "cpu":
        assert v.stats["max_abs_logit_diff"] == 0.0
    else:  # the same kernels on one GPU should agree bit for bit too; the check itself only needs this much
        assert v.stats["error_rel_effect"] <= 1e-3, v.stats


def test_the_check_is_repeatable_on_the_same_files(trained):
    verdict, findings = trained.check(trained.result.adapter_dir)
    assert verdict.ok and findings == [] and verdict.numeric == "pass"


@pytest.mark.parametrize("name", list(FAULTS))
def test_planted_fault_fails_structure_and_numbers(trained, tmp_path, name):
    fault, says = FAULTS[name]
    verdict, findings = trained.check(planted(trained, tmp_path, fault))
    assert not verdict.ok
    assert [f["code"] for f in findings] == ["ADAPTER_RELOAD_MISMATCH"]
    assert findings[0]["severity"] == "error"
    assert any(says in p for p in verdict.structural), verdict.structural
    # The numbers see it too, on their own, where peft could load the files at all.
    if name == "wrong_tensor_names":
        assert verdict.numeric == "not run"
        assert any("peft cannot load" in p for p in verdict.structural)
    else:
        assert verdict.numeric == "fail", verdict
        assert verdict.reason and findings[0]["evidence"]["reason"] == verdict.reason


# ---------------------------------------------------------------- a smoke run: the effect within the noise


@pytest.fixture(scope="module", params=CASES, ids=[f"{d}-{p}" for d, p in CASES])
def smoke(request, fixtures_dir, tmp_path_factory):
    device, precision = request.param
    root = tmp_path_factory.mktemp(f"smoke-{device}-{precision}")
    over = {"train.total_steps": 2, "train.lr": 1e-4, "train.warmup_steps": 0, "train.batch_size": 2}
    return train(root, fixtures_dir / "models" / "chatglm3-single", device, precision, **over)


def test_smoke_run_passes_with_numbers_inconclusive_in_bf16(smoke):
    errors = [e for e in smoke.events if e["type"] == "finding" and e["severity"] == "error"]
    assert errors == []
    v = smoke.result.reload
    assert v.ok and v.structural == []
    if smoke.dtype == torch.bfloat16:
        assert v.numeric == "inconclusive", v.stats  # two steps of lr 1e-4 move the logits by bf16 noise
        assert v.stats["effect_over_noise"] < verify.CONCLUSIVE
    else:
        assert v.numeric in ("pass", "inconclusive")


@pytest.mark.parametrize("name", ["b_saved_as_zeros", "dropped_tensor", "wrong_scaling"])
def test_smoke_run_fault_fails_on_the_structure_alone(smoke, tmp_path, name):
    """An effect within the noise cannot judge (an absolute max |Δlogit| bound let these pass in bf16); the
    exact comparison of the files and of peft's load still fails them."""
    fault, says = FAULTS[name]
    verdict, findings = smoke.check(planted(smoke, tmp_path, fault))
    assert not verdict.ok and [f["code"] for f in findings] == ["ADAPTER_RELOAD_MISMATCH"]
    assert any(says in p for p in verdict.structural)
    if smoke.dtype == torch.bfloat16:
        assert verdict.numeric in ("inconclusive", "fail")


# ---------------------------------------------------------------- the numeric verdict alone


def _logits(seed: int, n: int = 64, v: int = 512) -> torch.Tensor:
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * 3


def test_numbers_within_the_noise_are_inconclusive_not_an_error():
    """A bf16-sized wobble on an effect of the same size: a large max |Δlogit| (over 0.05), yet no verdict."""
    base = _logits(0)
    noise = 0.01 * base.norm() / base.numel() ** 0.5
    trained = base + noise * _logits(1) / 3
    logits = verify.Logits(trained, base, base + noise * _logits(2) / 3, trained + noise * _logits(3) / 3)
    verdict, reason, stats = verify.numeric_verdict(logits, torch.bfloat16)
    assert stats["max_abs_logit_diff"] > 0.05
    assert verdict == "inconclusive" and reason is None


def test_numbers_judge_the_effect_and_the_top1_tokens():
    base, shift = _logits(0), _logits(1)
    trained = base + shift
    same = verify.Logits(trained, base, base, trained.clone(), base)
    assert verify.numeric_verdict(same, torch.bfloat16)[0] == "pass"
    half = verify.Logits(trained, base, base, base + 0.5 * shift, base)
    verdict, reason, _ = verify.numeric_verdict(half, torch.bfloat16)
    assert verdict == "fail" and "50% of the trained adapter's effect" in reason
    nan = verify.Logits(trained, base, base, torch.full_like(trained, float("nan")), base)
    assert verify.numeric_verdict(nan, torch.float32)[1] == "the reloaded model's logits are not finite"


# ---------------------------------------------------------------- the fused LoRA's eval forward is peft's


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_lora_eval_forward_is_pefts_bit_for_bit(dtype):
    """In eval the fused LoRA computes what peft computes (x cast to the float32 adapter, the delta added in
    float32, one rounding), not the training forward's half-precision delta; dropout is off."""
    from peft import LoraConfig, get_peft_model
    from torch import nn

    from lorakit_engine.kernels import fuse_lora

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == torch.float16 and device == "cpu":
        pytest.skip("float16 matrix products: CUDA")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 96), nn.Linear(96, 32)).to(device=device, dtype=dtype)
    model = get_peft_model(net, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=["0", "1"]))
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn_like(p.data, dtype=torch.float32) * 0.05
    model.eval()
    x = torch.randn(5, 7, 64, device=device, dtype=dtype)
    with torch.no_grad():
        want = model(x)
        fuse_lora(model, True)
        got = model(x)
        fuse_lora(model, False)
    assert got.dtype == want.dtype == dtype
    assert torch.equal(got, want)
