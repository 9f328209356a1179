"""`make demo` end to end, the way a newcomer runs it: three times in one folder.

The first run goes from nothing to a labelled top 5. The second, in the same
folder, fails on its own (a wait for Ready it cannot meet) and the third is
stopped with SIGTERM once Triton serves, as a process manager or ``timeout``
stops it. After each run no process it started is left, and no shared-memory
region of its Triton backend stubs is left in /dev/shm. Its processes are found
in /proc by a mark in the environment the demo passes on, by the run's folder
in the command line, or by a working directory inside that folder: the node
agent's pods do not inherit the environment, but each runs inside the folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from testground import network
from testground.clusternet import NETWORK_NODES
from testground.demo import describe_nodes
from testground.network import host_state
from testground.nodeagent import DEFAULT_NODES
from testground.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow, pytest.mark.builds("network")]

TESTS = Path(__file__).resolve().parents[1]
MARK_VARIABLE = "TRITONRESNET_DEMO_TEST_RUN"
#: A whole run on a shared 2-core machine, binaries and models cached: about 1-2 min.
RUN_TIMEOUT = 900.0
#: The teardown stops the node agent (its pods up to 10 s), S3, the operator, the control plane.
TEARDOWN_TIMEOUT = 120.0
#: Processes a run might leave, by what their command line holds (for the failure message).
WATCHED = (
    "tritonserver",
    "triton_python_backend_stub",
    "moto.server",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "etcd",
    "testground.nodeagent",
    "tritonresnet",
    "kube-proxy",
    "coredns",
)
SHM_REGION = re.compile(r"triton_\w+_backend_shm_region_[0-9a-f-]+")

# "  1. 0.8123  (index 207) golden retriever"
TOP_LINE = re.compile(r"^\s*\d\.\s+-?\d+(\.\d+)?\s+\(index (\d+)\)\s+\S")


@dataclass(frozen=True)
class Process:
    pid: int
    argv: str


def processes_of(workdir: Path, mark: str) -> list[Process]:
    """Live processes a demo run in ``workdir`` started (see the module doc for how they are told)."""
    folder = str(workdir)
    environ_mark = f"{MARK_VARIABLE}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited, not yet reaped: nothing runs
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            environ = (entry / "environ").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:  # exited while we looked
            continue
        if environ_mark in environ or folder in argv or cwd == folder or cwd.startswith(folder + os.sep):
            found.append(Process(int(entry.name), argv))
    return found


@dataclass
class DemoRun:
    """One ``python -m testground.demo`` process, watched while it runs."""

    workdir: Path
    args: tuple[str, ...] = ()
    mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    regions: set[str] = field(default_factory=set)  #: Triton stubs' /dev/shm regions seen
    seen: set[str] = field(default_factory=set)  #: WATCHED names seen running
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir.parent / f"demo-{self.mark}.out"

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(TESTS), MARK_VARIABLE: self.mark}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "testground.demo", "--workdir", str(self.workdir), *self.args],
                cwd=TESTS,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def look(self) -> list[Process]:
        running = processes_of(self.workdir, self.mark)
        for process in running:
            self.regions.update(SHM_REGION.findall(process.argv))
            self.seen.update(name for name in WATCHED if name in process.argv)
        return running

    def watch_until(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        """Look at the run's processes every second until ``done()``; fail if the demo exits first."""
        assert self.process is not None

        def probe() -> bool:
            self.look()
            if done():
                return True
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"the demo exited ({self.process.returncode}) before {what}:\n{self.tail()}")
            return False

        wait_for(probe, what, timeout, every=1.0)

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        """Watch the run to its end; its exit code."""
        assert self.process is not None
        process = self.process
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()  # the test's own bound; its children die with their PDEATHSIG
                process.wait()
                pytest.fail(f"the demo did not finish in {timeout:.0f} s:\n{self.tail()}")
            self.look()
            time.sleep(1.0)
        return process.returncode

    def tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]

    def assert_nothing_left(self) -> None:
        """No process of the run and no /dev/shm region of its stubs, a few seconds after it exited
        (bounded: the teardown waited for everything, so this is only for the kernel's reaping)."""
        survivors: list[Process] = []

        def gone() -> bool:
            nonlocal survivors
            survivors = processes_of(self.workdir, self.mark)
            return not survivors

        try:
            wait_for(gone, "the demo's processes to be gone", 10.0, every=0.5)
        except AssertionError:
            listed = "\n".join(f"  {p.pid}: {p.argv[:200]}" for p in survivors)
            pytest.fail(f"the demo left processes running:\n{listed}\n{self.tail()}")
        left = sorted(region for region in self.regions if (Path("/dev/shm") / region).exists())
        assert not left, f"the demo left Triton's shared-memory regions in /dev/shm: {left}"
        # The pod network's namespaces, links and routes go with the run (empty without one).
        assert host_state() == {"netns": [], "links": [], "routes": []}, host_state()


