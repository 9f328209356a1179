"""Fixtures for end-to-end tests: the CRD installed and the real operator running."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from testground.controlplane import ControlPlane
from testground.operator_run import OperatorProcess, install_crd


@pytest.fixture(scope="session")
def crd(cluster: ControlPlane) -> ControlPlane:
    install_crd(cluster)
    return cluster


@pytest.fixture(scope="session")
def operator(crd: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(crd, tmp_path_factory.mktemp("operator"))
    proc.start()
    try:
        yield proc
    finally:
        proc.kill(signal.SIGTERM)
