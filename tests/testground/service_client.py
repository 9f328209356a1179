"""A bounded inference client in a pod-like network namespace: load through a Service's ClusterIP.

Each request opens a connection of its own (as a client behind a load balancer that does
not pin connections does), so every request is a new choice of kube-proxy among the
endpoints it has at that moment. The client is bounded: a fixed rate, a hard cap on
requests and on time, a timeout on each request, and it stops by itself once the test
asks it to (a stop file). Used by the tests that show a change loses no request.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testground.clusternet import ClusterNetwork
from testground.network import in_netns

#: Runs in the client's network namespace: ``rate`` requests a second, each on a new connection,
#: until the stop file appears, the cap is reached or the time is up; then one JSON summary.
CLIENT = """
import json, os, sys, time
import numpy as np
import tritonclient.http as httpclient
host, model, rate, cap, limit, timeout, stop = sys.argv[1:8]
rate, cap, limit, timeout = float(rate), int(cap), float(limit), float(timeout)
data = np.zeros((1, 3, 224, 224), dtype=np.float32)
started = time.monotonic()
sent, ok, failures, versions = 0, 0, [], set()
while sent < cap and time.monotonic() - started < limit and not os.path.exists(stop):
    due = started + sent / rate
    time.sleep(max(0.0, due - time.monotonic()))
    sent += 1
    at = time.monotonic() - started
    client = httpclient.InferenceServerClient(
        f"{host}:8000", connection_timeout=timeout, network_timeout=timeout
    )
    try:
        tensor = httpclient.InferInput("input", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        answer = client.infer(model, [tensor])
        out = answer.as_numpy("output")
        if out is None or out.shape != (1, 1000):
            raise ValueError(f"output {None if out is None else out.shape}")
        versions.add(str(answer.get_response()["model_version"]))
        ok += 1
    except Exception as exc:
        failures.append(f"{at:.2f} s: {type(exc).__name__}: {exc}")
    finally:
        client.close()
summary = {"sent": sent, "ok": ok, "failures": failures, "versions": sorted(versions)}
print(json.dumps(summary | {"seconds": time.monotonic() - started}))
"""


@dataclass(frozen=True)
class ClientLimits:
    rate: float  #: requests per second
    max_requests: int  #: the hard cap on requests
    max_seconds: float  #: and on the running time
    request_timeout: float  #: seconds, each
    before: float  #: seconds of load before the block runs
    after: float  #: and after it


@contextlib.contextmanager
def bounded_client(
    pod_network: ClusterNetwork, namespace: str, host: str, model: str, limits: ClientLimits, stop: Path
) -> Iterator[dict[str, Any]]:
    """The client sending to ``host`` (a ClusterIP) during the block; its summary (sent, ok,
    failures, versions, seconds) is filled in after. ``stop`` must not exist yet."""
    argv = [
        sys.executable,
        "-c",
        CLIENT,
        host,
        model,
        str(limits.rate),
        str(limits.max_requests),
        str(limits.max_seconds),
        str(limits.request_timeout),
        str(stop),
    ]
    summary: dict[str, Any] = {}
    with pod_network.client_netns(0, namespace) as client_netns:
        client = subprocess.Popen(
            in_netns(client_netns, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            time.sleep(limits.before)
            yield summary
            time.sleep(limits.after)
            stop.touch()
            out, err = client.communicate(timeout=limits.max_seconds + 2 * limits.request_timeout)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    assert client.returncode == 0, err
    summary |= json.loads(out)
