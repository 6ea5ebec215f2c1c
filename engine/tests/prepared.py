"""Test helpers: write prepared data (the product's format) from Python lists, build plans, run the engine.

write_prepared(dir, [(input_ids, labels), ...]) → the plan's PreparedRef (the files and their SHA256SUMS)
memorize_set(n) → seeded samples whose responses a tiny model learns in a few steps
make_plan(root, model_dir, **overrides) → a plan dict (version 2); write_plan(root, plan) → plan.json
cut_rows(lengths, pack_tokens), write_rows(dir, rows, pack_tokens) → train.pack_tokens' rows, as the product
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
from safetensors.torch import load_file, save_file

from lorakit_engine.files import write_sums

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
# Tokenizer files lorakit copies beside the adapter when the base has them (src/train/prepare-run.ts
# TOKENIZER_FILES; a few more there).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


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
    write_sums(dir)
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


def cut_rows(lengths: list[int], pack_tokens: int) -> list[list[int]]:
    """`train.pack_tokens` rows as the product cuts them (src/data/pack.ts packRows; both held to
    tests/fixtures/pack-rows-golden.json): sample indices in file order, greedy, a row closing when the next
    sample does not fit. A sample longer than a row is the product's error, raised here as ValueError."""
    rows: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if n > pack_tokens:
            raise ValueError(f"sample {i} has {n} tokens, more than pack_tokens {pack_tokens}")
        if not rows or used + n > pack_tokens:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def write_rows(dir: Path, rows: list[list[int]], pack_tokens: int) -> Path:
    """`rows-<pack_tokens>.safetensors` beside the tokens: `starts`, int64, rows + 1 sample indices."""
    path = Path(dir) / f"rows-{pack_tokens}.safetensors"
    starts = [row[0] for row in rows] + [rows[-1][-1] + 1]
    save_file({"starts": torch.tensor(starts, dtype=torch.int64)}, str(path))
    write_sums(dir)
    return path


def make_plan(root: Path, model_dir: Path, train=None, eval=None, **over) -> dict:
    """A complete plan rooted at `root`, prepared data written under root/prepared/ (paths relative).
    `over`: "train.total_steps"-style keys. What the product derives (the rows file of train.pack_tokens,
    train.steps_per_epoch, model.layers) is derived here as it does, after the overrides, unless given."""
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
    tokenizer = [n for n in TOKENIZER_FILES if Path(model_dir, n).is_file()]
    plan = {
        "version": 2,
        "run_dir": "run",
        "model": {
            "path": str(model_dir),
            "family": "llama",
            "model_type": "llama",
            "vocab_size": vocab,
            "layers": _layers(spec),
        },
        "data": {"train": {**train_ref, "rows": None}, "eval": eval_ref, "pad_id": 0},
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
            "patience": 0,
            "device": "cpu",
            "devices": 1,
            "shard": "none",
            "fast_path": False,
        },
        "samples": {
            "items": [{"index": i, "prompt_ids": x[: _prompt_len(y)]} for i, (x, y) in enumerate(train[:2])],
            "max_new_tokens": 8,
            "stop_ids": [EOS],
            "before": True,
        },
        "resume": False,
        "adapter_extras": {"chat_template.jinja": "{{ messages }}", "special_tokens.json": '{"eos": 2}'},
        "adapter_files": {n: str(Path(model_dir, n)) for n in tokenizer},
        "profile": None,
    }
    for key, value in over.items():
        holder = plan
        *path, last = key.split(".")
        for k in path:
            holder = holder[k]
        holder[last] = value
    t, ref = plan["train"], plan["data"]["train"]
    n_rows = None
    if t.get("pack_tokens") and "data.train.rows" not in over:
        rows = cut_rows([len(x) for x, _ in train], t["pack_tokens"])
        ref["rows"] = str(write_rows(root / "prepared" / "train", rows, t["pack_tokens"]).relative_to(root))
        n_rows = len(rows)
    elif ref["rows"] is not None:
        n_rows = len(load_file(str(root / ref["rows"]))["starts"]) - 1
    if "train.steps_per_epoch" not in over:
        t["steps_per_epoch"] = steps_per_epoch(len(train), t, n_rows)
    return plan


def steps_per_epoch(samples: int, t: dict, rows: int | None) -> int:
    """Optimizer steps of one epoch as the product counts them (src/plan): micro-batches per device (of
    batch_size samples, or single rows) ÷ grad_accum, rounded up."""
    per_device = (
        -(-rows // t["devices"]) if rows is not None else -(-samples // (t["batch_size"] * t["devices"]))
    )
    return -(-per_device // t["grad_accum"])


def _layers(config: dict) -> int:
    """model.layers as the product reads it: the first of the family's layer keys in config.json."""
    for key in ("num_hidden_layers", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    return 1


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
