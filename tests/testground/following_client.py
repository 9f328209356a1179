"""A bounded inference client that follows a TritonResNet's ready Triton pods itself.

It stands in for kube-proxy where there is none to use: on nodes that are not
on the test ground's pod network pods have loopback IPs, which the API server
refuses in EndpointSlices, so the client lists the resource's Triton pods on
every request and sends to the ready, non-terminating ones round-robin, as
endpoints would. What it does not see is the lag between a pod's deletion and
its leaving a real Service's endpoints (tests/e2e/test_drain.py measures that
on the pod network, through a ClusterIP).

Bounded, as every load loop on the test ground: at most ``max_requests``
requests and ``max_seconds`` of running time, a timeout on each request, and
it stops when its block ends.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import tritonclient.http as httpclient
from tritonresnet.api import names

if TYPE_CHECKING:
    from testground.controlplane import ControlPlane

MAX_REQUESTS = 5000
MAX_SECONDS = 600.0
REQUEST_TIMEOUT = 30.0


class FollowingClient:
    """Sends inferences round-robin to the ready, non-terminating Triton pods; counts failures."""

    def __init__(
        self,
        cp: ControlPlane,
        namespace: str,
        cr_name: str,
        model_name: str | None = None,
        max_requests: int = MAX_REQUESTS,
        max_seconds: float = MAX_SECONDS,
    ) -> None:
        self.cp, self.namespace, self.cr_name = cp, namespace, cr_name
        self.model_name = model_name or cr_name
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.ok = 0
        self.failures: list[str] = []
        self.versions_seen: set[str] = set()
        #: Answered requests by the pod that answered them.
        self.served_by: Counter[str] = Counter()
        #: True when it stopped on its own bounds rather than at the end of its block.
        self.capped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._data = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)

    def _endpoints(self) -> list[tuple[str, str]]:
        """(pod name, host:port) of every ready, non-terminating Triton pod."""
        out = self.cp.kubectl(
            "get", "pods", "-n", self.namespace, "-l", names.selector(self.cr_name), "-o", "json"
        ).stdout
        ready = []
        for pod in json.loads(out)["items"]:
            conds = {c["type"]: c["status"] for c in pod["status"].get("conditions") or ()}
            if conds.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp"):
                ready.append((pod["metadata"]["name"], f"{pod['status']['podIP']}:8000"))
        return ready

    def _infer(self, endpoint: str) -> None:
        client = httpclient.InferenceServerClient(endpoint, network_timeout=REQUEST_TIMEOUT)
        try:
            item = httpclient.InferInput("input", list(self._data.shape), "FP32")
            item.set_data_from_numpy(self._data)
            result = client.infer(self.model_name, [item])
            out = result.as_numpy("output")
            assert out is not None and out.shape == (1, 1000) and np.isfinite(out).all()
            self.versions_seen.add(str(result.get_response()["model_version"]))
        finally:
            client.close()

    def _run(self) -> None:
        counter = itertools.count()
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.max_requests):
            if self._stop.is_set():
                return
            if time.monotonic() > deadline:
                break
            endpoints = self._endpoints()
            if not endpoints:
                self.failures.append("no ready endpoint")
                time.sleep(0.2)
                continue
            pod, endpoint = endpoints[next(counter) % len(endpoints)]
            try:
                self._infer(endpoint)
                self.ok += 1
                self.served_by[pod] += 1
            except Exception as exc:  # every failure is a finding; keep counting
                self.failures.append(f"{pod} {endpoint}: {type(exc).__name__}: {exc}")
        self.capped = True

    def __enter__(self) -> FollowingClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * REQUEST_TIMEOUT)
