"""The boundary itself: plan validation naming every bad key, error events for each failure kind, control
lines, the event writer, prepared-data checks. Fast: no model is loaded."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import pytest
import torch
from prepared import make_plan, memorize_set, run_engine, write_plan, write_prepared

from lorakit_engine import protocol
from lorakit_engine.__main__ import main
from lorakit_engine.batches import Batches, build
from lorakit_engine.control import Controls, read_lines
from lorakit_engine.data import Prepared
from lorakit_engine.protocol import EngineError, EventWriter, error_event, schema_errors

FAKE_MODEL = Path("/nonexistent/model")


def test_protocol_bad_plan_names_every_bad_key(tmp_path):
    plan = make_plan(tmp_path, FAKE_MODEL, eval=False)
    plan["train"]["batch_sise"] = 4
    plan["lora"]["r"] = 0
    del plan["resume"]
    events, rc, stderr = run_engine(write_plan(tmp_path, plan), command="validate")
    assert rc == 1 and len(events) == 1, stderr
    err = events[0]
    assert schema_errors("event", err) == []
    assert err["code"] == "PLAN_INVALID"
    assert "batch_sise" in err["message"] and "lora.r" in err["message"] and "resume" in err["message"]
    assert "3 problem(s)" in err["message"]


def test_protocol_plan_that_is_not_json(tmp_path):
    (tmp_path / "plan.json").write_text("{version: 1")
    out = io.StringIO()
    assert main(["train", "--plan", str(tmp_path / "plan.json")], stdout=out) == 1
    err = json.loads(out.getvalue())
    assert err["code"] == "PLAN_INVALID" and "line 1" in err["message"]


def test_protocol_usage_error_is_an_event():
    out = io.StringIO()
    assert main(["fly"], stdout=out) == 1
    assert json.loads(out.getvalue())["code"] == "USAGE"


def test_protocol_validate_accepts_a_good_plan(tmp_path, fixtures_dir):
    out = io.StringIO()
    plan = make_plan(tmp_path, fixtures_dir / "models" / "tiny-llama")
    assert main(["validate", "--plan", str(write_plan(tmp_path, plan))], stdout=out) == 0
    (event,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert event["type"] == "log" and "valid" in event["message"]


def test_protocol_validate_checks_prepared_counts(tmp_path):
    plan = make_plan(tmp_path, FAKE_MODEL, eval=False)
    plan["model"]["path"] = str(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    plan["data"]["train"]["tokens"] += 1
    out = io.StringIO()
    assert main(["validate", "--plan", str(write_plan(tmp_path, plan))], stdout=out) == 1
    err = json.loads(out.getvalue())
    assert err["code"] == "DATA_INVALID" and "tokens" in err["message"]


def test_protocol_protocol_dir_override(tmp_path, monkeypatch):
    """Schemas, the finding catalogue and the family registry all come from LORAKIT_PROTOCOL_DIR when set."""
    from lorakit_engine.findings import catalogue
    from lorakit_engine.models.registry import families

    monkeypatch.setenv("LORAKIT_PROTOCOL_DIR", str(tmp_path))
    protocol.protocol_file.cache_clear()
    protocol._checker.cache_clear()
    families.cache_clear()
    try:
        for read, name in (
            (lambda: protocol.schema("plan"), "plan.schema.json"),
            (catalogue, "findings.json"),
        ):
            with pytest.raises(EngineError) as e:
                read()
            assert e.value.code == "PROTOCOL_MISSING" and str(tmp_path / name) in e.value.message
        with pytest.raises(EngineError, match="families.json"):
            families()
    finally:
        monkeypatch.delenv("LORAKIT_PROTOCOL_DIR")
        protocol.protocol_file.cache_clear()
        protocol._checker.cache_clear()
        families.cache_clear()


def test_protocol_error_events_classify_failures():
    from lorakit_engine.models.checkpoint import load_error

    oom = error_event(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert oom["code"] == "CUDA_OOM" and "batch_size" in oom["hint"]
    bad = error_event(load_error("no weights", path="/m", hint="Copy them."))
    assert (
        bad["code"] == "MODEL_LOAD_FAILED"
        and bad["message"] == "no weights [/m]"
        and bad["hint"] == "Copy them."
    )
    crash = error_event(ValueError("boom"))
    assert crash["code"] == "ENGINE_CRASH" and "ValueError: boom" in crash["message"]
    # torch's activation-checkpointing error has the same class name: a crash mid-training, not a bad model
    from torch.utils.checkpoint import CheckpointError as RecomputeError

    recompute = error_event(RecomputeError("A different number of tensors was saved"))
    assert recompute["code"] == "ENGINE_CRASH" and "different number" in recompute["message"]
    for e in (oom, bad, crash, recompute):
        assert schema_errors("event", e) == []


def test_protocol_event_writer_flushes_valid_json_lines():
    out = io.StringIO()
    write = EventWriter(out, check=True)
    write({"type": "eval", "step": 3, "loss": protocol.finite(math.nan), "tokens": 10})
    assert json.loads(out.getvalue()) == {"type": "eval", "step": 3, "loss": None, "tokens": 10}
    with pytest.raises(ValueError):
        write({"type": "eval", "step": -1, "loss": 1.0, "tokens": 10})


def test_protocol_control_lines():
    controls, events = Controls(), []
    stdin = io.StringIO('{"type": "save"}\n\nnot json\n{"type": "stop", "now": true}\n{"type": "stop"}\n')
    read_lines(stdin, controls, events.append)  # returns at EOF: EOF is not a stop
    assert controls.take() == ["stop"]
    assert controls.take() == []
    assert [e["level"] for e in events] == ["warning", "warning", "warning"]  # save is not a control line


def test_protocol_prepared_data_batches(tmp_path):
    samples = memorize_set(5)
    write_prepared(tmp_path, samples)
    data = Prepared(tmp_path)
    assert len(data) == 5
    ids, labels = data.sample(3)
    assert ids.tolist() == samples[3][0] and labels.tolist() == samples[3][1]
    batch = build(data, [0, 2], pad_id=0, packed=False)
    n0 = len(samples[0][0])
    assert batch.attention_mask[0].sum() == n0 and (batch.labels[0, n0:] == -100).all()
    assert batch.trained_tokens == sum(1 for i in (0, 2) for t in samples[i][1][1:] if t != -100)
    b = Batches(data, batch_size=2, seed=3, pad_id=0)
    assert b.per_epoch == 3
    assert b.order(0) == Batches(data, 2, 3, 0).order(0)  # a pure function of (seed, epoch)
    assert sorted(b.order(1)) == list(range(5)) and b.get(0, 2).input_ids.shape[0] == 1


def test_protocol_prepared_data_rejects_broken_files(tmp_path):
    from safetensors.torch import save_file

    save_file(
        {
            "input_ids": torch.zeros(4, dtype=torch.int64),
            "labels": torch.zeros(4, dtype=torch.int32),
            "offsets": torch.tensor([0, 4]),
        },
        str(tmp_path / "tokens.safetensors"),
    )
    with pytest.raises(EngineError) as e:
        Prepared(tmp_path)
    assert e.value.code == "DATA_INVALID" and "input_ids" in e.value.message


def test_protocol_schemas_are_found_next_to_the_package():
    assert protocol.protocol_dir().resolve() == Path(__file__).resolve().parents[2] / "protocol"
    assert os.path.isfile(protocol.protocol_dir() / "event.schema.json")
