"""builder_image/Dockerfile: it parses, starts from the TensorRT NGC image of a chosen release,
runs as non-root, and its entry point is the builder's console script."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tritonresnet_builder import cli

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "builder_image" / "Dockerfile"
INSTRUCTIONS = {
    "FROM",
    "ARG",
    "ENV",
    "LABEL",
    "WORKDIR",
    "COPY",
    "ADD",
    "RUN",
    "USER",
    "ENTRYPOINT",
    "CMD",
    "EXPOSE",
    "VOLUME",
    "HEALTHCHECK",
    "SHELL",
    "STOPSIGNAL",
    "ONBUILD",
}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    parsed: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        parsed.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return parsed


def test_dockerfile_parses_into_known_instructions() -> None:
    parsed = instructions(DOCKERFILE.read_text())
    unknown = [k for k, _ in parsed if k not in INSTRUCTIONS]
    assert not unknown, unknown
    assert parsed[0] == ("ARG", "TENSORRT_RELEASE=25.01")
    assert ("FROM", "nvcr.io/nvidia/tensorrt:${TENSORRT_RELEASE}-py3") in parsed


def test_dockerfile_runs_the_builder_as_non_root() -> None:
    parsed = instructions(DOCKERFILE.read_text())
    users = [args for k, args in parsed if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entrypoint = [args for k, args in parsed if k == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoint] == [["tritonresnet-builder"]]


def test_dockerfile_installs_without_test_extras_and_copies_what_exists() -> None:
    parsed = instructions(DOCKERFILE.read_text())
    runs = " ".join(args for k, args in parsed if k == "RUN")
    assert "pip install" in runs and "[test]" not in runs
    for kind, args in parsed:
        if kind == "COPY":
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_entry_point_is_declared_and_exists() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    target = scripts["tritonresnet-builder"]
    assert target == "tritonresnet_builder.cli:main"
    module, _, function = target.partition(":")
    assert module == cli.__name__ and callable(getattr(cli, function))
    assert re.search(
        r"def main\(argv: Sequence\[str\] \| None = None\) -> int", Path(cli.__file__).read_text()
    )
