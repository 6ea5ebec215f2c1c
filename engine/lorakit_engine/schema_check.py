"""A checker for the part of JSON Schema (draft 2020-12) that protocol/*.schema.json uses, so the engine
validates plans, events and control lines without the jsonschema package in the interpreter (a GPU
machine's own Python seldom has it).

Keywords: type, properties, required, additionalProperties, propertyNames, items, const, enum, anyOf, oneOf,
minimum, maximum, exclusiveMinimum, exclusiveMaximum, minItems, maxItems, minLength, maxLength, pattern; the
annotations title, description, default, examples, format and $schema are read past. A schema with any other
keyword is refused when it is loaded, so a new export that needs more fails loudly instead of passing
everything. Messages follow the jsonschema package's wording; engine/tests/test_schema_check.py compares both
on every schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

CHECKED = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "items",
    "const",
    "enum",
    "anyOf",
    "oneOf",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
}
ANNOTATIONS = {"title", "description", "default", "examples", "format", "$schema", "$id", "$comment"}

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str
    keyword: str

    def where(self) -> str:
        return ".".join(str(p) for p in self.path) or "(top level)"


class UnsupportedSchema(ValueError):
    pass


def unsupported_keywords(schema: Any, at: str = "#") -> list[str]:
    """Every keyword this checker does not implement, as `pointer: keyword`."""
    out: list[str] = []
    if isinstance(schema, bool):
        return out
    if not isinstance(schema, dict):
        return [f"{at}: a schema must be an object or a boolean"]
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        if key not in CHECKED:
            out.append(f"{at}: {key}")
        elif key == "properties":
            for name, sub in value.items():
                out.extend(unsupported_keywords(sub, f"{at}/properties/{name}"))
        elif key in ("additionalProperties", "propertyNames", "items"):
            out.extend(unsupported_keywords(value, f"{at}/{key}"))
        elif key in ("anyOf", "oneOf"):
            for i, sub in enumerate(value):
                out.extend(unsupported_keywords(sub, f"{at}/{key}/{i}"))
    return out


class Checker:
    def __init__(self, schema: dict):
        bad = unsupported_keywords(schema)
        if bad:
            raise UnsupportedSchema(
                "the schema uses keywords this checker does not implement: " + ", ".join(bad)
            )
        self.schema = schema

    def problems(self, value: Any) -> list[Problem]:
        return list(_check(self.schema, value, ()))


# ---------------------------------------------------------------- the keywords

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: _is_number(v),
    "integer": lambda v: _is_number(v) and (isinstance(v, int) or float(v).is_integer()),
}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1.0 is 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _check(schema: Any, value: Any, path: Path) -> Iterator[Problem]:
    if schema is True:
        return
    if schema is False:
        yield Problem(path, f"False schema does not allow {value!r}", "false")
        return
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            yield Problem(path, f"{value!r} is not of type {', '.join(repr(t) for t in types)}", "type")
    if "const" in schema and not _equal(value, schema["const"]):
        yield Problem(path, f"{schema['const']!r} was expected", "const")
    if "enum" in schema and not any(_equal(value, e) for e in schema["enum"]):
        yield Problem(path, f"{value!r} is not one of {schema['enum']!r}", "enum")
    if _is_number(value):
        yield from _numbers(schema, value, path)
    if isinstance(value, str):
        yield from _strings(schema, value, path)
    if isinstance(value, list):
        yield from _arrays(schema, value, path)
    if isinstance(value, dict):
        yield from _objects(schema, value, path)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            yield from _alternatives(key, schema[key], value, path)


def _numbers(schema: dict, value: float, path: Path) -> Iterator[Problem]:
    if "minimum" in schema and value < schema["minimum"]:
        yield Problem(path, f"{value!r} is less than the minimum of {schema['minimum']!r}", "minimum")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        m = schema["exclusiveMinimum"]
        yield Problem(path, f"{value!r} is less than or equal to the minimum of {m!r}", "exclusiveMinimum")
    if "maximum" in schema and value > schema["maximum"]:
        yield Problem(path, f"{value!r} is greater than the maximum of {schema['maximum']!r}", "maximum")
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        m = schema["exclusiveMaximum"]
        yield Problem(path, f"{value!r} is greater than or equal to the maximum of {m!r}", "exclusiveMaximum")


def _length(kind: str, value: Any, least: int | None, most: int | None) -> Iterator[tuple[str, str]]:
    if least is not None and len(value) < least:
        yield (f"{value!r} should be non-empty" if least == 1 else f"{value!r} is too short"), f"min{kind}"
    if most is not None and len(value) > most:
        yield (f"{value!r} is expected to be empty" if most == 0 else f"{value!r} is too long"), f"max{kind}"


def _strings(schema: dict, value: str, path: Path) -> Iterator[Problem]:
    for message, keyword in _length("Length", value, schema.get("minLength"), schema.get("maxLength")):
        yield Problem(path, message, keyword)
    if "pattern" in schema and not re.search(schema["pattern"], value):
        yield Problem(path, f"{value!r} does not match {schema['pattern']!r}", "pattern")


def _arrays(schema: dict, value: list, path: Path) -> Iterator[Problem]:
    for message, keyword in _length("Items", value, schema.get("minItems"), schema.get("maxItems")):
        yield Problem(path, message, keyword)
    if "items" in schema:
        for i, item in enumerate(value):
            yield from _check(schema["items"], item, (*path, i))


def _objects(schema: dict, value: dict, path: Path) -> Iterator[Problem]:
    props = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            yield Problem(path, f"{name!r} is a required property", "required")
    for name, sub in props.items():
        if name in value:
            yield from _check(sub, value[name], (*path, name))
    extra = [k for k in value if k not in props]
    more = schema.get("additionalProperties", True)
    if more is False and extra:
        yield Problem(
            path, f"unknown key {', '.join(repr(k) for k in sorted(extra))}", "additionalProperties"
        )
    elif isinstance(more, dict):
        for k in extra:
            yield from _check(more, value[k], (*path, k))
    if "propertyNames" in schema:
        for k in value:
            yield from _check(schema["propertyNames"], k, path)


def _alternatives(key: str, branches: list, value: Any, path: Path) -> Iterator[Problem]:
    results = [list(_check(b, value, path)) for b in branches]
    valid = sum(1 for r in results if not r)
    if valid == 1 or (valid > 1 and key == "anyOf"):
        return
    if valid > 1:
        yield Problem(path, f"{value!r} is valid under each of {valid} alternatives", key)
        return

    # None fits. Report the problems of the alternatives meant for this kind of value (an object where
    # object-or-null is allowed; the event whose `type` matches), not of every alternative.
    def other_kind(p: Problem) -> bool:
        return (p.keyword == "type" and p.path == path) or (
            p.keyword == "const" and p.path == (*path, "type")
        )

    fitting = [r for r in results if not any(other_kind(p) for p in r)]
    if fitting:
        for r in fitting:
            yield from r
    else:
        yield Problem(path, f"{value!r} is not valid under any of the given schemas", key)
