"""The test ground's build coordination (testground.binaries): one background build, parts
waited for on their own locks, and a build that stops when the process it serves has ended.

Nothing here compiles: the locks, the waiting and the stopping are exercised with files and
short-lived processes of the test's own.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from testground import binaries

TESTS = Path(__file__).resolve().parents[1]


def _hold_lock(folder: Path) -> subprocess.Popen[str]:
    """A process holding ``folder``'s build lock, as another build would, until its stdin closes."""
    script = textwrap.dedent(
        """
        import fcntl, sys
        lock = open(sys.argv[1], "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.read()
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(folder / ".lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_caller_needing_one_binary_goes_on_once_it_is_there_while_the_build_still_runs(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "tools"
    folder.mkdir()
    holder = _hold_lock(folder)
    try:
        threading.Timer(1.0, lambda: (folder / "helm").write_text("")).start()
        started = time.monotonic()
        made: list[Path] = []
        got = binaries._made_once(folder, lambda f: (f / "helm").exists(), made.append)
        waited = time.monotonic() - started
        assert got == folder
        assert made == [], "the other process's build made it: this caller must not build"
        assert 0.9 < waited < 10, waited
        assert holder.poll() is None, "the other build still holds the lock"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)


def test_a_part_nobody_builds_is_made_once_by_one_of_two_callers(tmp_path: Path) -> None:
    folder = tmp_path / "tools"
    calls: list[str] = []

    def make(target: Path) -> None:
        calls.append(threading.current_thread().name)
        time.sleep(0.5)
        (target / "done").write_text("")

    def ask() -> None:
        binaries._made_once(folder, lambda f: (f / "done").exists(), make)

    askers = [threading.Thread(target=ask, name=f"asker-{n}") for n in range(2)]
    for thread in askers:
        thread.start()
    for thread in askers:
        thread.join(timeout=30)
    assert len(calls) == 1, calls
    assert (folder / "done").exists()


def test_the_build_order_is_the_parts_list_and_every_part_can_be_asked_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for var in binaries.ENV_OVERRIDES:
        monkeypatch.delenv(var, raising=False)
    assert binaries.BUILD_PARTS[0] == "control-plane"
    assert [binaries.part_built(part) for part in binaries.BUILD_PARTS] == [False] * len(binaries.BUILD_PARTS)
    # helm and kubectl first: the unit tests rendering the chart need only those.
    assert [step[0] for step in binaries._build_plan()][:2] == ["helm", "kubectl"]
    assert sorted(step[0] for step in binaries._build_plan()) == sorted(binaries.ALL_BINARIES)


def test_no_second_background_build_starts_while_one_holds_the_builder_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for var in binaries.ENV_OVERRIDES:
        monkeypatch.delenv(var, raising=False)
    lock_path = binaries._builder_lock()
    lock_path.parent.mkdir(parents=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Another open of the file is another open file description: flock sees the lock as held.
        assert binaries._builder_running()
        assert binaries.start_background_build(["keda"], os.getpid()) is None
    assert not binaries._builder_running()


def test_a_build_stops_with_its_children_once_the_process_it_serves_has_ended() -> None:
    served = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    script = textwrap.dedent(
        f"""
        import signal, subprocess, sys, time
        from testground import binaries
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        child = subprocess.Popen(["sleep", "60"])  # stands for go
        print(child.pid, flush=True)
        binaries._stop_when_gone({served.pid})
        time.sleep(60)
        """
    )
    build = subprocess.Popen(
        [sys.executable, "-c", script], cwd=TESTS, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert build.stdout is not None
        child = int(build.stdout.readline())
        time.sleep(1.5)
        assert build.poll() is None, "the served process lives: the build goes on"
        served.kill()
        served.wait()
        assert build.wait(timeout=15) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the group's SIGTERM reached it; its parent is gone, init reaps it
        stat = Path(f"/proc/{child}/stat")
        assert not stat.exists() or "Z" in stat.read_text().split()[2]  # gone, or a zombie init reaps
    finally:
        served.kill()
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGKILL)
        build.wait()
