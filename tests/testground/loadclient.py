"""A bounded inference load from a pod-like network namespace, for tests that send through a Service.

The client runs as its own process inside one of the pod network's client
namespaces (``ClusterNetwork.client_netns``), so it reaches a ClusterIP as a
pod would. It sends ResNet inferences (a zero image, ``input`` -> ``output``)
at a fixed overall rate from ``concurrency`` threads, each request on a
connection of its own (as a client behind a load balancer that does not pin
connections does: every request is a new choice of kube-proxy among the
endpoints it has at that moment), or, with ``kept_alive``, every request of a
thread on one HTTP connection (tritonclient's own use: kube-proxy chooses once,
and the connection stays with its pod after the pod left the endpoints). A
kept-alive connection closed under a request (geventhttpclient does not resend
a POST by itself) is counted in ``reconnects`` and that request is sent once
more on a new connection: the advice the README gives clients.

Bounded in every way: a hard cap on requests and on running time, a timeout
on each request, and it stops by itself as soon as the test asks it to (a stop
file). It prints one JSON summary: requests sent and answered, every failure
with its time, the model versions that answered, and the run's seconds.
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

#: Runs in the client's network namespace. Request n is due at started + n / rate; each thread
#: takes the next n, so at most ``concurrency`` requests are in flight.
CLIENT = """
import json, os, sys, threading, time
import numpy as np
import tritonclient.http as httpclient
from geventhttpclient.response import HTTPConnectionClosed
host, model, rate, cap, limit, timeout, stop, concurrency, kept_alive = sys.argv[1:10]
rate, cap, limit, timeout, concurrency = float(rate), int(cap), float(limit), float(timeout), int(concurrency)
kept_alive = kept_alive == "kept"
data = np.zeros((1, 3, 224, 224), dtype=np.float32)
lock = threading.Lock()
started = time.monotonic()
state = {"sent": 0, "ok": 0}
failures, reconnects, versions = [], [], set()

def running():
    return state["sent"] < cap and time.monotonic() - started < limit and not os.path.exists(stop)

def connect():
    return httpclient.InferenceServerClient(
        f"{host}:8000", connection_timeout=timeout, network_timeout=timeout
    )

def infer(client):
    tensor = httpclient.InferInput("input", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return client.infer(model, [tensor])

def worker():
    kept = connect() if kept_alive else None
    while True:
        with lock:
            if not running():
                break
            n = state["sent"]
            state["sent"] += 1
        time.sleep(max(0.0, started + n / rate - time.monotonic()))
        at = time.monotonic() - started
        client = kept or connect()
        try:
            try:
                answer = infer(client)
            except (HTTPConnectionClosed, ConnectionError) as exc:
                if kept is None:
                    raise
                with lock:
                    reconnects.append(f"{at:.2f} s: {type(exc).__name__}: {exc}")
                kept.close()
                kept = client = connect()
                answer = infer(client)
            out = answer.as_numpy("output")
            if out is None or out.shape != (1, 1000):
                raise ValueError(f"output {None if out is None else out.shape}")
            with lock:
                versions.add(str(answer.get_response()["model_version"]))
                state["ok"] += 1
        except Exception as exc:
            with lock:
                failures.append(f"{at:.2f} s: {type(exc).__name__}: {exc}")
        finally:
            if kept is None:
                client.close()
    if kept is not None:
        kept.close()

threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
summary = {"sent": state["sent"], "ok": state["ok"], "failures": sorted(failures)}
summary |= {"reconnects": sorted(reconnects), "versions": sorted(versions)}
summary["seconds"] = time.monotonic() - started
print(json.dumps(summary))
"""


@dataclass(frozen=True)
class Load:
    """How much: ``rate`` requests a second overall, at most ``concurrency`` in flight, at most
    ``max_requests`` and ``max_seconds`` in all, ``request_timeout`` each."""

    rate: float
    max_requests: int
    max_seconds: float
    request_timeout: float = 10.0
    concurrency: int = 1
    #: each thread sends all its requests on one kept-alive connection (see the module's text)
    kept_alive: bool = False


@contextlib.contextmanager
def bounded_load(
    network: ClusterNetwork,
    namespace: str,
    address: str,
    model: str,
    load: Load,
    workdir: Path,
    before: float = 0.0,
    after: float = 0.0,
) -> Iterator[dict[str, Any]]:
    """The client sending to ``address`` for the block (``before`` seconds of load first, ``after``
    seconds more at the end); the summary it yields is filled in once the client has stopped."""
    stop = workdir / "stop-load"
    stop.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-c",
        CLIENT,
        address,
        model,
        str(load.rate),
        str(load.max_requests),
        str(load.max_seconds),
        str(load.request_timeout),
        str(stop),
        str(load.concurrency),
        "kept" if load.kept_alive else "new",
    ]
    summary: dict[str, Any] = {}
    with network.client_netns(0, namespace) as client_netns:
        client = subprocess.Popen(
            in_netns(client_netns, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            time.sleep(before)
            yield summary
            time.sleep(after)
            stop.touch()
            out, err = client.communicate(timeout=load.max_seconds + 2 * load.request_timeout)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    if client.returncode != 0:
        raise RuntimeError(f"the load client failed ({client.returncode}): {err[-2000:]}")
    summary |= json.loads(out)
