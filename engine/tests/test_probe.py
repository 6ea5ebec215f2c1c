"""The environment probe, with NVML and CUDA failures simulated where they happen: the NVML library
path (LORAKIT_NVML_LIB → a missing file, or a small library built here whose nvmlInit_v2 fails) and
CUDA_VISIBLE_DEVICES. The probe runs as the doctor runs it: `python -m lorakit_engine.probe`, JSON on
stdout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorakit_engine import probe as probe_mod

ENGINE = Path(__file__).resolve().parents[1]
FAKE_NVML = ENGINE.parent / "tests" / "fixtures" / "doctor-fake-nvml.c"


def run_probe(tmp_path: Path, **env: str) -> dict:
    full = {**os.environ, "PYTHONPATH": str(ENGINE), **env}
    r = subprocess.run(
        [sys.executable, "-m", "lorakit_engine.probe", "--output-dir", str(tmp_path / "runs" / "x")],
        capture_output=True,
        text=True,
        env=full,
        check=True,
        timeout=120,
    )
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout  # one JSON object, nothing else on stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory) -> dict[str, Path]:
    """The fake driver library twice: one that works (one GPU), one whose nvmlInit_v2 returns 18."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the fake NVML library")
    out = tmp_path_factory.mktemp("nvml")
    libs = {}
    for name, flags in (("ok", []), ("mismatch", ["-DINIT_CODE=18"])):
        libs[name] = out / f"libfake-nvml-{name}.so"
        subprocess.run(["gcc", "-shared", "-fPIC", *flags, "-o", str(libs[name]), str(FAKE_NVML)], check=True)
    return libs


def test_reports_torch_build_and_cuda_as_torch_sees_them(tmp_path):
    p = run_probe(tmp_path)
    assert p["version"] == 1
    assert p["torch"]["version"] == torch.__version__
    assert p["torch"]["cuda_compiled"] == torch.version.cuda
    assert p["cuda"]["is_available"] == torch.cuda.is_available()
    assert p["cuda"]["device_count"] == torch.cuda.device_count()
    assert p["cpu"]["count"] == os.cpu_count()
    # Free disk is measured at the nearest existing folder above the (not yet created) output dir.
    assert p["disk"]["path"].endswith("runs/x") and Path(p["disk"]["measured_at"]) == tmp_path
    assert p["disk"]["free_bytes"] > 0
    if not torch.cuda.is_available():
        bench = p["cpu"]["bench"]
        assert bench["matmul_gflops"] > 0 and bench["runs"] >= 1
        # 5 timings on all threads (their median is the rate) and 5 on one: one timing swings on a busy CPU.
        assert len(bench["all_threads_gflops"]) == len(bench["one_thread_gflops"]) == 5
        assert bench["matmul_gflops"] == pytest.approx(sorted(bench["all_threads_gflops"])[2], rel=0.01)


def test_nvml_library_missing(tmp_path):
    p = run_probe(tmp_path, LORAKIT_NVML_LIB="/nonexistent/libnvidia-ml.so.1")
    nvml = p["nvml"]
    assert nvml["lib"] == "/nonexistent/libnvidia-ml.so.1"
    assert not nvml["loaded"] and not nvml["init"]
    assert "/nonexistent/libnvidia-ml.so.1" in nvml["load_error"]
    assert nvml["devices"] == [] and nvml["device_count"] is None
    assert p["env"]["LORAKIT_NVML_LIB"] == "/nonexistent/libnvidia-ml.so.1"


def test_nvml_init_fails_with_version_mismatch(tmp_path, fake_nvml):
    p = run_probe(tmp_path, LORAKIT_NVML_LIB=str(fake_nvml["mismatch"]))
    nvml = p["nvml"]
    assert nvml["loaded"] and not nvml["init"]
    assert nvml["init_code"] == 18
    assert "NVML_ERROR_LIB_RM_VERSION_MISMATCH" in nvml["init_error"]
    assert "RM has detected an NVML/RM version mismatch." in nvml["init_error"]
    assert nvml["driver_version"] is None and nvml["devices"] == []


def test_nvml_works_devices_listed(tmp_path, fake_nvml):
    p = run_probe(tmp_path, LORAKIT_NVML_LIB=str(fake_nvml["ok"]))
    nvml = p["nvml"]
    assert nvml["loaded"] and nvml["init"] and nvml["init_error"] is None
    assert nvml["driver_version"] == "550.54.15"
    assert nvml["cuda_driver_version"] == "12.4"
    assert nvml["device_count"] == 1
    (dev,) = nvml["devices"]
    assert dev["name"] == "Fake GPU 80GB"
    assert dev["uuid"].startswith("GPU-00000000")
    assert dev["memory_total"] == 85899345920 and dev["memory_free"] == 84825604096
    assert dev["mig_mode"] is None and dev["errors"] == {}  # NOT_SUPPORTED is no error


def test_cuda_visible_devices_empty_hides_every_device(tmp_path, fake_nvml):
    p = run_probe(tmp_path, LORAKIT_NVML_LIB=str(fake_nvml["ok"]), CUDA_VISIBLE_DEVICES="")
    assert p["env"]["CUDA_VISIBLE_DEVICES"] == ""
    assert p["nvml"]["device_count"] == 1  # the driver still sees the GPU …
    assert p["cuda"]["is_available"] is False and p["cuda"]["device_count"] == 0  # … torch sees none


def test_missing_nvml_symbol_is_reported_not_raised(monkeypatch):
    """A library without nvmlInit_v2 (here: the C library) fails at init with FUNCTION_NOT_FOUND."""
    monkeypatch.setenv("LORAKIT_NVML_LIB", "libc.so.6")
    nvml = probe_mod.probe_nvml()
    assert nvml["loaded"] and not nvml["init"] and nvml["init_code"] == 13
    assert "nvmlInit_v2" in nvml["init_error"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_both_layers_agree(tmp_path):
    p = run_probe(tmp_path)
    assert p["nvml"]["init"], p["nvml"]
    assert p["cuda"]["is_available"]
    dev = p["cuda"]["devices"][0]
    assert dev["errors"] == {}
    assert len(dev["capability"]) == 2 and dev["memory_total"] > 0 and isinstance(dev["bf16"], bool)
    assert p["nvml"]["devices"][0]["memory_total"] >= dev["memory_total"] * 0.9
