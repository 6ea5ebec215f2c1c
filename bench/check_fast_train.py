"""GPU check of the training loop's fast path: the same tiny ChatGLM3 run (bf16, dropout 0) through the padded
loop (LORAKIT_FAST=0) and through lorakit_engine.kernels (LORAKIT_FAST=auto: packed rows, varlen attention,
fused loss and LoRA), losses side by side. Run on the GPU machine from the repository root:

    python3 bench/check_fast_train.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "engine"), str(ROOT / "engine" / "tests")]

from fixtures.build_all import main as build_fixtures  # noqa: E402
from lorakit_engine import train as train_mod  # noqa: E402
from lorakit_engine.protocol import read_plan  # noqa: E402
from prepared import make_plan, memorize_set, of_type, write_plan  # noqa: E402


def main() -> int:
    tmp = Path(tempfile.mkdtemp())
    build_fixtures(["--out", str(tmp / "fixtures")])
    model_dir = tmp / "fixtures" / "models" / "chatglm3-single"
    rows = {}
    for mode in ("0", "auto"):
        os.environ["LORAKIT_FAST"] = mode
        root = tmp / f"run-{mode}"
        plan = make_plan(
            root,
            model_dir,
            train=memorize_set(24),
            **{
                "model.family": "chatglm",
                "model.model_type": "chatglm",
                "lora.targets": ["query_key_value"],
                "lora.dropout": 0.0,
                "train.total_steps": 12,
                "train.batch_size": 4,
                "train.device": "cuda",
                "train.precision": "bf16",
            },
        )
        events: list[dict] = []
        train_mod.run(read_plan(write_plan(root, plan)), events.append)
        fast = any("fast path" in e.get("message", "") for e in events if e["type"] == "log")
        errors = [e["code"] for e in events if e["type"] == "finding" and e["severity"] == "error"]
        rows[mode] = ([e["loss"] for e in of_type(events, "step")], fast, errors)
    (a, fa, ea), (b, fb, eb) = rows["0"], rows["auto"]
    print(f"padded loop: fast path {fa}, errors {ea}; kernels loop: fast path {fb}, errors {eb}")
    print("step | padded loss | fast-path loss | rel. diff")
    worst = 0.0
    for i, (x, y) in enumerate(zip(a, b, strict=True), 1):
        rel = abs(x - y) / max(abs(x), 1e-9)
        worst = max(worst, rel)
        print(f"{i:4d} | {x:.5f} | {y:.5f} | {rel:.2e}")
    print(f"worst relative difference {worst:.2e} (bf16)")
    return 0 if fb and not fa and not ea and not eb and worst < 2e-2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
