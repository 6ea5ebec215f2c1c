"""Shared pytest setup: `lorakit_engine` importable, and the fixture folder built once per session."""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1]
REPO = ENGINE.parent
if str(ENGINE) not in sys.path:
    sys.path.insert(0, str(ENGINE))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """<repo>/tests/.fixtures, (re)built by build_all.py; a file lock keeps concurrent test runs apart."""
    out = REPO / "tests" / ".fixtures"
    lock = (
        Path(tempfile.gettempdir()) / f"lorakit-fixtures-{hashlib.sha256(bytes(out)).hexdigest()[:12]}.lock"
    )
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        build = ENGINE / "tests" / "fixtures" / "build_all.py"
        subprocess.run([sys.executable, str(build), "--out", str(out)], check=True)
    return out
