"""The status type and the CRD's status schema, field by field.

Every field of :class:`TritonResNetStatus` (and of the types inside it) has a
property of the same camelCase name and a matching type in the CRD, and the
CRD has no status property the type lacks: a field one side writes and the
other does not know cannot come back.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tritonresnet.api import status as st
from tritonresnet.api.status import TritonResNetStatus, camel

CRD = Path(__file__).resolve().parents[2] / "crds" / "tritonresnet.io_tritonresnets.yaml"


def status_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    return schema


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner
    return annotation


def mismatches(cls: type, schema: Mapping[str, Any], path: str) -> list[str]:
    hints = typing.get_type_hints(cls, vars(st))
    props = schema.get("properties") or {}
    problems = []
    names = {camel(f.name): f.name for f in fields(cls)}
    for prop in sorted(set(props) - set(names)):
        problems.append(f"{path}.{prop}: in the CRD, not in {cls.__name__}")
    for prop, attr in sorted(names.items()):
        if prop not in props:
            problems.append(f"{path}.{prop}: in {cls.__name__}, not in the CRD")
            continue
        problems += type_mismatches(_unwrap(hints[attr]), props[prop], f"{path}.{prop}")
    return problems


def type_mismatches(annotation: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    origin = typing.get_origin(annotation)
    if is_dataclass(annotation):
        if schema.get("type") != "object":
            return [f"{path}: object in the type, {schema.get('type')} in the CRD"]
        return mismatches(annotation, schema, path)  # type: ignore[arg-type]
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        if schema.get("type") != "array":
            return [f"{path}: array in the type, {schema.get('type')} in the CRD"]
        return type_mismatches(item, schema.get("items") or {}, f"{path}[]")
    if origin is Mapping or annotation is Mapping:
        values = schema.get("additionalProperties") or {}
        ok = schema.get("type") == "object" and values.get("type") == "string"
        return [] if ok else [f"{path}: a map of strings in the type, not in the CRD"]
    if typing.get_origin(annotation) is typing.Literal:
        annotation = str
    expected = {int: "integer", str: "string", bool: "boolean"}[annotation]
    return [] if schema.get("type") == expected else [f"{path}: {expected} in the type, {schema.get('type')}"]


def test_status_type_matches_the_crd_status_schema_field_by_field() -> None:
    assert mismatches(TritonResNetStatus, status_schema(), "status") == []


def test_the_comparison_finds_a_field_the_crd_does_not_know() -> None:
    schema = status_schema()
    del schema["properties"]["targets"]["items"]["properties"]["artifactBytes"]
    schema["properties"]["phase"]["type"] = "integer"
    found = mismatches(TritonResNetStatus, schema, "status")
    assert "status.targets[].artifactBytes: in TargetStatus, not in the CRD" in found
    assert any(p.startswith("status.phase:") for p in found)


@pytest.mark.parametrize("reason", st.REASONS, ids=lambda r: r.name)
def test_every_reason_is_camel_case_and_stalled_reasons_warn(reason: st.Reason) -> None:
    assert reason.name[:1].isupper() and reason.name.isalnum()
    assert st.reason_named(reason.name) is reason
    if reason.meaning == "stalled":
        assert reason.warning