def test_demo_three_times_in_one_folder_leaves_nothing_behind(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"

    # 1. From nothing to a labelled top 5, as `make demo` runs it.
    first = DemoRun(workdir)
    first.start()
    code = first.finish()
    out = first.output()
    assert code == 0, f"demo failed ({code}):\n{first.tail()}"
    assert "emulated:" in out, "the demo must say what is emulated"
    assert f"the kubelets of {describe_nodes(DEFAULT_NODES)}" in out, out[:1500]
    assert f"the kubelets of {len(DEFAULT_NODES)} nodes" in out, "the banner counts the agent's nodes"
    top = [m for m in (TOP_LINE.match(line) for line in out.splitlines()) if m]
    assert len(top) == 5, first.tail()
    assert all(0 <= int(m.group(2)) < 1000 for m in top)
    assert "Ready" in out
    assert {"tritonserver", "moto.server", "kube-apiserver", "etcd", "testground.nodeagent"} <= first.seen
    if not network.available():
        # As a user in the cluster would: by the Service's name, which CoreDNS resolves and
        # kube-proxy routes, and the operator said the Service answered before Ready.
        assert f"on {describe_nodes(NETWORK_NODES)}" in out, out[:1500]
        assert "$ tritonresnet classify " in out and " --url resnet50.vision.svc:8000 " in out, first.tail()
        assert "and the Service 10." in out, first.tail()
        assert {"kube-proxy", "coredns"} <= first.seen, first.seen
    first.assert_nothing_left()

    # 2. Again in the same folder (the run that answered 409 "namespaces vision already
    # exists"), failing on its own: a wait for Ready it cannot meet.
    second = DemoRun(workdir, ("--timeout", "1"))
    second.start()
    code = second.finish()
    out = second.output()
    assert code == 1, f"expected the demo's own failure (1), got {code}:\n{second.tail()}"
    assert "removed the previous run's state" in out, second.tail()
    assert "timed out" in out and "tearing down" in out, second.tail()
    assert "already exists" not in out, second.tail()
    assert {"moto.server", "kube-apiserver", "testground.nodeagent"} <= second.seen, second.seen
    second.assert_nothing_left()

    # 3. Again, stopped with SIGTERM once a Triton pod has its model loaded (a backend stub runs).
    third = DemoRun(workdir)
    third.start()
    third.watch_until(lambda: bool(third.regions), "a Triton pod with its backend stub", RUN_TIMEOUT)
    assert third.process is not None
    third.process.send_signal(signal.SIGTERM)
    code = third.finish(TEARDOWN_TIMEOUT)
    out = third.output()
    assert code == 128 + signal.SIGTERM, f"expected 143 after SIGTERM, got {code}:\n{third.tail()}"
    assert "SIGTERM: tearing down" in out, third.tail()
    assert "Traceback" not in out, third.tail()
    third.assert_nothing_left()
