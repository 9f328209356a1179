"""The README's tested shell blocks: each is marked with an HTML comment before its fence.

    <!-- readme-test: local expect="STATUS: deployed" -->

The first word names the test ground that runs the block: ``local`` (the walk of
e2e/test_readme.py, on the test ground's ordinary nodes) or ``pod-network``
(e2e/test_network.py, from a pod-like network namespace, as a pod in the cluster
runs it). ``expect="..."`` (any number) is text its output must contain.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

LOCAL = "local"
POD_NETWORK = "pod-network"
GROUNDS = (LOCAL, POD_NETWORK)

_MARKER_RE = re.compile(r"^<!--\s*readme-test:\s*(?P<body>.*?)\s*-->\s*$")
_FENCE_OPEN_RE = re.compile(r"^```(sh|bash|shell)\s*$")


@dataclass(frozen=True)
class ReadmeBlock:
    line: int  #: 1-based line of the block's first command in the README
    ground: str  #: where it runs: one of GROUNDS
    code: str
    expects: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"README.md line {self.line}:\n{self.code}"


def parse_marker(body: str, line: int) -> tuple[str, tuple[str, ...]]:
    """``local expect="a" expect="b"`` -> ("local", ("a", "b"))."""
    words = shlex.split(body)
    if not words:
        raise ValueError(f"README.md line {line}: readme-test marker names no test ground")
    ground, expects = words[0], []
    if ground not in GROUNDS:
        raise ValueError(
            f"README.md line {line}: unknown test ground {ground!r} (one of {', '.join(GROUNDS)})"
        )
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if key != "expect" or not sep or not value:
            raise ValueError(f"README.md line {line}: unknown readme-test option {word!r}")
        expects.append(value)
    return ground, tuple(expects)


def marked_blocks(text: str) -> list[ReadmeBlock]:
    """Every shell block preceded by a readme-test marker, in document order.

    A marker not followed by a shell fence, or a fence that never closes, is an
    error: a mistyped marker must not silently drop a block from the test.
    """
    lines = text.splitlines()
    blocks: list[ReadmeBlock] = []
    for index, raw in enumerate(lines):
        marker = _MARKER_RE.match(raw.strip())
        if not marker:
            continue
        ground, expects = parse_marker(marker.group("body"), index + 1)
        fence = index + 1
        if fence >= len(lines) or not _FENCE_OPEN_RE.match(lines[fence].strip()):
            raise ValueError(
                f"README.md line {index + 1}: readme-test marker is not followed by a ```sh fence"
            )
        end = next((i for i in range(fence + 1, len(lines)) if lines[i].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md line {fence + 1}: the marked block's fence never closes")
        code = "\n".join(lines[fence + 1 : end]) + "\n"
        blocks.append(ReadmeBlock(line=fence + 2, ground=ground, code=code, expects=expects))
    return blocks
