"""The engine's declared requirements: pyproject.toml's ranges, deps.py's run-time floors and the exact pins
of requirements.txt agree; deps.check reads an interpreter's packages from their metadata alone (here a
folder of bare metadata run with `python -S`, so only it is seen) and builds the one command that adds what
lacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from lorakit_engine import deps

ENGINE = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def declared() -> tuple[dict[str, Requirement], dict[str, list[Requirement]]]:
    project = tomllib.loads((ENGINE / "pyproject.toml").read_text())["project"]
    required = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    extras = {k: [Requirement(r) for r in v] for k, v in project["optional-dependencies"].items()}
    return required, extras


def floor(req: Requirement) -> str:
    (lower,) = [s.version for s in req.specifier if s.operator == ">="]
    return lower


def test_pyproject_declares_the_floors_deps_checks():
    required, extras = declared()
    assert {name: floor(r) for name, r in required.items()} == {d: need for d, _, need, _ in deps.REQUIRED}
    demo = {r.name: floor(r) for r in extras["demo"]}
    assert demo == {d: need for d, _, need, _ in deps.OPTIONAL["demo"]}
    # torch never has an upper bound: a newer CUDA build must not be replaced by an install of the engine.
    assert [s.operator for s in required["torch"].specifier] == [">="]


def test_the_pins_satisfy_the_ranges():
    required, extras = declared()
    pins = deps.pins()
    for req in [*required.values(), *extras["demo"]]:
        assert req.name in pins, f"requirements.txt pins no {req.name}"
        assert req.specifier.contains(pins[req.name]), f"{req.name}=={pins[req.name]} is outside {req}"
    # A GPU machine's build satisfies the floor (local version labels count as the release).
    assert required["torch"].specifier.contains("2.11.0+cu130")
    assert Version("2.13.0+cpu") >= Version(floor(required["torch"]))


def fake_site(root: Path, packages: dict[str, str]) -> Path:
    for name, version in packages.items():
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text("")
        info = root / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


def run_deps(site: Path, *args: str) -> dict:
    env = {"PYTHONPATH": f"{ENGINE}:{site}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-S", "-m", "lorakit_engine.deps", *args], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


GOOD = {
    "torch": "2.11.0+cu130",
    "transformers": "5.17.0",
    "peft": "0.21.0",
    "safetensors": "0.8.0",
    "numpy": "2.5.2",
}


def test_a_gpu_machines_interpreter_is_enough(tmp_path):
    out = run_deps(fake_site(tmp_path, GOOD))
    assert (
        out["problem"] is None and out["missing"] == [] and out["outdated"] == [] and out["command"] is None
    )
    demo = run_deps(tmp_path, "--for", "demo")
    assert demo["missing"] == ["gguf"]
    assert demo["command"] == f"{sys.executable} -m pip install gguf==0.19.0"


def test_missing_and_old_packages_named_with_one_command_and_torch_left_alone(tmp_path):
    site = fake_site(tmp_path, {"torch": "2.4.1", "transformers": "4.46.3", "numpy": "1.26.4"})
    out = run_deps(site)
    assert out["missing"] == ["peft", "safetensors"] and out["outdated"] == ["torch", "transformers"]
    assert (
        out["command"]
        == f"{sys.executable} -m pip install peft==0.21.2 safetensors==0.8.0 transformers==5.17.0"
    )
    assert "pytorch.org" in out["torch_hint"]
    p = out["problem"]
    assert p["code"] == "PYTHON_ENV_INCOMPLETE"
    assert p["message"] == (
        f"{sys.executable} lacks peft (for LoRA layers and the adapter format), "
        "safetensors (for checkpoint files); torch 2.4.1 is older than the 2.11 the engine needs; "
        "transformers 4.46.3 is older than the 5.17 the engine needs"
    )
    assert p["hint"].startswith("Install torch 2.11 or newer built for this machine's CUDA")
    assert p["hint"].endswith(f"; then run: {out['command']}.")


def test_the_engine_refuses_an_interpreter_that_lacks_packages_with_one_error_event(tmp_path):
    site = fake_site(tmp_path, {k: v for k, v in GOOD.items() if k != "peft"})
    env = {"PYTHONPATH": f"{ENGINE}:{site}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-S", "-m", "lorakit_engine", "validate", "--plan", str(tmp_path / "plan.json")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 1
    (event,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert event["type"] == "error" and event["code"] == "PYTHON_ENV_INCOMPLETE"
    assert "lacks peft" in event["message"] and "pip install peft==0.21.2" in event["hint"]


def test_versions_compare_by_release():
    assert deps.at_least("2.11.0+cu130", "2.11") and deps.at_least("2.13.0", "2.11")
    assert not deps.at_least("2.10.1", "2.11") and not deps.at_least("0.9.0", "0.21")
    assert deps.at_least("5.17.0rc1", "5.17")  # a release candidate of the floor counts as it
    assert deps.version_tuple("2.4.1+cu121") == (2, 4, 1)
