"""Test-suite wiring: the test ground's fixtures come from plugin modules.

Layout: ``tests/unit`` needs nothing running; ``tests/integration`` starts one
real component (control plane, tritonserver, S3); ``tests/e2e`` runs the
operator against the whole test ground.

The test ground's builds (testground.binaries.BUILD_PARTS: the control plane,
the pod network's parts, Prometheus, Karpenter, KEDA) are made in that order by
one background process, and the tests run in the same order: first those that
need none of them (unit tests, the builder and Triton on their own), then each
test after those that need only earlier parts. On a fresh machine the tests thus
run while the later parts build; each test waits for its part on that part's
lock. ``make test`` starts the build before the venv exists; a session started
otherwise starts one for the parts it needs, and stops it when it ends.

What a test needs: the ``cluster`` marker is the control plane; the
``pod_network`` fixture the network, ``keda`` KEDA with both before it; the
``builds`` marker names the others a test asks for itself.
"""

from __future__ import annotations

import os
import subprocess

import pytest

pytest_plugins = [
    "testground.fixtures",
]

BACKGROUND_BUILD: pytest.StashKey[subprocess.Popen[bytes]] = pytest.StashKey()


def _parts_needed(item: pytest.Item) -> set[str]:
    parts = set()
    if item.get_closest_marker("cluster"):
        parts.add("control-plane")
    fixtures = getattr(item, "fixturenames", ())
    if "pod_network" in fixtures:
        parts.add("network")
    if "keda" in fixtures:
        parts |= {"network", "prometheus", "keda"}
    for marker in item.iter_markers("builds"):
        parts.update(marker.args)
    return parts


def _order(item: pytest.Item) -> int:
    """1 + the position of the last part ``item`` needs in the build order; 0: none."""
    from testground.binaries import BUILD_PARTS

    return max((1 + BUILD_PARTS.index(part) for part in _parts_needed(item)), default=0)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    # A stable sort: modules keep their order and stay whole (module-scoped fixtures), as
    # long as a module's tests need the same parts.
    items.sort(key=_order)


def pytest_collection_finish(session: pytest.Session) -> None:
    # After -k, -m and --deselect: only what the session will run is built.
    if session.config.option.collectonly:
        return
    from testground.binaries import start_background_build

    needed = set().union(*(_parts_needed(item) for item in session.items))
    build = start_background_build(sorted(needed), os.getpid())
    if build is not None:
        session.config.stash[BACKGROUND_BUILD] = build


def pytest_unconfigure(config: pytest.Config) -> None:
    build = config.stash.get(BACKGROUND_BUILD, None)
    if build is not None:
        # The session ended before the build did (a narrowed run, Ctrl-C): stop it by its group.
        from testground.binaries import stop_background_build

        stop_background_build(build)
