"""`make demo` end to end: the demo script on its own fresh test ground prints a labelled top 5."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

TESTS = Path(__file__).resolve().parents[1]

# "  1. 0.8123  (index 207) golden retriever"
TOP_LINE = re.compile(r"^\s*\d\.\s+-?\d+(\.\d+)?\s+\(index (\d+)\)\s+\S")


def test_demo_runs_from_nothing_to_a_labelled_top_five(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.run(
        [sys.executable, "-m", "testground.demo", "--workdir", str(tmp_path / "demo")],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    assert "emulated:" in out, "the demo must say what is emulated"
    top = [m for m in (TOP_LINE.match(line) for line in out.splitlines()) if m]
    assert len(top) == 5, out[-2000:]
    assert all(0 <= int(m.group(2)) < 1000 for m in top)
    assert "Ready" in out
