"""Live training monitors: the training loop hands every optimizer step's loss and gradient norm, and
every eval loss, to one `Monitor`, and emits what comes back (finding events, each code reported once; titles
and fixes from protocol/findings.json).

    TRAIN_NONFINITE_LOSS  non-finite loss/grad: the loop stops and keeps its last good checkpoint (`stop`,
                          `last_good_step`)
    TRAIN_LOSS_ZERO       below `loss_floor` within the first `early_fraction` of the steps
    TRAIN_LOSS_SPIKE      loss > mean + k·std of the previous `spike_window` losses and > `spike_ratio` ×
                          their median
    TRAIN_PLATEAU         relative change over `plateau_window` steps ≈ 0, no drop since the start, adapter
                          delta tiny (when given)
    TRAIN_OVERFITTING     eval loss rose `overfit_evals` times in a row while the train loss fell; `best_step`
                          names the checkpoint to keep, `should_stop_early` turns true after `patience` evals
                          without a new best (when `patience` is set)
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from .findings import finding_event

_TRAIN_TREND = 5  # train losses averaged on each side when checking that the train loss fell


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _num(x: float | None) -> float | str | None:
    """A JSON-safe number for evidence: NaN and ±Inf as text."""
    if x is None:
        return None
    return round(x, 6) if math.isfinite(x) else str(x)


class Monitor:
    def __init__(
        self,
        total_steps: int,
        *,
        loss_floor: float = 1e-3,
        early_fraction: float = 0.1,
        spike_window: int = 20,
        spike_k: float = 4.0,
        spike_ratio: float = 2.0,
        plateau_window: int = 50,
        plateau_rel: float = 0.01,
        plateau_drop: float = 0.1,
        plateau_delta: float = 1e-3,
        overfit_evals: int = 3,
        patience: int | None = None,
        loss_scaling: bool = False,
    ):
        """`loss_scaling`: fp16 with a GradScaler, whose overflowing steps are skipped by design, so a
        non-finite gradient norm alone is not a finding (a non-finite loss still is)."""
        self.total_steps = max(1, int(total_steps))
        self.loss_floor = loss_floor
        self.early_steps = max(1, math.ceil(early_fraction * self.total_steps))
        self.spike_window, self.spike_k, self.spike_ratio = spike_window, spike_k, spike_ratio
        self.plateau_window = min(plateau_window, max(10, self.total_steps // 2))
        self.plateau_rel, self.plateau_drop, self.plateau_delta = plateau_rel, plateau_drop, plateau_delta
        self.overfit_evals = overfit_evals
        self.patience = patience
        self.loss_scaling = loss_scaling

        self.losses: list[tuple[int, float]] = []  # finite train losses, in order
        self.evals: list[tuple[int, float]] = []
        self.spikes: list[int] = []  # every step that spiked (the finding reports the first)
        self.reported: set[str] = set()
        self.stop = False  # a non-finite step was seen: stop and keep the last good checkpoint
        self.last_good_step: int | None = None
        self.best_step: int | None = None
        self.best_eval_loss: float | None = None
        self.evals_since_best = 0

    @property
    def should_stop_early(self) -> bool:
        return (
            self.patience is not None
            and self.best_step is not None
            and self.evals_since_best >= self.patience
        )

    def _once(self, code: str, evidence: dict[str, Any]) -> list[dict[str, Any]]:
        if code in self.reported:
            return []
        self.reported.add(code)
        return [finding_event(code, evidence)]

    # ------------------------------------------------------------ train steps

    def observe_step(
        self, step: int, loss: float | None, grad_norm: float | None, adapter_delta_norm: float | None = None
    ) -> list[dict[str, Any]]:
        """One optimizer step. `None` stands for a non-finite value (as in the step event). Call it only
        for windows that hold trained tokens. `adapter_delta_norm`: ‖ΔW‖ over the LoRA modules, when
        known."""
        bad_grad = not self.loss_scaling and not _finite(grad_norm)
        if not _finite(loss) or bad_grad:
            self.stop = True
            recent = [_num(x) for _, x in self.losses[-5:]]
            return self._once(
                "TRAIN_NONFINITE_LOSS",
                {
                    "step": step,
                    "loss": _num(loss) if loss is not None else "nan",
                    "grad_norm": _num(grad_norm) if grad_norm is not None else "nan",
                    "last_good_step": self.last_good_step,
                    "recent_losses": recent,
                },
            )
        assert loss is not None
        out: list[dict[str, Any]] = []
        previous = [x for _, x in self.losses[-self.spike_window :]]
        self.losses.append((step, loss))
        self.last_good_step = step

        if loss < self.loss_floor and step <= self.early_steps:
            out += self._once(
                "TRAIN_LOSS_ZERO",
                {
                    "step": step,
                    "loss": _num(loss),
                    "floor": self.loss_floor,
                    "early_steps": self.early_steps,
                    "total_steps": self.total_steps,
                },
            )

        if len(previous) >= max(5, self.spike_window // 2):
            mean = statistics.fmean(previous)
            std = statistics.pstdev(previous)
            median = statistics.median(previous)
            if loss > mean + self.spike_k * std and loss > self.spike_ratio * median:
                self.spikes.append(step)
                out += self._once(
                    "TRAIN_LOSS_SPIKE",
                    {
                        "step": step,
                        "loss": _num(loss),
                        "window": len(previous),
                        "window_mean": _num(mean),
                        "window_std": _num(std),
                        "window_median": _num(median),
                        "k": self.spike_k,
                        "ratio": self.spike_ratio,
                    },
                )

        out += self._plateau(step, adapter_delta_norm)
        return out

    def _plateau(self, step: int, delta: float | None) -> list[dict[str, Any]]:
        n = self.plateau_window
        if "TRAIN_PLATEAU" in self.reported or len(self.losses) < n:
            return []
        ys = [x for _, x in self.losses[-n:]]
        mean = statistics.fmean(ys)
        xbar = (n - 1) / 2
        slope = sum((i - xbar) * (y - mean) for i, y in enumerate(ys)) / sum(
            (i - xbar) ** 2 for i in range(n)
        )
        rel = slope * (n - 1) / abs(mean) if mean else 0.0
        initial = statistics.fmean(x for _, x in self.losses[: min(5, n)])
        dropped = 1 - mean / initial if initial else 0.0
        if abs(rel) >= self.plateau_rel or dropped > self.plateau_drop:
            return []
        if delta is not None and delta >= self.plateau_delta:
            return []
        return self._once(
            "TRAIN_PLATEAU",
            {
                "window": [self.losses[-n][0], step],
                "relative_change": _num(rel),
                "window_mean": _num(mean),
                "initial_loss": _num(initial),
                "drop_since_start": _num(dropped),
                "adapter_delta_norm": _num(delta),
                "thresholds": {
                    "relative_change": self.plateau_rel,
                    "drop": self.plateau_drop,
                    "adapter_delta_norm": self.plateau_delta,
                },
            },
        )

    # ------------------------------------------------------------ evals

    def observe_eval(self, step: int, eval_loss: float | None) -> list[dict[str, Any]]:
        """One evaluation. Tracks `best_step` (lowest eval loss); a non-finite eval loss is skipped."""
        if not _finite(eval_loss):
            return []
        assert eval_loss is not None
        self.evals.append((step, eval_loss))
        if self.best_eval_loss is None or eval_loss < self.best_eval_loss:
            self.best_step, self.best_eval_loss, self.evals_since_best = step, eval_loss, 0
        else:
            self.evals_since_best += 1
        n = self.overfit_evals
        if len(self.evals) < n + 1:
            return []
        span = self.evals[-(n + 1) :]
        if not all(b[1] > a[1] for a, b in zip(span, span[1:], strict=False)):
            return []
        then = [x for s, x in self.losses if s <= span[0][0]][-_TRAIN_TREND:]
        now = [x for s, x in self.losses if s <= step][-_TRAIN_TREND:]
        if not then or not now or not statistics.fmean(now) < statistics.fmean(then):
            return []
        return self._once(
            "TRAIN_OVERFITTING",
            {
                "evals": [[s, _num(x)] for s, x in span],
                "train_loss_then": _num(statistics.fmean(then)),
                "train_loss_now": _num(statistics.fmean(now)),
                "best_step": self.best_step,
                "best_eval_loss": _num(self.best_eval_loss),
                "patience": self.patience,
            },
        )
