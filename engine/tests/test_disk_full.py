"""A disk that fills up: a real small filesystem (a tmpfs mounted by the test, as root; skipped with the
reason where the mount is refused) holds the run folder.
Filled before a checkpoint, the engine refuses to start writing it; filled at any boundary inside the write of
a checkpoint or of the adapter (the kernel's own ENOSPC, the filesystem filled by the test just then), the
write stops. Either way: one DISK_FULL error naming the path, what the write needed and what was free; the
earlier checkpoint (adapter) intact and verifying; no temporary folder left."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from prepared import make_plan, of_type, write_plan

from lorakit_engine import checkpoint as ckpt
from lorakit_engine import files
from lorakit_engine.adapter import check_adapter, write_adapter
from lorakit_engine.lora import attach_for_training
from lorakit_engine.plan import read_plan
from lorakit_engine.protocol import EngineError
from lorakit_engine.run import load_base, run

TARGETS = ["q_proj", "v_proj"]


class SmallFs:
    """A tmpfs of `size` bytes mounted at `path`; `fill()` takes what is left of it."""

    def __init__(self, path: Path, size: int):
        self.path, self.size = path, size
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
        if r.returncode != 0:  # an unprivileged container: skipped, with the reason
            pytest.skip(
                f"these tests mount a small tmpfs and need root (or CAP_SYS_ADMIN): `mount -t tmpfs` failed: "
                f"{r.stderr.strip()}",
            )
        self.fillers: list[Path] = []

    def fill(self) -> None:
        filler = self.path / f"filler-{uuid.uuid4().hex[:6]}"
        self.fillers.append(filler)
        with open(filler, "wb", buffering=0) as f:
            for size in (1 << 20, 4096, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError as e:
                    assert files.is_disk_full(e)
        assert (files.free_bytes(self.path) or 0) == 0

    def unfill(self) -> None:
        for f in self.fillers:
            f.unlink(missing_ok=True)
        self.fillers = []

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_fs(tmp_path):
    made = []

    def mount(size: int, name: str = "fs") -> SmallFs:
        fs = SmallFs(tmp_path / name, size)
        made.append(fs)
        return fs

    yield mount
    for fs in made:
        fs.close()


def no_temporary(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob(".tmp*")]


# ---------------------------------------------------------------- a whole run


def test_a_run_whose_second_checkpoint_cannot_fit(tmp_path, small_fs, fixtures_dir):
    """The run folder on a filesystem with room for one checkpoint: step-2 is written, step-4 is refused
    before a byte of it is, with what it needs (step-2's size) and what is free."""
    model = fixtures_dir / "models" / "tiny-llama"
    probe = make_plan(tmp_path / "probe", model, **{"train.total_steps": 2, "train.save_every": 2})
    run(read_plan(write_plan(tmp_path / "probe", probe)), lambda e: None)
    one = files.size_on_disk(tmp_path / "probe" / "run" / "checkpoints" / "step-2")

    fs = small_fs(int(one * 1.6) // 4096 * 4096)
    over = {
        "train.total_steps": 6,
        "train.save_every": 2,
        "samples.before": False,
        "run_dir": str(fs.path / "run"),
    }
    plan = read_plan(write_plan(tmp_path, make_plan(tmp_path, model, **over)))
    events: list[dict] = []
    with pytest.raises(EngineError) as e:
        run(plan, events.append)
    err = e.value
    assert err.code == "DISK_FULL", err.message
    base = fs.path / "run" / "checkpoints"
    assert f"checkpoint step-4 in {base}" in err.message
    assert f"needs about {files.fmt_bytes(one)} (the size of step-2)" in err.message
    assert "free on that filesystem" in err.message and "step-2 is the last checkpoint, intact" in err.message
    assert "--resume" in err.hint
    assert [e["step"] for e in of_type(events, "checkpoint")] == [2]
    assert sorted(p.name for p in base.iterdir()) == ["step-2"] and ckpt.check(base / "step-2") == []
    assert no_temporary(fs.path) == []


# ---------------------------------------------------------------- every boundary inside a write


@pytest.fixture(scope="module")
def trainer(fixtures_dir):
    """A tiny peft model, its optimizer after one update, and its scheduler."""
    torch.manual_seed(0)
    base = load_base(fixtures_dir / "models" / "tiny-llama", torch.float32, torch.device("cpu"))
    model = attach_for_training(base, TARGETS, 8, 16, 0.0, "llama")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(input_ids=torch.tensor([[1, 5, 9, 2]]), labels=torch.tensor([[1, 5, 9, 2]])).loss.backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def save(run_dir: Path, step: int, trainer) -> Path:
    model, optimizer, scheduler = trainer
    return ckpt.save(run_dir, step, model, optimizer, scheduler, None, {"epoch": 0}, keep=5)


def fill_before(fs: SmallFs, fn, name: str | None = None, arg: int = 0):
    """`fn`, which fills the filesystem first (as another process would) when its argument `arg` is a path
    named `name` (any, when None): the ENOSPC that follows is the kernel's."""

    def wrapped(*args, **kw):
        if name is None or Path(args[arg]).name == name:
            fs.fill()
        return fn(*args, **kw)

    return wrapped


def save_pretrained_of(model):
    """model.save_pretrained as its class defines it, bound to `model` (the test wraps the instance's)."""
    method = type(model).save_pretrained
    return lambda *args, **kw: method(model, *args, **kw)


# The write boundaries of a checkpoint, in the order it writes its files.
CHECKPOINT_FILES = [
    "adapter_model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "rng.pt",
    "state.json",
    files.SUMS,
]


@pytest.mark.parametrize("boundary", ["before it starts", *CHECKPOINT_FILES])
def test_the_disk_fills_at_each_boundary_of_a_checkpoint(small_fs, trainer, monkeypatch, boundary):
    fs = small_fs(4 << 20)
    run_dir = fs.path / "run"
    first = save(run_dir, 1, trainer)
    model = trainer[0]
    if boundary == "before it starts":
        fs.fill()
    elif boundary == "adapter_model.safetensors":
        monkeypatch.setattr(model, "save_pretrained", fill_before(fs, save_pretrained_of(model)))
    elif boundary.endswith(".pt"):
        monkeypatch.setattr(ckpt, "_torch_save", fill_before(fs, ckpt._torch_save, boundary, arg=1))
    elif boundary == "state.json":
        monkeypatch.setattr(files, "write_synced", fill_before(fs, files.write_synced, boundary))
    else:
        monkeypatch.setattr(files, "write_sums", fill_before(fs, files.write_sums))

    with pytest.raises(EngineError) as e:
        save(run_dir, 2, trainer)
    monkeypatch.undo()
    err = e.value
    assert err.code == "DISK_FULL", err.message
    assert f"checkpoint step-2 in {run_dir / 'checkpoints'}" in err.message
    if boundary != "before it starts":
        assert f"(writing {boundary})" in err.message
    assert "needs about" in err.message and "(the size of step-1)" in err.message
    assert "free on that filesystem" in err.message and "step-1 is the last checkpoint, intact" in err.message
    assert ckpt.check(first) == [] and ckpt.read_files(first)["state"]["step"] == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-1"]
    assert no_temporary(fs.path) == []
    fs.unfill()
    assert ckpt.check(save(run_dir, 2, trainer)) == []  # with room again, the same save works


# The write boundaries of the adapter: peft's files, an extra, a copied tokenizer file, SHA256SUMS.
ADAPTER_FILES = ["adapter_model.safetensors", "chat_template.jinja", "tokenizer.json", files.SUMS]


@pytest.mark.parametrize("boundary", ["before it starts", *ADAPTER_FILES])
def test_the_disk_fills_at_each_boundary_of_the_adapter(
    tmp_path, small_fs, trainer, fixtures_dir, monkeypatch, boundary
):
    fs = small_fs(4 << 20)
    model = trainer[0]
    over = {"run_dir": str(fs.path / "run")}
    plan = read_plan(
        write_plan(tmp_path, make_plan(tmp_path, fixtures_dir / "models" / "tiny-llama", **over))
    )
    adapter = write_adapter(model, plan)
    before = {p.name: p.read_bytes() for p in adapter.iterdir()}
    if boundary == "before it starts":
        fs.fill()
    elif boundary == "adapter_model.safetensors":
        monkeypatch.setattr(model, "save_pretrained", fill_before(fs, save_pretrained_of(model)))
    elif boundary == "chat_template.jinja":
        monkeypatch.setattr(Path, "write_text", fill_before(fs, Path.write_text, boundary))
    elif boundary == "tokenizer.json":
        monkeypatch.setattr(shutil, "copyfile", fill_before(fs, shutil.copyfile, boundary, arg=1))
    else:
        monkeypatch.setattr(files, "write_sums", fill_before(fs, files.write_sums))

    with pytest.raises(EngineError) as e:
        write_adapter(model, plan)
    monkeypatch.undo()
    err = e.value
    assert err.code == "DISK_FULL", err.message
    assert f"the adapter in {fs.path / 'run'}" in err.message
    assert "the adapter written before is intact" in err.message
    if boundary != "before it starts":
        assert f"(writing {boundary})" in err.message
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == before and check_adapter(adapter) == []
    assert no_temporary(fs.path) == []


def test_disk_full_is_recognised_however_the_writer_says_it(tmp_path, small_fs):
    """torch's zip writer, safetensors (Rust) and Python's files each report ENOSPC their own way."""
    from safetensors.torch import save_file

    fs = small_fs(64 << 10)
    big = {"a": torch.zeros(100_000)}
    writers = {
        "torch.save": lambda p: ckpt._torch_save(big, p),
        "safetensors": lambda p: save_file(big, str(p)),
        "python": lambda p: p.write_bytes(bytes(1 << 20)),
    }
    for what, write in writers.items():
        with pytest.raises(Exception) as e:  # noqa: PT011 — each library's own type
            write(fs.path / "x")
        assert files.is_disk_full(e.value), (what, e.value)
        (fs.path / "x").unlink(missing_ok=True)  # safetensors removes its own partial file
    assert not files.is_disk_full(RuntimeError("unexpected pos 576 vs 534"))


def test_byte_counts_read_as_lorakit_writes_them():
    """DISK_FULL's need and free space in the units src/format.ts fmtBytes uses, so the engine's message and
    lorakit's (prepared data, the report) read alike and the CLI's tests match both."""
    cases = {0: "0 KiB", 1536: "2 KiB", 600 << 10: "600 KiB", 23 << 20: "23 MiB", 3 << 29: "1.5 GiB"}
    assert {n: files.fmt_bytes(n) for n in cases} == cases
