"""The node agent's pod worker, without a cluster: what it tells the API server when it ends.

A fake ``Kube`` records the calls; the worker's loop (``_run``) is replaced by
what happened in the case under test, so the test is about ``run``'s ending.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from testground.nodeagent_runtime import AgentContext, IpAllocator, PodWorker, ProcessRegistry


class RecordingKube:
    """Stands in for testground.nodeagent_kube.Kube: keeps each delete's path."""

    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, path: str, body: dict[str, Any] | None = None) -> None:
        self.deleted.append(path)


def failed_pod(deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "fleet-build-abc", "namespace": "vision", "uid": "0123456789ab"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-03T06:50:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": "gpu-0", "restartPolicy": "Never", "containers": []},
        "status": {"phase": "Failed"},
    }


@pytest.fixture
def kube() -> RecordingKube:
    return RecordingKube()


def worker_for(kube: RecordingKube, tmp_path: Path, pod: dict[str, Any]) -> PodWorker:
    context = AgentContext(
        kube=kube,  # type: ignore[arg-type]
        workdir=tmp_path,
        ips=IpAllocator(),
        processes=ProcessRegistry(tmp_path / "processes"),
        stop=threading.Event(),
        kubeconfig_template={},
    )
    return PodWorker(context, pod)


def test_a_deletion_that_arrives_as_the_loop_of_a_terminal_pod_ends_still_deletes_the_pod(
    kube: RecordingKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod's last event (its deletionTimestamp) reached the worker after its loop saw the
    pod terminal and left; no event follows, so the worker's end is the only place to act."""
    worker = worker_for(kube, tmp_path, failed_pod())
    monkeypatch.setattr(worker, "_run", lambda: worker.update(failed_pod(deleting=True)))
    worker.run()
    assert worker.finished
    assert kube.deleted == ["/api/v1/namespaces/vision/pods/fleet-build-abc"]


def test_a_terminal_pod_nobody_deletes_is_left_for_its_owner(
    kube: RecordingKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = worker_for(kube, tmp_path, failed_pod())
    monkeypatch.setattr(worker, "_run", lambda: None)
    worker.run()
    assert worker.finished and kube.deleted == []


def test_a_pod_already_gone_is_not_deleted_again(
    kube: RecordingKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = worker_for(kube, tmp_path, failed_pod(deleting=True))
    monkeypatch.setattr(worker, "_run", worker.deleted)
    worker.run()
    assert worker.finished and kube.deleted == []
