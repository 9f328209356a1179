"""Fixtures for end-to-end tests: the CRD installed and the real operator running.

The operator runs as its own ServiceAccount with the Helm chart's default
RBAC, never as admin. ``tests/e2e/test_permissions.py`` compares what it
asked the apiserver for (the audit log) with what the chart grants; it runs
last, after every other e2e test of the session, and it may only say that
every grant was used when the whole e2e directory ran and passed: the hooks
below keep the order and record what ran.
"""

from __future__ import annotations

import signal
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from testground.controlplane import ControlPlane
from testground.operator_run import OperatorProcess, install_crd, install_operator_identity

E2E_DIR = Path(__file__).resolve().parent
LAST_MODULE = E2E_DIR / "test_permissions.py"

#: Why the session's e2e run is not the whole e2e suite, passed: files not collected, tests
#: deselected or narrowed away, tests that failed or skipped. Empty: it is the whole suite.
INCOMPLETE: pytest.StashKey[list[str]] = pytest.StashKey()


def _in_e2e(path: Path) -> bool:
    return E2E_DIR in path.parents


def _e2e_files() -> set[Path]:
    return set(E2E_DIR.glob("test_*.py"))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[INCOMPLETE] = []


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        if _in_e2e(item.path):
            item.config.stash[INCOMPLETE].append(f"deselected: {item.nodeid}")


@pytest.hookimpl(trylast=True)  # after -k/-m/--deselect have taken their items out
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    # test_permissions.py last, in its own order (its rare-path tests, then the comparison).
    items.sort(key=lambda item: item.path == LAST_MODULE)
    incomplete = config.stash[INCOMPLETE]
    collected = {item.path for item in items if _in_e2e(item.path)}
    if LAST_MODULE not in collected:
        return
    incomplete.extend(f"not collected: {path.name}" for path in sorted(_e2e_files() - collected))
    # `file.py::test` collects only that test: nothing is deselected, but the rest never ran.
    incomplete.extend(
        f"narrowed: {arg}"
        for arg in config.args
        if "::" in arg and _in_e2e(Path(arg.split("::")[0]).resolve())
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # A test that failed or was skipped may not have reached the requests it exists for.
    if _in_e2e(item.path) and (report.failed or report.skipped):
        item.config.stash[INCOMPLETE].append(f"{report.outcome} ({report.when}): {item.nodeid}")
    return report


@pytest.fixture(scope="session")
def e2e_incomplete(pytestconfig: pytest.Config) -> list[str]:
    """Why this session is not the whole e2e suite, passed; empty when it is (read it at the end)."""
    return pytestconfig.stash[INCOMPLETE]


@pytest.fixture(scope="session")
def crd(cluster: ControlPlane) -> ControlPlane:
    install_crd(cluster)
    return cluster


@pytest.fixture(scope="session")
def operator(crd: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator, cluster-wide, as the ServiceAccount ``testground.audit.OPERATOR_USER``."""
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = install_operator_identity(crd, workdir / "operator.kubeconfig")
    proc = OperatorProcess(crd, workdir, kubeconfig=kubeconfig)
    proc.start()
    try:
        yield proc
    finally:
        proc.kill(signal.SIGTERM)


def _module_uses(request: pytest.FixtureRequest, *fixtures: str) -> bool:
    items = [item for item in request.session.items if item.module is request.module]
    return any(all(name in getattr(item, "fixturenames", ()) for name in fixtures) for item in items)


@pytest.fixture(scope="module", autouse=True)
def operator_verifies_services(request: pytest.FixtureRequest) -> Iterator[None]:
    """While a module's pod network is up, the session operator verifies each resource's
    Service as well as its pods, by the ClusterIP kube-proxy routes; it goes back to the pods
    only before the network (and with it the route to any ClusterIP) goes away. Served
    endpoints are checked again every 20 s there (60 s by default), so a test of a Service
    that stops answering waits a third as long."""
    if not _module_uses(request, "operator", "pod_network"):
        yield
        return
    operator: OperatorProcess = request.getfixturevalue("operator")
    request.getfixturevalue("pod_network")
    before = dict(operator.env)
    operator.env.update(TRITONRESNET_VERIFY_SERVICE="cluster-ip", TRITONRESNET_VERIFY_INTERVAL_SECONDS="20")
    operator.restart()
    try:
        yield
    finally:
        operator.env = before
        operator.restart()
