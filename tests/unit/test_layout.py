"""docs/design.md's module map matches the tree, and the imports that must never exist do not.

The map names every module of the operator package; a module added, moved or
removed without the map changing fails here. The import rules are read from
the code's own import statements (module level and inside functions alike).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "tritonresnet"
DESIGN = REPO / "docs" / "design.md"

#: (module prefix, imports it must never make, why)
NEVER: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "tritonresnet.api",
        ("tritonresnet.controller", "tritonresnet.client", "tritonresnet.cli"),
        "api is shared",
    ),
    ("tritonresnet.client", ("tritonresnet.controller",), "a client never pulls in the controller"),
    *(
        (
            f"tritonresnet.controller.{pure}",
            (
                "tritonresnet.controller.kube",
                "tritonresnet.controller.verify",
                "tritonresnet.controller.runtime",
                "tritonresnet.controller.handlers",
                "numpy",
                "kubernetes",
                "kopf",
            ),
            "deciding is pure and cheap to import",
        )
        for pure in ("reconcile", "observe", "decide", "report", "render", "children", "fleet")
    ),
)


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path


def imports(path: Path, module: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: resolve against this module's package
                package = (
                    module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                )
                base = ".".join([*package, node.module])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_every_operator_module_is_in_the_design_map_and_every_mapped_path_exists() -> None:
    text = DESIGN.read_text()
    mapped = set(re.findall(r"`((?:tritonresnet|operator/tritonresnet)/[\w/{},.]+\.py)`", text))
    named = {p.removeprefix("operator/") for p in mapped}
    for _, path in modules():
        if path.name in ("__init__.py", "__main__.py"):
            continue
        rel = str(path.relative_to(PACKAGE.parent))
        assert rel in named, f"{rel} is not in docs/design.md's module map"
    for rel in named:
        assert (PACKAGE.parent / rel).is_file(), f"docs/design.md names {rel}, which does not exist"


@pytest.mark.parametrize(("module", "path"), list(modules()), ids=[m for m, _ in modules()])
def test_no_forbidden_import(module: str, path: Path) -> None:
    made = imports(path, module)
    for prefix, forbidden, why in NEVER:
        if module == prefix or module.startswith(prefix + "."):
            bad = sorted(i for i in made if any(i == f or i.startswith(f + ".") for f in forbidden))
            assert bad == [], f"{module} imports {bad}: {why}"


def test_the_import_reader_sees_imports_inside_functions() -> None:
    made = imports(PACKAGE / "cli.py", "tritonresnet.cli")
    assert "tritonresnet.controller.handlers" in made or "tritonresnet.controller" in made
