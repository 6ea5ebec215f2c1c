"""The plan as typed values: `read_plan(path)` checks plan.json against protocol/plan.schema.json once,
resolves its relative paths against the plan's folder and returns a `Plan`. The rest of the engine reads
attributes, never the JSON. No torch here, so a bad plan is reported before the heavy imports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .protocol import EngineError, schema_errors

Checkpointing = Literal["none", "full", "low_memory"]


@dataclass(frozen=True)
class PreparedRef:
    """One prepared split: `dir` holds tokens.safetensors and manifest.json. `rows` (the training split with
    train.pack_tokens): the file of its rows, `starts` (int64, rows + 1 sample indices in file order)."""

    dir: Path
    samples: int
    tokens: int
    rows: Path | None = None

    @classmethod
    def of(cls, d: dict[str, Any]) -> PreparedRef:
        rows = d.get("rows")
        return cls(Path(d["dir"]), d["samples"], d["tokens"], Path(rows) if rows is not None else None)


@dataclass(frozen=True)
class ModelPlan:
    path: Path
    family: str
    model_type: str
    vocab_size: int
    layers: int  # decoder layers, counted by the product from config.json


@dataclass(frozen=True)
class DataPlan:
    train: PreparedRef
    eval: PreparedRef | None
    pad_id: int


@dataclass(frozen=True)
class LoraPlan:
    r: int
    alpha: float
    dropout: float
    targets: list[str]


@dataclass(frozen=True)
class TrainPlan:
    """The train section: the run config's settings, and the values the product resolved for this machine and
    this data (precision, device, shard, fast_path, the step counts)."""

    total_steps: int
    steps_per_epoch: int
    epochs: float
    batch_size: int  # per device
    grad_accum: int
    lr: float
    scheduler: Literal["cosine", "linear", "constant"]
    warmup_steps: int
    weight_decay: float
    max_grad_norm: float
    seed: int
    precision: Literal["bf16", "fp16", "fp32"]
    gradient_checkpointing: bool | Literal["low_memory"]
    log_every: int
    eval_every: int  # 0: at each epoch end
    save_every: int  # 0: at each epoch end
    keep_checkpoints: int
    patience: int  # evals without a new best before stopping early; 0: never
    device: Literal["cpu", "cuda"]
    devices: int
    shard: Literal["none", "fsdp"]
    fast_path: bool  # packed rows through lorakit_engine.kernels (a native model), else padded micro-batches
    pack_tokens: int | None = None  # micro-batches are data.train.rows' rows of at most this many tokens

    @property
    def checkpointing(self) -> Checkpointing:
        """gradient_checkpointing as a mode: "none", "full" (true) or "low_memory"."""
        value = self.gradient_checkpointing
        return "low_memory" if value == "low_memory" else "full" if value else "none"


@dataclass(frozen=True)
class SampleItem:
    index: int
    prompt_ids: list[int]


@dataclass(frozen=True)
class SamplesPlan:
    items: list[SampleItem]
    max_new_tokens: int
    stop_ids: list[int]
    before: bool


@dataclass(frozen=True)
class ProfilePlan:
    """torch.profiler over optimizer steps first_step … first_step + steps - 1, a table per rank in `dir`."""

    dir: Path
    first_step: int
    steps: int


@dataclass(frozen=True)
class Plan:
    version: int
    run_dir: Path
    model: ModelPlan
    data: DataPlan
    lora: LoraPlan
    train: TrainPlan
    samples: SamplesPlan
    resume: bool
    adapter_extras: dict[str, str]
    adapter_files: dict[str, Path]  # copied beside the adapter: name → source (the base's tokenizer files)
    profile: ProfilePlan | None

    @classmethod
    def of(cls, d: dict[str, Any]) -> Plan:
        """A plan from its JSON (already checked against the schema)."""
        data, samples, profile = d["data"], d["samples"], d["profile"]
        return cls(
            version=d["version"],
            run_dir=Path(d["run_dir"]),
            model=ModelPlan(**{**d["model"], "path": Path(d["model"]["path"])}),
            data=DataPlan(
                train=PreparedRef.of(data["train"]),
                eval=PreparedRef.of(data["eval"]) if data["eval"] is not None else None,
                pad_id=data["pad_id"],
            ),
            lora=LoraPlan(**d["lora"]),
            train=TrainPlan(**d["train"]),
            samples=SamplesPlan(
                items=[SampleItem(**item) for item in samples["items"]],
                max_new_tokens=samples["max_new_tokens"],
                stop_ids=samples["stop_ids"],
                before=samples["before"],
            ),
            resume=d["resume"],
            adapter_extras=dict(d["adapter_extras"]),
            adapter_files={name: Path(source) for name, source in d["adapter_files"].items()},
            profile=ProfilePlan(**{**profile, "dir": Path(profile["dir"])}) if profile is not None else None,
        )


# Paths in a plan, relative to the plan's folder unless absolute.
PLAN_PATHS = (
    ("run_dir",),
    ("model", "path"),
    ("data", "train", "dir"),
    ("data", "train", "rows"),
    ("data", "eval", "dir"),
    ("profile", "dir"),
)


def read_plan(path: Path | str) -> Plan:
    """The plan at `path`, checked against the schema, with relative paths resolved against its folder
    (so a plan and its prepared data can be copied to another machine and run there alone)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise EngineError(
            "PLAN_INVALID",
            f"cannot read the plan {path}: {e.strerror}",
            "Pass --plan with an existing plan.json.",
        ) from e
    except UnicodeDecodeError as e:
        raise EngineError(
            "PLAN_INVALID",
            f"{path} is not UTF-8 text (byte {e.start})",
            "Write the plan with `lorakit`; a plan is JSON in UTF-8.",
        ) from e
    except json.JSONDecodeError as e:
        raise EngineError(
            "PLAN_INVALID",
            f"{path} is not JSON: {e.msg} at line {e.lineno} column {e.colno}",
            "Write the plan with `lorakit` or fix the JSON syntax.",
        ) from e
    except RecursionError as e:
        raise EngineError(
            "PLAN_INVALID",
            f"{path} nests lists or objects thousands of levels deep",
            "Write the plan with `lorakit`; a plan is a few levels of settings.",
        ) from e
    check_plan(raw, path)
    return Plan.of(resolve_paths(raw, path.resolve().parent))


def check_plan(plan: Any, path: Path | str | None = None) -> None:
    problems = schema_errors("plan", plan)
    if problems:
        raise EngineError(
            "PLAN_INVALID",
            f"{f'{path}: ' if path is not None else ''}the plan has {len(problems)} problem(s): "
            + "; ".join(problems),
            "Fix the keys named above (protocol/plan.schema.json is the contract); plans written by "
            "lorakit of the same version always match.",
        )


def resolve_paths(plan: dict, base: Path) -> dict:
    plan = json.loads(json.dumps(plan))  # a copy
    for keys in PLAN_PATHS:
        holder = plan
        for k in keys[:-1]:
            holder = holder.get(k) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and isinstance(holder.get(keys[-1]), str):
            holder[keys[-1]] = str((base / holder[keys[-1]]).resolve())
    files = plan.get("adapter_files")
    if isinstance(files, dict):
        for name, source in files.items():
            if isinstance(source, str):
                files[name] = str((base / source).resolve())
    return plan
