"""GPU check of the training loop's fast path: the same tiny ChatGLM3 run (bf16, dropout 0) through the padded
loop (train.fast_path false) and through lorakit_engine.kernels (train.fast_path true: packed rows, varlen
attention, fused loss and LoRA; and again with its own layer checkpointing), losses side by side. Run on the
GPU machine from the repository root:

    python3 bench/check_fast_train.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "engine"), str(ROOT / "engine" / "tests")]

from fixtures.build_all import main as build_fixtures  # noqa: E402
from lorakit_engine.plan import read_plan  # noqa: E402
from lorakit_engine.run import run  # noqa: E402
from prepared import CHATGLM3, make_plan, memorize_set, of_type, write_plan  # noqa: E402


def main() -> int:
    tmp = Path(tempfile.mkdtemp())
    build_fixtures(["--out", str(tmp / "fixtures")])
    model_dir = tmp / "fixtures" / "models" / "chatglm3-single"
    rows = {}
    # (name, train.fast_path, train.gradient_checkpointing): the fast path with its own checkpointing too
    for name, fast_path, ckpt in (("padded", False, False), ("fast", True, False), ("fast+ckpt", True, True)):
        root = tmp / f"run-{name}"
        plan = make_plan(
            root,
            model_dir,
            train=memorize_set(24),
            **{
                **CHATGLM3,
                "train.total_steps": 12,
                "train.batch_size": 4,
                "train.device": "cuda",
                "train.precision": "bf16",
                "train.gradient_checkpointing": ckpt,
                "train.fast_path": fast_path,
            },
        )
        events: list[dict] = []
        run(read_plan(write_plan(root, plan)), events.append)
        fast = any("fast path" in e.get("message", "") for e in events if e["type"] == "log")
        errors = [e["code"] for e in events if e["type"] == "finding" and e["severity"] == "error"]
        rows[name] = ([e["loss"] for e in of_type(events, "step")], fast, errors)
    (a, fa, ea), (b, fb, eb), (c, fc, ec) = rows["padded"], rows["fast"], rows["fast+ckpt"]
    print(f"padded loop: fast path {fa}, errors {ea}; kernels loop: fast path {fb}, errors {eb}; ", end="")
    print(f"kernels loop with checkpointing: fast path {fc}, errors {ec}")
    print("step | padded loss | fast-path loss | rel. diff | fast path + checkpointing | rel. diff")
    worst = 0.0
    for i, (x, y, z) in enumerate(zip(a, b, c, strict=True), 1):
        rel, rel_c = abs(x - y) / max(abs(x), 1e-9), abs(x - z) / max(abs(x), 1e-9)
        worst = max(worst, rel, rel_c)
        print(f"{i:4d} | {x:.5f} | {y:.5f} | {rel:.2e} | {z:.5f} | {rel_c:.2e}")
    print(f"worst relative difference {worst:.2e} (bf16)")
    ok = fb and fc and not fa and not (ea or eb or ec)
    return 0 if ok and worst < 2e-2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
