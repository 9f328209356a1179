"""The configuration reference in README.md, rendered from the CRD's schema.

The CRD's ``openAPIV3Schema`` is the one place where each field's type,
default, allowed values and description live; this module turns it into
Markdown tables so the README cannot drift from what the apiserver enforces.

    python docs/reference_docs.py                    # print the Markdown
    python docs/reference_docs.py --write README.md  # replace the marked block
    python docs/reference_docs.py --check README.md  # exit 1 when out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

START_MARKER = "<!-- config-reference:start -->"
END_MARKER = "<!-- config-reference:end -->"

#: The CRD in a source checkout (this tool sits in docs/).
DEFAULT_CRD = Path(__file__).resolve().parents[1] / "crds" / "tritonresnet.io_tritonresnets.yaml"

Schema = Mapping[str, Any]


@dataclass(frozen=True)
class FieldDoc:
    """One row of the reference: a field of the spec and what the schema says about it."""

    path: str  #: dotted, ``[]`` for list items: ``engine.targets[].nodeSelector``
    type: str
    required: bool
    default: str  #: JSON of the schema default, empty when none
    constraints: tuple[str, ...]
    description: str


def load_crd(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path} is not a CustomResourceDefinition")
    return crd


def storage_version_schema(crd: Mapping[str, Any]) -> Schema:
    """The ``openAPIV3Schema`` of the version the apiserver stores (the one users write)."""
    for version in crd["spec"]["versions"]:
        if version.get("storage"):
            schema: Schema = version["schema"]["openAPIV3Schema"]
            return schema
    raise ValueError("the CRD has no storage version")


def type_name(schema: Schema) -> str:
    """A short human type: ``string``, ``[]object``, ``map[string]string``, ``int or string``."""
    if schema.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = str(schema.get("type", "object" if schema.get("x-kubernetes-preserve-unknown-fields") else "any"))
    if kind == "array":
        return "[]" + type_name(schema.get("items", {}))
    if kind == "object" and isinstance(schema.get("additionalProperties"), Mapping):
        return "map[string]" + type_name(schema["additionalProperties"])
    if schema.get("format") and kind in ("string", "integer", "number"):
        return f"{kind} ({schema['format']})"
    return kind


def constraints_of(schema: Schema) -> tuple[str, ...]:
    """What the apiserver enforces on this field, in words, in a stable order."""
    found: list[str] = []
    if "enum" in schema:
        found.append("one of " + ", ".join(f"`{value}`" for value in schema["enum"]))
    for key, word in (("minimum", "≥"), ("maximum", "≤")):
        if key in schema:
            found.append(f"{word} {schema[key]}")
    for key, word in (
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
        ("minItems", "items ≥"),
        ("maxItems", "items ≤"),
        ("minProperties", "entries ≥"),
        ("maxProperties", "entries ≤"),
    ):
        if key in schema:
            found.append(f"{word} {schema[key]}")
    if "pattern" in schema:
        found.append(f"matches `{schema['pattern']}`")
    if schema.get("x-kubernetes-list-type") in ("set", "map"):
        found.append(f"list type {schema['x-kubernetes-list-type']}")
    for rule in schema.get("x-kubernetes-validations", ()):
        found.append(_text(str(rule["message"])) if rule.get("message") else f"`{rule['rule']}`")
    items = schema.get("items")
    if schema.get("type") == "array" and isinstance(items, Mapping) and items.get("type") != "object":
        found.extend(f"each {text}" for text in constraints_of(items))
    return tuple(found)


def _text(text: str) -> str:
    """Plain text for Markdown: one line, and no ``<name>`` mistaken for an HTML tag."""
    return " ".join(text.split()).replace("<", "&lt;").replace(">", "&gt;")


def walk(schema: Schema, prefix: str = "", required: bool = False) -> Iterator[FieldDoc]:
    """Every field under ``schema``, parents before children, properties in schema order."""
    if prefix:
        yield FieldDoc(
            path=prefix,
            type=type_name(schema),
            required=required,
            default=json.dumps(schema["default"], sort_keys=True) if "default" in schema else "",
            constraints=constraints_of(schema),
            description=_text(str(schema.get("description", ""))),
        )
    children = schema.get("properties")
    item_prefix = prefix
    if schema.get("type") == "array" and isinstance(schema.get("items"), Mapping):
        children = schema["items"].get("properties")
        item_prefix = prefix + "[]"
        schema = schema["items"]
    elif isinstance(schema.get("additionalProperties"), Mapping):
        children = schema["additionalProperties"].get("properties")
        item_prefix = prefix + ".<key>"
        schema = schema["additionalProperties"]
    if not children:
        return
    required_names = set(schema.get("required", ()))
    for name, child in children.items():
        path = f"{item_prefix}.{name}" if item_prefix else name
        yield from walk(child, path, name in required_names)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: only ``|`` needs escaping, even in code spans
    (GitHub's table parser removes the backslash before it renders the cell)."""
    return text.replace("|", "\\|")


