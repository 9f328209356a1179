"""The README's configuration reference is rendered from the CRD and kept in sync."""

from __future__ import annotations

from pathlib import Path

import pytest
import reference_docs
from reference_docs import (
    DEFAULT_CRD,
    END_MARKER,
    START_MARKER,
    load_crd,
    render_markdown,
    replace_block,
    storage_version_schema,
    walk,
)
from testground.chart import REPO_ROOT

README = REPO_ROOT / "README.md"
FIX = "python docs/reference_docs.py --write README.md"


def test_readme_reference_is_in_sync_with_the_crd() -> None:
    current = README.read_text()
    rendered = render_markdown(load_crd(DEFAULT_CRD))
    assert replace_block(current, rendered) == current, f"out of date: run {FIX}"


def test_reference_lists_every_spec_field_with_a_description() -> None:
    crd = load_crd(DEFAULT_CRD)
    rendered = render_markdown(crd)
    spec = storage_version_schema(crd)["properties"]["spec"]
    fields = list(walk(spec))
    assert len(fields) > 30
    undocumented = [f.path for f in fields if not f.description]
    assert undocumented == [], "give these fields a description in the CRD"
    for field in fields:
        section, _, rest = field.path.partition(".")
        assert (f"`{rest}`" if rest else f"`spec.{section}`") in rendered, field.path


def test_reference_shows_defaults_enums_ranges_and_rules() -> None:
    rendered = render_markdown(load_crd(DEFAULT_CRD))
    assert "| `maxBatchSize` | integer | `8` | ≥ 0; ≤ 256 |" in rendered
    assert "one of `tensorrt`, `onnx`" in rendered
    assert "set exactly one of claimName (an existing PVC) and create (a new one)" in rendered
    assert "short name `trn`" in rendered


def test_replace_block_changes_only_the_text_between_the_markers() -> None:
    document = f"# Title\nbefore\n{START_MARKER}\nold\nstuff\n{END_MARKER}\nafter\n"
    result = replace_block(document, "new table\n")
    assert result == f"# Title\nbefore\n{START_MARKER}\nnew table\n{END_MARKER}\nafter\n"
    assert replace_block(result, "new table\n") == result


def test_replace_block_refuses_a_document_without_markers() -> None:
    with pytest.raises(ValueError, match="config-reference"):
        replace_block("# no markers here\n", "table\n")


def test_table_cells_escape_pipes_and_html_like_text() -> None:
    field = {"type": "string", "pattern": "^(x|y)$", "description": "named <name>-models"}
    spec = {"properties": {"a": {"properties": {"b": field}}}}
    version = {"name": "v1", "storage": True, "schema": {"openAPIV3Schema": {"properties": {"spec": spec}}}}
    crd = {
        "kind": "CustomResourceDefinition",
        "spec": {"group": "example.io", "names": {"kind": "Thing"}, "versions": [version]},
    }
    rendered = render_markdown(crd)
    assert "| `b` | string |  | matches `^(x\\|y)$` | named &lt;name&gt;-models |" in rendered


def test_check_flag_fails_on_a_stale_file_and_write_fixes_it(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{START_MARKER}\nstale\n{END_MARKER}\n")
    assert reference_docs.main(["--check", str(readme)]) == 1
    assert reference_docs.main(["--write", str(readme)]) == 0
    assert reference_docs.main(["--check", str(readme)]) == 0
    assert "### `spec.source`" in readme.read_text()
