"""Test-suite wiring: the test ground's fixtures come from plugin modules.

Layout: ``tests/unit`` needs nothing running; ``tests/integration`` starts one
real component (control plane, tritonserver, S3); ``tests/e2e`` runs the
operator against the whole test ground.

KEDA is the test ground's longest build (about 9 minutes of two idle cores), and
only the tests on the ``keda`` fixture need it. They run last, and when the cache
does not hold KEDA yet its build starts in the background as the session starts,
at the lowest CPU priority, so it takes only what the other tests leave idle; the
``keda`` fixture then waits for it on the cache folder's lock (binaries.ensure_keda).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = [
    "testground.fixtures",
]

TESTS = Path(__file__).resolve().parent
BACKGROUND_BUILD: pytest.StashKey[subprocess.Popen[bytes]] = pytest.StashKey()


def _needs_keda(item: pytest.Item) -> bool:
    return "keda" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    # A stable sort: the KEDA modules keep their order and stay whole (module-scoped fixtures).
    items.sort(key=_needs_keda)


def pytest_collection_finish(session: pytest.Session) -> None:
    # After -k, -m and --deselect: only a session that will run a KEDA test builds it.
    if not session.config.option.collectonly and any(_needs_keda(item) for item in session.items):
        _start_keda_build(session.config)


def _start_keda_build(config: pytest.Config) -> None:
    from testground.binaries import keda_built, keda_cache_dir

    if keda_built() or BACKGROUND_BUILD in config.stash:
        return
    log = keda_cache_dir().with_name(keda_cache_dir().name + "-build.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        config.stash[BACKGROUND_BUILD] = subprocess.Popen(
            [sys.executable, "-m", "testground.binaries", "--keda"],
            cwd=TESTS,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with its go children
            preexec_fn=lambda: os.nice(19),
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    build = config.stash.get(BACKGROUND_BUILD, None)
    if build is None or build.poll() is not None:
        return
    # The session ended before the build did (a narrowed run, Ctrl-C): stop it by its group.
    os.killpg(build.pid, signal.SIGTERM)
    try:
        build.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(build.pid, signal.SIGKILL)
        build.wait()
