"""Folders written for later reading (checkpoints, the adapter, prepared data): each carries `SHA256SUMS`, the
sha256 of every file in it in `sha256sum`'s own format (`cd <folder> && sha256sum -c SHA256SUMS` checks it by
hand). It is written last, before the folder is renamed into place; reading the folder checks it, and a file
that does not match is named. And a full disk mid-write is one DISK_FULL error naming the path, what the write
needed and what was free.

sha256 because it is the fastest hash both halves have without a dependency: on a CPU with the SHA extensions
hashlib's runs at ~1.3-1.45 GB/s, 1.5-2x blake2b (bench/checksums.ts, bench/RESULTS.md). A ChatGLM3-6B LoRA
checkpoint (23 MiB) checks in ~30 ms, prepared data in ~0.8 s per GiB.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from .protocol import EngineError

SUMS = "SHA256SUMS"
_CHUNK = 8 << 20
_LINE = re.compile(r"([0-9a-f]{64}) [ *]([^\x00-\x1f/]+)")
_FULL = (errno.ENOSPC, errno.EDQUOT)
# How the libraries that write our files say ENOSPC when they do not raise an OSError: safetensors (Rust) puts
# the OS error in its message; torch's zip writer raises a RuntimeError with the OSError as its context.
_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _listed(folder: Path, skip: Iterable[str]) -> list[str]:
    """The regular files directly in `folder` that SHA256SUMS covers, sorted."""
    skip = {SUMS, *skip}
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in skip)


def write_sums(folder: Path | str, skip: Iterable[str] = ()) -> None:
    """SHA256SUMS of every file directly in `folder` (except `skip`), written and synced."""
    folder = Path(folder)
    lines = "".join(f"{sha256_file(folder / name)}  {name}\n" for name in _listed(folder, skip))
    write_synced(folder / SUMS, lines)


def read_sums(folder: Path) -> dict[str, str] | str:
    """name → sha256 from `folder`'s SHA256SUMS, or what is wrong with it (a sentence)."""
    path = folder / SUMS
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return f"{path} is missing (the folder was written without checksums, or is damaged)"
    except (OSError, UnicodeDecodeError) as e:
        return f"{path} cannot be read ({type(e).__name__}: {e})"
    sums = {}
    lines = text.split("\n")
    if lines[-1] != "":
        return f"{path} does not end with a newline: it was cut short or changed"
    for n, line in enumerate(lines[:-1], 1):
        m = _LINE.fullmatch(line)
        if not m or m.group(2) in sums:
            return f"{path}:{n} is not a `sha256  name` line of its own: {line[:80]!r}"
        sums[m.group(2)] = m.group(1)
    return sums


def check_sums(folder: Path | str, names: Iterable[str] | None = None, skip: Iterable[str] = ()) -> list[str]:
    """What does not match `folder`'s SHA256SUMS, one sentence per file, each naming it; [] when all match.
    `names`: only these files (each must be listed and match); None: the whole folder (every file but `skip`
    listed and matching, every listed file there)."""
    folder = Path(folder)
    sums = read_sums(folder)
    if isinstance(sums, str):
        return [sums]
    problems = []
    if names is None:
        present = _listed(folder, skip)
        wanted = sorted(set(present) | (set(sums) - set(skip)))
    else:
        present, wanted = None, list(names)
    for name in wanted:
        path = folder / name
        if name not in sums:
            problems.append(f"{path} is not listed in {SUMS} (it was not written with the folder)")
        elif not path.is_file():
            problems.append(f"{path} is missing (listed in {SUMS})")
        else:
            got = sha256_file(path)
            if got != sums[name]:
                problems.append(
                    f"{path} does not match {SUMS} ({path.stat().st_size} bytes, sha256 {got[:12]}…, "
                    f"written as {sums[name][:12]}…): it changed on disk since it was written"
                )
    return problems


# ---------------------------------------------------------------- durable writes


def write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder: Path) -> None:
    """Every file directly in `folder`, then the folder itself, on disk (before it is renamed into place)."""
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)


def replace_folder(tmp: Path, final: Path) -> None:
    """Renames the complete `tmp` to `final`; a `final` already there (the same step saved by an earlier,
    resumed attempt; an adapter written before) is moved aside first and removed after."""
    aside = final.parent / f"{tmp.name}-replaced"
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


# ---------------------------------------------------------------- a full disk


def is_disk_full(e: BaseException) -> bool:
    """Whether `e` (or what caused it) is the OS saying the disk, or the quota, is full."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return True
        if any(t in str(e) for t in _FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def free_bytes(path: Path | str) -> int | None:
    """Free bytes (for an unprivileged user) where `path` is, or would be (its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def size_on_disk(folder: Path) -> int:
    """The blocks the files directly in `folder` take (what writing the same again needs)."""
    return sum(p.stat().st_blocks * 512 for p in folder.iterdir() if p.is_file())


def fmt_bytes(n: float) -> str:
    """As lorakit writes byte counts (src/format.ts fmtBytes): GiB with one decimal, MiB, or KiB."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.0f} MiB"
    return f"{max(0, int(n / 1024 + 0.5))} KiB"


def disk_full(
    what: str, path: Path, need: int, basis: str, kept: str, writing: Path | None = None
) -> EngineError:
    """DISK_FULL: `what` (a checkpoint, the adapter) could not be written at `path`, which needs `need` bytes
    (`basis`: how that was found); `kept` says what is left intact."""
    free = free_bytes(path)
    at = f" (writing {writing.name})" if writing is not None else ""
    return EngineError(
        "DISK_FULL",
        f"no space left for {what} in {path}{at}: it needs about {fmt_bytes(need)} ({basis}), "
        f"{fmt_bytes(free) if free is not None else 'an unknown amount'} free on that filesystem. "
        f"Nothing of it was kept; {kept}",
        "Free space on that disk (or lower train.keep_checkpoints, or put output_dir on a larger disk), then "
        "resume with `lorakit train <config> --resume`.",
    )


def check_room(what: str, path: Path, need: int, basis: str, kept: str) -> None:
    """DISK_FULL before anything is written when the filesystem at `path` has less than `need` free."""
    free = free_bytes(path)
    if free is not None and free < need:
        raise disk_full(what, path, need, basis, kept)
