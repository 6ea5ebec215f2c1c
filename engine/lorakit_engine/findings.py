"""Findings by code: the catalogue is protocol/findings.json, exported from the product's one list of codes
(stage, severity, title and fix templates). The engine names a code and the evidence; the title and the fix
are the catalogue's, `{key}` filled from the evidence the way the product fills it (src/findings/finding.ts
`fill`: integers as they are, other numbers to 3 significant digits, lists of scalars joined by ", ",
anything else as JSON, cut to 120 characters; a key the evidence lacks stays `{key}`). No torch here.
"""

from __future__ import annotations

import json
import math
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .protocol import Emit, protocol_file

_KEY = re.compile(r"\{([A-Za-z0-9_]+)\}")
_MAX = 120


class UnknownCode(KeyError):
    """A code that is not in protocol/findings.json: a bug in the engine (a unit test scans for them)."""


def catalogue() -> dict[str, Any]:
    """protocol/findings.json: {"codes": {CODE: {stage, severity, title, fix, row}}, "errors": {CODE: …}}."""
    return protocol_file("findings.json")


def known(code: str) -> bool:
    """Whether `code` is in the catalogue, as a finding's or an error event's."""
    return code in catalogue()["codes"] or code in catalogue()["errors"]


def finding_event(code: str, evidence: dict[str, Any], severity: str | None = None) -> dict[str, Any]:
    """A `finding` event (protocol/event.schema.json) for `code`: the catalogue's severity (unless given),
    title and fix, filled from `evidence`."""
    spec = catalogue()["codes"].get(code)
    if spec is None:
        raise UnknownCode(f"{code} is not in protocol/findings.json")
    return {
        "type": "finding",
        "code": code,
        "severity": severity or spec["severity"],
        "title": fill(spec["title"], evidence),
        "evidence": evidence,
        "fix": fill(spec["fix"], evidence),
    }


def finding(emit: Emit, code: str, evidence: dict[str, Any], severity: str | None = None) -> None:
    emit(finding_event(code, evidence, severity))


def fill(template: str, evidence: dict[str, Any]) -> str:
    """`{key}` replaced by the evidence value under `key` (left as is when absent)."""
    return _KEY.sub(lambda m: show(evidence[m.group(1)]) if m.group(1) in evidence else m.group(0), template)


def show(value: Any, limit: int = _MAX) -> str:
    """A short text for an evidence value, as the product shows it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = _short_number(value)
    elif isinstance(value, str):
        text = value
    elif (
        isinstance(value, (list, tuple))
        and value
        and all(not isinstance(x, (dict, list, tuple)) for x in value)
    ):
        text = ", ".join(show(x) for x in value)
    else:
        text = _json(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short_number(x: int | float) -> str:
    """Integers as they are; other numbers rounded to 3 significant digits (half away from zero)."""
    if isinstance(x, int) or not math.isfinite(x) or x.is_integer():
        return _js_number(x)
    d = Decimal(x)
    return _js_number(float(d.quantize(Decimal(1).scaleb(d.adjusted() - 2), rounding=ROUND_HALF_UP)))


def _js_number(x: int | float) -> str:
    """A number as JavaScript writes it: shortest digits, no `.0`, an exponent outside 1e-6 … 1e21."""
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    t = Decimal(repr(abs(x))).as_tuple()  # repr: the shortest digits that read back as x
    digits = "".join(map(str, t.digits))
    point = len(digits) + int(t.exponent)  # where the decimal point falls, counted from the first digit
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= point <= 21:
        return sign + digits + "0" * (point - k)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    e = point - 1
    return sign + digits[0] + ("." + digits[1:] if k > 1 else "") + ("e+" if e >= 0 else "e-") + str(abs(e))


def _json(value: Any) -> str:
    """JSON.stringify's compact text (numbers as JavaScript writes them)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return _js_number(value) if math.isfinite(value) else "null"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{_json(v)}" for k, v in value.items())
            + "}"
        )
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_json(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)
