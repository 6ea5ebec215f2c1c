"""Codes and findings from protocol/findings.json: every code the engine can emit (as a finding or as an
error event) is in the catalogue, found by reading the engine's source; an unknown code is refused where a
finding is made; titles and fixes are filled as the product fills them (a golden vector vitest reads too)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from prepared import REPO

from lorakit_engine import findings
from lorakit_engine.findings import UnknownCode, fill, finding_event, known
from lorakit_engine.protocol import schema_errors

ENGINE = REPO / "engine" / "lorakit_engine"
CODE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
# Calls whose string arguments name a code: errors, findings, the monitor's once-only findings.
CALLS = {"EngineError", "finding", "finding_event", "_once"}
GOLDEN = json.loads((REPO / "tests" / "fixtures" / "fill-golden.json").read_text(encoding="utf-8"))


def codes_in(source: str) -> set[str]:
    """Codes a piece of engine source can emit: UPPER_SNAKE strings passed to EngineError / finding /
    finding_event / _once, assigned to `code`, or keys of a `_HINTS` table (error_event's own codes)."""
    found: set[str] = set()

    def strings(node: ast.AST) -> list[str]:
        return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name in CALLS:
                found.update(s for arg in node.args for s in strings(arg) if CODE.match(s))
        elif isinstance(node, ast.Assign):
            targets = [t for t in node.targets if isinstance(t, (ast.Name, ast.Tuple))]
            names = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            if "code" in names or "_HINTS" in names:
                found.update(s for s in strings(node.value) if CODE.match(s))
    return found


def engine_codes() -> dict[str, list[str]]:
    """Each code the engine's source can emit, with the files it is in."""
    where: dict[str, list[str]] = {}
    for path in sorted(ENGINE.rglob("*.py")):
        for code in codes_in(path.read_text(encoding="utf-8")):
            where.setdefault(code, []).append(str(path.relative_to(ENGINE)))
    return where


def test_every_code_the_engine_emits_is_in_the_catalogue():
    where = engine_codes()
    # the scan sees the engine's codes at all (a scan that finds nothing would pass anything)
    assert {"PLAN_INVALID", "MODEL_LOAD_FAILED", "TRAIN_NONFINITE_LOSS", "ENGINE_CRASH", "USAGE"} <= set(
        where
    )
    assert len(where) >= 25, sorted(where)
    unknown = {code: files for code, files in where.items() if not known(code)}
    assert unknown == {}, "codes missing from protocol/findings.json (add them to the product's catalogue)"


def test_the_scan_catches_a_code_outside_the_catalogue():
    source = 'raise EngineError("NOT_A_REAL_CODE", "m", "h")\nfinding(emit, "ALSO_NOT_ONE", {})\n'
    assert codes_in(source) == {"NOT_A_REAL_CODE", "ALSO_NOT_ONE"}
    assert not known("NOT_A_REAL_CODE")


def test_an_unknown_code_is_refused_where_the_finding_is_made():
    with pytest.raises(UnknownCode, match="NOT_A_REAL_CODE"):
        finding_event("NOT_A_REAL_CODE", {})


def test_a_finding_takes_severity_title_and_fix_from_the_catalogue():
    spec = findings.catalogue()["codes"]["TRAIN_LOSS_SPIKE"]
    event = finding_event("TRAIN_LOSS_SPIKE", {"step": 12, "loss": 7.25})
    assert schema_errors("event", event) == []
    assert event["severity"] == spec["severity"] and event["fix"] == spec["fix"]
    assert event["title"] == spec["title"].replace("{loss}", "7.25").replace("{step}", "12")
    assert finding_event("TRAIN_LOSS_SPIKE", {}, severity="info")["severity"] == "info"


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_fill_matches_the_golden_vector(case):
    assert fill(case["template"], case["evidence"]) == case["filled"]


def test_no_finding_text_in_the_engine():
    """Titles and fixes live in the catalogue: no engine source spells one of them out."""
    texts = [
        spec[key]
        for spec in findings.catalogue()["codes"].values()
        for key in ("title", "fix")
        if len(spec[key]) > 40 and "{" not in spec[key]
    ]
    sources = {p: p.read_text(encoding="utf-8") for p in Path(ENGINE).rglob("*.py")}
    assert [(t, str(p)) for t in texts for p, s in sources.items() if t in s] == []
