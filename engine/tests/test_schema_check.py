"""The engine's own schema checker (schema_check.py) against the jsonschema package (a test-only requirement):
on every protocol schema, thousands of instances made from the schema and then broken in one or two places
get the same `path: message` list from both. Also: a schema keyword the checker lacks is refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest

from lorakit_engine import protocol
from lorakit_engine.schema_check import Checker, UnsupportedSchema

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"
SCHEMAS = sorted(p.name.removesuffix(".schema.json") for p in PROTOCOL.glob("*.schema.json"))


def reference_errors(schema: dict, value) -> list[str]:
    """What protocol.schema_errors said when it used jsonschema (the same reading of anyOf/oneOf)."""
    validator = jsonschema.validators.validator_for(schema)(schema)

    def describe(err) -> list[str]:
        if err.context:
            depth = len(err.absolute_path)
            branches: dict[int, list] = {}
            for e in err.context:
                branches.setdefault(e.relative_schema_path[0], []).append(e)

            def other_kind(e) -> bool:
                return (e.validator == "type" and len(e.absolute_path) == depth) or (
                    e.validator == "const"
                    and len(e.absolute_path) == depth + 1
                    and e.absolute_path[-1] == "type"
                )

            fitting = [errs for errs in branches.values() if not any(other_kind(e) for e in errs)]
            if fitting:
                return [d for errs in fitting for e in errs for d in describe(e)]
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            return [f"{where}: unknown key {', '.join(repr(k) for k in extra)}"]
        return [f"{where}: {err.message}"]

    return sorted({d for err in validator.iter_errors(value) for d in describe(err)})


def ours(schema: dict, value) -> list[str]:
    return sorted({f"{p.where()}: {p.message}" for p in Checker(schema).problems(value)})


# ---------------------------------------------------------------- instances made from a schema


def make(schema, rng: random.Random, depth=0):
    """A value the schema accepts (mostly), chosen at random."""
    if schema is True or schema == {}:
        return rng.choice([1, "x", None, [1], {"a": 1}])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return make(rng.choice(schema[key]), rng, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    t = schema.get("type")
    if isinstance(t, list):
        t = rng.choice(t)
    if t == "object" or "properties" in schema:
        out = {}
        for name, sub in schema.get("properties", {}).items():
            if name in schema.get("required", []) or rng.random() < 0.5:
                out[name] = make(sub, rng, depth + 1)
        more = schema.get("additionalProperties")
        if isinstance(more, dict) and rng.random() < 0.5:
            out["extra_key"] = make(more, rng, depth + 1)
        return out
    if t == "array":
        n = max(schema.get("minItems", 0), rng.randint(0, 3))
        return [make(schema.get("items", {}), rng, depth + 1) for _ in range(n)]
    if t == "string":
        if "pattern" in schema:
            return "ABC_1"
        return "s" * max(schema.get("minLength", 0), rng.randint(0, 3))
    if t == "boolean":
        return rng.random() < 0.5
    if t == "null":
        return None
    if t in ("integer", "number"):
        lo = schema.get(
            "minimum", schema.get("exclusiveMinimum", 0) + 1 if "exclusiveMinimum" in schema else 0
        )
        hi = min(schema.get("maximum", lo + 100), lo + 100)
        v = rng.randint(int(lo), int(hi)) if hi >= lo else lo
        return v if t == "integer" or rng.random() < 0.5 else v + 0.5 if v + 0.5 <= hi else v
    return None


ODD = [None, True, False, 0, -1, 1.5, -0.0, 2**60, "", "x", "abc", [], [1], {}, {"k": 1}, float("1e308")]


def paths(value, at=()):
    yield at
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*at, i))


def mutate(value, rng: random.Random):
    """The value with one spot changed: replaced by an odd value, a key dropped, or a key added."""
    value = json.loads(json.dumps(value))
    spots = list(paths(value))
    at = rng.choice(spots)
    if not at:
        return rng.choice(ODD) if rng.random() < 0.2 else value
    holder = value
    for p in at[:-1]:
        holder = holder[p]
    kind = rng.random()
    if kind < 0.6:
        holder[at[-1]] = rng.choice(ODD)
    elif kind < 0.8 and isinstance(holder, dict):
        del holder[at[-1]]
    elif isinstance(holder, dict):
        holder[rng.choice(["unknown", "batch_sise", "typ"])] = 1
    else:
        holder.append(rng.choice(ODD))
    return value


@pytest.mark.parametrize("name", SCHEMAS)
def test_schema_check_agrees_with_jsonschema(name):
    schema = json.loads((PROTOCOL / f"{name}.schema.json").read_text())
    rng = random.Random(name)
    checked = failing = 0
    for _ in range(1500):
        value = make(schema, rng)
        for _ in range(rng.choice([0, 1, 1, 2])):
            value = mutate(value, rng)
        expected = reference_errors(schema, value)
        assert ours(schema, value) == expected, json.dumps(value)[:400]
        checked += 1
        failing += bool(expected)
    # Both kinds were exercised.
    assert checked - failing > 50 and failing > 300


def test_schema_check_is_what_the_engine_validates_with():
    plan_errors = protocol.schema_errors("plan", {"version": 1, "run_dir": 5})  # a plan of another version
    assert "version: 2 was expected" in plan_errors
    assert "run_dir: 5 is not of type 'string'" in plan_errors
    assert "(top level): 'model' is a required property" in plan_errors
    assert protocol.schema_errors("control", {"type": "stop"}) == []


def test_schema_check_refuses_keywords_it_does_not_implement():
    with pytest.raises(UnsupportedSchema, match=r"#/properties/a: \$ref"):
        Checker({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}})
    with pytest.raises(UnsupportedSchema, match=r"#/anyOf/1: if"):
        Checker({"anyOf": [{"type": "null"}, {"if": {}}]})
    Checker({"title": "annotations only", "description": "d", "default": 1})
