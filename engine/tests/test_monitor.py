"""The live monitors on synthetic loss curves, with exact expectations: which code, at which step, once."""

from __future__ import annotations

import math
import random

import pytest

from lorakit_engine.monitor import Monitor
from lorakit_engine.protocol import schema_errors


def decaying(step: int) -> float:
    return 3.0 * math.exp(-step / 50) + 1.0


def noisy_decay(total: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [decaying(s) * (1 + rng.uniform(-0.03, 0.03)) for s in range(1, total + 1)]


def feed(mon: Monitor, losses, start: int = 1, grad: float = 1.0, delta: float | None = None):
    """All findings, as (step, code), for a run of losses."""
    out = []
    for i, loss in enumerate(losses):
        step = start + i
        for f in mon.observe_step(step, loss, grad, delta):
            assert schema_errors("event", f) == [], f
            assert "{" not in f["title"] + f["fix"], f  # every template key in the evidence
            out.append((step, f["code"], f))
    return out


def codes(found) -> list[tuple[int, str]]:
    return [(s, c) for s, c, _ in found]


def test_healthy_curve_reports_nothing():
    mon = Monitor(200, patience=2)
    losses = noisy_decay(200)
    found = feed(mon, losses)
    for step in range(20, 201, 20):  # eval loss falling with the train loss
        found += [(step, f["code"], f) for f in mon.observe_eval(step, decaying(step) + 0.2)]
    assert found == []
    assert mon.best_step == 200 and not mon.should_stop_early and not mon.stop


def test_nonfinite_loss_once_with_last_good_step():
    mon = Monitor(100)
    found = feed(mon, [decaying(s) for s in range(1, 23)] + [float("nan"), None, float("inf")])
    assert codes(found) == [(23, "TRAIN_NONFINITE_LOSS")]
    ev = found[0][2]["evidence"]
    assert ev["step"] == 23 and ev["last_good_step"] == 22 and ev["loss"] == "nan"
    assert found[0][2]["severity"] == "error"
    assert mon.stop and mon.last_good_step == 22


def test_nonfinite_grad_norm_is_divergence_unless_loss_scaling_skips_it():
    mon = Monitor(100)
    assert [f["code"] for f in mon.observe_step(1, 2.0, math.inf)] == ["TRAIN_NONFINITE_LOSS"]
    scaled = Monitor(100, loss_scaling=True)
    assert scaled.observe_step(1, 2.0, math.inf) == [] and not scaled.stop
    assert [f["code"] for f in scaled.observe_step(2, math.nan, 1.0)] == ["TRAIN_NONFINITE_LOSS"]


def test_loss_at_zero_early_is_an_error_late_is_not():
    mon = Monitor(100)  # early = the first 10 steps
    found = feed(mon, [2.0, 1.0, 0.1, 0.01, 0.0004, 0.0002])
    assert codes(found) == [(5, "TRAIN_LOSS_ZERO")]
    assert found[0][2]["evidence"]["early_steps"] == 10
    late = Monitor(100)
    assert feed(late, [decaying(s) for s in range(1, 11)]) == []
    assert late.observe_step(50, 0.0004, 1.0) == []


def test_spike_reported_once_at_the_first_spike():
    mon = Monitor(100)
    losses = [decaying(s) for s in range(1, 101)]
    losses[36] = 10.0  # step 37
    losses[59] = 12.0  # step 60: counted, not reported again
    losses[79] = decaying(80) * 1.5  # above mean + k·std but not 2× the median: not a spike
    found = feed(mon, losses)
    assert codes(found) == [(37, "TRAIN_LOSS_SPIKE")]
    ev = found[0][2]["evidence"]
    assert ev["window"] == 20 and ev["loss"] == 10.0
    assert ev["window_median"] == pytest.approx((decaying(26) + decaying(27)) / 2, abs=1e-6)
    assert mon.spikes == [37, 60]


def test_spike_needs_half_a_window_of_history():
    mon = Monitor(100)
    assert feed(mon, [2.0, 2.0, 2.0, 9.0]) == []  # 3 previous losses: too few to judge


def test_plateau_flat_from_the_start():
    mon = Monitor(100)  # window min(50, max(10, 100 // 2)) = 50
    flat = [2.5 + (0.001 if s % 2 else -0.001) for s in range(1, 101)]
    found = feed(mon, flat)
    assert codes(found) == [(50, "TRAIN_PLATEAU")]
    ev = found[0][2]["evidence"]
    assert ev["window"] == [1, 50] and abs(ev["relative_change"]) < 0.01 and ev["adapter_delta_norm"] is None


def test_plateau_needs_a_tiny_adapter_delta_when_one_is_given():
    flat = [2.5 + (0.001 if s % 2 else -0.001) for s in range(1, 101)]
    moving = Monitor(100)
    assert feed(moving, flat, delta=0.5) == []
    frozen = Monitor(100)
    assert codes(feed(frozen, flat, delta=1e-7)) == [(50, "TRAIN_PLATEAU")]


def test_converged_is_not_a_plateau():
    mon = Monitor(200)
    fast = [3.0 * math.exp(-s / 5) + 1.0 for s in range(1, 201)]  # flat after ~30 steps, far below the start
    assert feed(mon, fast) == []


def test_short_runs_use_a_shorter_plateau_window():
    mon = Monitor(24)  # window max(10, 24 // 2) = 12
    found = feed(mon, [2.0] * 24)
    assert codes(found) == [(12, "TRAIN_PLATEAU")]


def test_overfitting_best_step_and_early_stop():
    mon = Monitor(100, patience=2)
    feed(mon, [decaying(s) for s in range(1, 61)])
    evals = {10: 2.0, 20: 1.8, 30: 1.7, 40: 1.75, 50: 1.8, 60: 1.9}
    found, stop_at = [], None
    for step, loss in evals.items():
        found += [(step, f["code"], f) for f in mon.observe_eval(step, loss)]
        if stop_at is None and mon.should_stop_early:
            stop_at = step
    assert codes(found) == [(60, "TRAIN_OVERFITTING")]
    ev = found[0][2]["evidence"]
    assert ev["best_step"] == 30 and ev["best_eval_loss"] == 1.7
    assert ev["evals"] == [[30, 1.7], [40, 1.75], [50, 1.8], [60, 1.9]]
    assert ev["train_loss_now"] < ev["train_loss_then"]
    assert mon.best_step == 30 and stop_at == 50


def test_eval_rising_with_train_rising_is_not_overfitting():
    mon = Monitor(100)
    feed(mon, [1.0 + s / 100 for s in range(1, 61)])  # train loss climbing too (divergence, not overfitting)
    found = []
    for step, loss in {10: 1.0, 20: 1.1, 30: 1.2, 40: 1.3}.items():
        found += mon.observe_eval(step, loss)
    assert found == [] and mon.best_step == 10 and not mon.should_stop_early  # no patience set


def test_nonfinite_eval_loss_is_skipped():
    mon = Monitor(100)
    assert mon.observe_eval(10, None) == [] and mon.observe_eval(20, math.nan) == []
    assert mon.best_step is None and mon.evals == []