def _row(field: FieldDoc, section: str) -> str:
    name = field.path[len(section) + 1 :] if field.path != section else field.path
    flags = " **required**" if field.required else ""
    default = f"`{field.default}`" if field.default else ""
    constraints = "; ".join(field.constraints)
    return (
        f"| `{_cell(name)}`{flags} | {_cell(field.type)} | {_cell(default)} "
        f"| {_cell(constraints)} | {_cell(field.description)} |"
    )


def render_markdown(crd: Mapping[str, Any]) -> str:
    """The reference: one table per top-level section of ``spec``, plus the resource-wide rules."""
    schema = storage_version_schema(crd)
    spec = schema["properties"]["spec"]
    names = crd["spec"]["names"]
    version = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
    lines = [
        "<!-- Generated by `python docs/reference_docs.py --write README.md` from "
        "crds/tritonresnet.io_tritonresnets.yaml; edit the CRD's descriptions, not this block. -->",
        "",
        f"`apiVersion: {crd['spec']['group']}/{version}`, `kind: {names['kind']}`"
        + (f", short name `{', '.join(names.get('shortNames', []))}`" if names.get("shortNames") else "")
        + ".",
        "",
    ]
    if spec.get("description"):
        lines += [_text(spec["description"]), ""]
    top_required = set(spec.get("required", ()))
    for section, section_schema in spec.get("properties", {}).items():
        lines.append(f"### `spec.{section}`" + (" (required)" if section in top_required else ""))
        lines.append("")
        if section_schema.get("description"):
            lines += [_text(section_schema["description"]), ""]
        rules = constraints_of(section_schema)
        if rules:
            lines += [f"- {rule}" for rule in rules] + [""]
        fields = [f for f in walk(section_schema, section) if f.path != section]
        if fields:
            lines += ["| field | type | default | validation | description |", "|---|---|---|---|---|"]
            lines += [_row(f, section) for f in fields]
            lines.append("")
    # Rules on the spec and on the whole object (e.g. ones that read metadata.name).
    cross_rules = [*spec.get("x-kubernetes-validations", ()), *schema.get("x-kubernetes-validations", ())]
    spec_rules = [_text(str(r.get("message") or r["rule"])) for r in cross_rules]
    if spec_rules:
        lines += ["### Rules across sections", ""] + [f"- {rule}" for rule in spec_rules] + [""]
    return "\n".join(lines).rstrip() + "\n"


def replace_block(document: str, rendered: str) -> str:
    """``document`` with the text between the markers replaced by ``rendered``."""
    start = document.find(START_MARKER)
    end = document.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"the document has no {START_MARKER} ... {END_MARKER} block")
    head = document[: start + len(START_MARKER)]
    return f"{head}\n{rendered}{document[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python docs/reference_docs.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--crd", type=Path, default=DEFAULT_CRD, help="the CRD YAML (default: crds/ of this checkout)"
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", type=Path, metavar="FILE", help="replace the marked block in FILE")
    action.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE's block is out of date")
    args = parser.parse_args(argv)
    rendered = render_markdown(load_crd(args.crd))
    if args.write:
        args.write.write_text(replace_block(args.write.read_text(), rendered))
        return 0
    if args.check:
        current = args.check.read_text()
        if replace_block(current, rendered) != current:
            print(
                f"{args.check}: the configuration reference is out of date; run "
                f"python docs/reference_docs.py --write {args.check}",
                file=sys.stderr,
            )
            return 1
        return 0
    sys.stdout.write(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
