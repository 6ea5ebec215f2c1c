"""Test helpers: write prepared data (the product's format) from Python lists, build plans, run the engine.

write_prepared(dir, [(input_ids, labels), ...]) → the plan's PreparedRef
memorize_set(n) → seeded samples whose responses a tiny model learns in a few steps
make_plan(root, model_dir, **overrides) → a plan dict; write_plan(root, plan) → plan.json
run_engine(plan_path, ...) → (events, returncode, stderr) of `python -m lorakit_engine`
fault_env(step) → the environment under which an engine process fails at the start of that optimizer step
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ENGINE = Path(__file__).resolve().parents[1]
REPO = ENGINE.parent
PROTOCOL = REPO / "protocol"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# make_plan overrides for the native ChatGLM3 fixtures: LoRA on query_key_value, no dropout
CHATGLM3 = {
    "model.family": "chatglm",
    "model.model_type": "chatglm",
    "lora.targets": ["query_key_value"],
    "lora.dropout": 0.0,
}
EOS = 2


def write_prepared(dir: Path, samples: list[tuple[list[int], list[int]]]) -> dict:
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    ids = [t for x, _ in samples for t in x]
    labels = [t for _, y in samples for t in y]
    offsets = [0]
    for x, y in samples:
        assert len(x) == len(y), "labels line up with input_ids"
        offsets.append(offsets[-1] + len(x))
    save_file(
        {
            "input_ids": torch.tensor(ids, dtype=torch.int32),
            "labels": torch.tensor(labels, dtype=torch.int32),
            "offsets": torch.tensor(offsets, dtype=torch.int64),
        },
        str(dir / "tokens.safetensors"),
    )
    trained = sum(1 for _, y in samples for t in y[1:] if t != -100)
    manifest = {"version": 1, "samples": len(samples), "tokens": len(ids), "trained_tokens": trained}
    (dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return {"dir": str(dir), "samples": len(samples), "tokens": len(ids)}


def memorize_set(n: int, seed: int = 0, vocab: int = 200) -> list[tuple[list[int], list[int]]]:
    """n samples: a short prompt (no loss) then a response ending in EOS (trained); lengths differ so
    batches carry padding."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = [1] + torch.randint(10, vocab, (3 + i % 3,), generator=g).tolist()
        response = torch.randint(10, vocab, (4 + (i * 2) % 5,), generator=g).tolist() + [EOS]
        out.append((prompt + response, [-100] * len(prompt) + response))
    return out


def make_plan(root: Path, model_dir: Path, train=None, eval=None, **over) -> dict:
    """A complete plan rooted at `root`, prepared data written under root/prepared/ (paths relative)."""
    root = Path(root)
    config = Path(model_dir) / "config.json"
    spec = json.loads(config.read_text()) if config.is_file() else {}
    vocab = spec.get("vocab_size") or spec.get("padded_vocab_size") or 512
    train = memorize_set(8) if train is None else train
    train_ref = write_prepared(root / "prepared" / "train", train)
    train_ref["dir"] = "prepared/train"
    eval_ref = None
    if eval is not False:
        eval_ref = write_prepared(
            root / "prepared" / "eval", memorize_set(3, seed=7) if eval is None else eval
        )
        eval_ref["dir"] = "prepared/eval"
    plan = {
        "version": 1,
        "run_dir": "run",
        "model": {"path": str(model_dir), "family": "llama", "model_type": "llama", "vocab_size": vocab},
        "data": {"train": train_ref, "eval": eval_ref, "pad_id": 0},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "targets": TARGETS},
        "train": {
            "total_steps": 12,
            "epochs": 3,
            "batch_size": 2,
            "grad_accum": 2,
            "lr": 1e-2,
            "scheduler": "cosine",
            "warmup_steps": 2,
            "weight_decay": 0.01,
            "max_grad_norm": 1.0,
            "seed": 42,
            "precision": "fp32",
            "gradient_checkpointing": False,
            "log_every": 5,
            "eval_every": 0,
            "save_every": 0,
            "keep_checkpoints": 2,
            "device": "cpu",
            "devices": 1,
        },
        "samples": {
            "items": [{"index": i, "prompt_ids": x[: _prompt_len(y)]} for i, (x, y) in enumerate(train[:2])],
            "max_new_tokens": 8,
            "stop_ids": [EOS],
            "before": True,
        },
        "resume": False,
        "adapter_extras": {"chat_template.jinja": "{{ messages }}", "special_tokens.json": '{"eos": 2}'},
    }
    for key, value in over.items():  # "train.total_steps" style keys
        holder = plan
        *path, last = key.split(".")
        for k in path:
            holder = holder[k]
        holder[last] = value
    return plan


def _prompt_len(labels: list[int]) -> int:
    return next(i for i, t in enumerate(labels) if t != -100)


def write_plan(root: Path, plan: dict) -> Path:
    path = Path(root) / "plan.json"
    path.write_text(json.dumps(plan, indent=2))
    return path


def engine_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ENGINE) + os.pathsep + env.get("PYTHONPATH", "")
    env["LORAKIT_CHECK_EVENTS"] = "1"
    env.setdefault("OMP_NUM_THREADS", "2")
    if "PYTHONPATH" in extra:
        env["PYTHONPATH"] = extra.pop("PYTHONPATH") + os.pathsep + env["PYTHONPATH"]
    env.update(extra)
    return env


def fault_env(step: int, rank: int | None = None) -> dict[str, str]:
    """engine_env additions under which the engine fails at the start of optimizer step `step` (on `rank`;
    default the last): fixtures/fault/sitecustomize.py, a real exception inside the loop."""
    env = {"PYTHONPATH": str(ENGINE / "tests" / "fixtures" / "fault"), "LORAKIT_TEST_FAIL_AT_STEP": str(step)}
    if rank is not None:
        env["LORAKIT_TEST_FAIL_RANK"] = str(rank)
    return env


def engine_cmd(command: str, plan_path: Path) -> list[str]:
    return [sys.executable, "-m", "lorakit_engine", command, "--plan", str(plan_path)]


def parse_events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def run_engine(
    plan_path: Path, command: str = "train", timeout: float = 120, env: dict[str, str] | None = None
) -> tuple[list[dict], int, str]:
    p = subprocess.run(
        engine_cmd(command, plan_path),
        env=engine_env(**(env or {})),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return parse_events(p.stdout), p.returncode, p.stderr


def losses(events: list[dict]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events if e["type"] == "step"}


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]
