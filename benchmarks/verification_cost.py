"""Verification cost at rest: requests per endpoint per minute and the checking side's CPU.

The operator's own endpoint checks (``EndpointChecks`` from
``controller/verification.py``, its thread pool of ``VERIFIERS`` threads, the
real ``verify.check_endpoint`` with tritonclient over HTTP, the operator's
default timeout and interval from ``Settings``) are run against ``--endpoints``
endpoints (default 50), one resource each, as the runtime asks for them after
a pass: a full first check with the smoke inference, then a cheap re-check of
every good endpoint each ``--interval`` seconds (default: the operator's
``verify_interval_seconds``, 60 s).

The endpoints are a STAND-IN, not Triton: 50 real tritonservers do not fit on
a 2-core machine (each python-backend model instance is a 300-400 MB process).
The stand-in is a small HTTP/1.1 server in a child process, one port per
endpoint on 127.0.0.1, answering the KServe v2 routes ``check_endpoint`` calls
with what Triton answers for a served ResNet-50 (health live and ready, model
version ready, model config with the pinned ``version_policy``, model
metadata, and inference with a binary output of zeros for the smoke request).
It runs no model: a real Triton also spends one ResNet forward pass per full
check, which is not measured here. Nothing is sent anywhere but loopback.

Measured:

* requests per endpoint by route, counted at the stand-in server: in the first
  round (every endpoint's full check) and per minute at rest (cheap
  re-checks), with the TCP connections (tritonclient opens one per check);
* the CPU of the checking side: this process's CPU time (``time.process_time``:
  the event loop with the check table and its timers, and the check threads;
  the stand-in runs in its own process and is not counted, its CPU is shown
  apart), per minute and per check, and each check's own thread CPU
  (``time.thread_time`` around ``check_endpoint``);
* resources woken by a changed result (the first round wakes each once; a
  re-check that still passes should wake none).

The rest window starts half an interval after the first round ends and lasts a
whole number of intervals (``--minutes`` rounded to intervals, default 3), so
it holds exactly that many re-checks of each endpoint. tritonclient is
imported before anything is measured (the operator pays for that once at
start-up); the first round includes each check thread's first use of it.

    .venv/bin/python benchmarks/verification_cost.py
    .venv/bin/python benchmarks/verification_cost.py --endpoints 50 --minutes 3 --interval 60
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import platform
import re
import selectors
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tritonclient.http  # noqa: F401  (imported before measuring, as the operator has it loaded)
from _testground import table
from tritonresnet.controller.observe import EndpointCheck, Expected
from tritonresnet.controller.reconcile import VerifyRequest
from tritonresnet.controller.settings import Settings
from tritonresnet.controller.verification import VERIFIERS, CheckEndpoint, EndpointChecks
from tritonresnet.controller.verify import check_endpoint
from tritonresnet.controller.workqueue import Key, LoopClock
from tritonresnet_builder.contract import Tensor

MODEL = "resnet50"
VERSION = 1
MAX_BATCH = 8
INPUT = Tensor("input", "FP32", (3, 224, 224))
OUTPUT = Tensor("output", "FP32", (1000,))
EXPECTED = Expected(MODEL, VERSION, (INPUT,), (OUTPUT,), batched=True)
NAMESPACE = "bench"

#: The first round (every endpoint's full check) must end within this long.
FIRST_ROUND_LIMIT = 180.0
#: Bounds on talking to the stand-in's process.
SERVER_START_LIMIT = 60.0
SERVER_STOP_LIMIT = 30.0
#: How often the stand-in's accept loop looks at its stop flag.
ACCEPT_POLL = 0.2
#: A connection idle this long is closed by the stand-in (tritonclient closes its own after each check).
IDLE_CONNECTION = 10.0

# -- the stand-in server (child process) ---------------------------------------------------

ROUTES = (
    "GET /v2/health/live",
    "GET /v2/health/ready",
    "GET /v2/models/{m}/versions/{v}/ready",
    "GET /v2/models/{m}/versions/{v}/config",
    "GET /v2/models/{m}/versions/{v}",
    "POST /v2/models/{m}/versions/{v}/infer",
)
CONNECTION = "TCP connection"
OTHER = "other (answered 404)"

_MODEL_PATH = re.compile(r"^/v2/models/(?P<m>[^/]+)/versions/(?P<v>[^/]+)(?P<rest>/ready|/config|/infer)?$")

CONFIG = {
    "name": MODEL,
    "platform": "onnxruntime_onnx",
    "backend": "onnxruntime",
    "version_policy": {"specific": {"versions": [VERSION]}},
    "max_batch_size": MAX_BATCH,
    "input": [{"name": INPUT.name, "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, 224, 224]}],
    "output": [{"name": OUTPUT.name, "data_type": "TYPE_FP32", "dims": [1000]}],
    "dynamic_batching": {"preferred_batch_size": [MAX_BATCH], "max_queue_delay_microseconds": 100},
    "instance_group": [{"name": MODEL, "kind": "KIND_CPU", "count": 1}],
    "default_model_filename": "model.onnx",
}
METADATA = {
    "name": MODEL,
    "versions": [str(VERSION)],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": INPUT.name, "datatype": INPUT.datatype, "shape": [-1, *INPUT.shape]}],
    "outputs": [{"name": OUTPUT.name, "datatype": OUTPUT.datatype, "shape": [-1, *OUTPUT.shape]}],
}


class StandInServer(ThreadingHTTPServer):
    """One stand-in endpoint: a port of its own, every request logged with its time."""

    daemon_threads = False
    block_on_close = True  # server_close waits for its connection threads

    def __init__(self, index: int, log: list[tuple[float, int, str, int]]) -> None:
        self.index = index
        self.log = log
        super().__init__(("127.0.0.1", 0), StandInHandler)
        self.timeout = ACCEPT_POLL  # handle_request never blocks longer than this


class StandInHandler(BaseHTTPRequestHandler):
    """Triton's KServe v2 answers for one served ResNet, nothing else."""

    protocol_version = "HTTP/1.1"  # keep-alive, as Triton
    timeout = IDLE_CONNECTION
    # Headers and body go out in two writes; with Nagle the body would wait for the
    # client's delayed ACK (about 40 ms a response), which Triton's server does not do.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self._note(CONNECTION, 0)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _note(self, route: str, body: int) -> None:
        server = cast(StandInServer, self.server)
        server.log.append((time.monotonic(), server.index, route, body))

    def _answer(self, status: int, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload: object, status: int = 200) -> None:
        self._answer(status, json.dumps(payload).encode(), [("Content-Type", "application/json")])

    def _unknown(self, route: str, body: int) -> None:
        self._note(OTHER, body)
        self._json({"error": f"stand-in has no {route}"}, 404)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/v2/health/live", "/v2/health/ready"):
            self._note(f"GET {path}", 0)
            self._answer(200)
            return
        found = _MODEL_PATH.match(path)
        if found is None or found["m"] != MODEL or found["v"] != str(VERSION) or found["rest"] == "/infer":
            self._unknown(f"GET {path}", 0)
            return
        rest = found["rest"] or ""
        self._note(f"GET /v2/models/{{m}}/versions/{{v}}{rest}", 0)
        if rest == "/ready":
            self._answer(200)
        elif rest == "/config":
            self._json(CONFIG)
        else:
            self._json(METADATA)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        found = _MODEL_PATH.match(path)
        if found is None or found["m"] != MODEL or found["v"] != str(VERSION) or found["rest"] != "/infer":
            self._unknown(f"POST {path}", length)
            return
        self._note("POST /v2/models/{m}/versions/{v}/infer", length)
        header_length = int(self.headers.get("Inference-Header-Content-Length") or length)
        request = json.loads(body[:header_length])
        batch = int(request["inputs"][0]["shape"][0])
        data = bytes(4 * batch * OUTPUT.shape[0])  # FP32 zeros: finite, of the right shape
        header = json.dumps(
            {
                "model_name": MODEL,
                "model_version": str(VERSION),
                "outputs": [
                    {
                        "name": OUTPUT.name,
                        "datatype": OUTPUT.datatype,
                        "shape": [batch, OUTPUT.shape[0]],
                        "parameters": {"binary_data_size": len(data)},
                    }
                ],
            }
        ).encode()
        self._answer(
            200,
            header + data,
            [
                ("Content-Type", "application/octet-stream"),
                ("Inference-Header-Content-Length", str(len(header))),
            ],
        )


def _accept_loop(servers: Sequence[StandInServer], stop: threading.Event) -> None:
    """One thread accepts on every endpoint's port; each connection gets a thread of its own."""
    with selectors.DefaultSelector() as selector:
        for server in servers:
            selector.register(server.socket, selectors.EVENT_READ, server)
        while not stop.is_set():
            for key, _ in selector.select(ACCEPT_POLL):
                cast(StandInServer, key.data).handle_request()


def serve(conn: Connection, count: int) -> None:
    """The stand-in's process: ``count`` endpoints until told to stop; answers marks with its CPU."""
    log: list[tuple[float, int, str, int]] = []
    servers = [StandInServer(i, log) for i in range(count)]
    stop = threading.Event()
    acceptor = threading.Thread(target=_accept_loop, args=(servers, stop), name="accept")
    acceptor.start()
    try:
        conn.send([server.server_address[1] for server in servers])
        while True:
            message = conn.recv()
            if message == "stop":
                break
            conn.send(time.process_time())  # a mark
    finally:
        stop.set()
        acceptor.join(SERVER_STOP_LIMIT)
        for server in servers:
            server.server_close()
        conn.send({"log": log, "cpu": time.process_time(), "threads": threading.active_count()})
        conn.close()


@dataclass
class StandIn:
    """The parent's handle on the stand-in's process."""

    process: multiprocessing.process.BaseProcess
    conn: Connection
    ports: list[int]

    def mark(self) -> float:
        """The stand-in process's CPU seconds so far."""
        self.conn.send("mark")
        if not self.conn.poll(SERVER_STOP_LIMIT):
            raise RuntimeError("the stand-in server did not answer")
        return float(self.conn.recv())

    def stop(self) -> dict[str, Any]:
        try:
            self.conn.send("stop")
            if not self.conn.poll(SERVER_STOP_LIMIT):
                raise RuntimeError("the stand-in server did not stop")
            return cast(dict[str, Any], self.conn.recv())
        finally:
            self.process.join(SERVER_STOP_LIMIT)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(SERVER_STOP_LIMIT)
            self.conn.close()


def start_stand_in(count: int) -> StandIn:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads of ours in it
    parent, child = context.Pipe()
    process = context.Process(target=serve, args=(child, count), name="stand-in", daemon=True)
    process.start()
    child.close()
    if not parent.poll(SERVER_START_LIMIT):
        process.terminate()
        process.join(SERVER_STOP_LIMIT)
        raise RuntimeError("the stand-in server did not start")
    return StandIn(process, parent, list(parent.recv()))


# -- the checking side (this process) ------------------------------------------------------


@dataclass(frozen=True)
class CheckRecord:
    started: float  #: time.monotonic()
    wall: float
    cpu: float  #: thread CPU seconds inside check_endpoint
    smoke: bool
    ok: bool
    message: str


@dataclass
class Run:
    endpoints: int
    interval: float
    rounds: int  #: re-checks of each endpoint in the rest window
    checks: list[CheckRecord] = field(default_factory=list)
    woken: list[tuple[float, Key]] = field(default_factory=list)
    start: float = 0.0  #: first update (time.monotonic())
    first_done: float = 0.0  #: last first result delivered
    rest_start: float = 0.0
    rest_end: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  #: this process's CPU at each mark
    server_cpu: dict[str, float] = field(default_factory=dict)  #: the stand-in's CPU at each mark
    first_complete: bool = False


def timed_check(records: list[CheckRecord]) -> CheckEndpoint:
    """``check_endpoint`` as EndpointChecks calls it, with its wall and thread CPU time recorded."""

    def check(endpoint: str, expected: Expected, timeout: float, smoke: bool) -> EndpointCheck:
        started, cpu = time.monotonic(), time.thread_time()
        result = check_endpoint(endpoint, expected, timeout, smoke)
        cpu, wall = time.thread_time() - cpu, time.monotonic() - started
        records.append(CheckRecord(started, wall, cpu, smoke, result.ok, result.message))
        return result

    return check


async def drive(run: Run, stand_in: StandIn, timeout: float) -> None:
    """The operator's check scheduling over the stand-in's endpoints, for a bounded time."""
    first_round = asyncio.Event()
    pending = {(NAMESPACE, f"resnet-{i}") for i in range(run.endpoints)}

    def on_change(key: Key) -> None:  # the runtime would enqueue a pass of ``key``
        run.woken.append((time.monotonic(), key))
        pending.discard(key)
        if not pending:
            first_round.set()

    def mark(name: str) -> None:
        run.cpu[name] = time.process_time()
        run.server_cpu[name] = stand_in.mark()

    checks = EndpointChecks(
        timed_check(run.checks), LoopClock(), on_change, timeout=timeout, interval=run.interval
    )
    try:
        mark("start")
        run.start = time.monotonic()
        for i, port in enumerate(stand_in.ports):
            request = VerifyRequest((f"127.0.0.1:{port}",), EXPECTED)
            checks.update((NAMESPACE, f"resnet-{i}"), frozenset(), request)
        try:
            await asyncio.wait_for(first_round.wait(), FIRST_ROUND_LIMIT)
            run.first_complete = True
        except asyncio.TimeoutError:
            return
        run.first_done = max(t for t, _ in run.woken)
        mark("first")
        run.rest_start = run.first_done + run.interval / 2
        await asyncio.sleep(max(0.0, run.rest_start - time.monotonic()))
        mark("rest_start")
        run.rest_start = time.monotonic()
        run.rest_end = run.rest_start + run.rounds * run.interval
        await asyncio.sleep(max(0.0, run.rest_end - time.monotonic()))
        mark("rest_end")
        run.rest_end = time.monotonic()
    finally:
        checks.close()
        checks.pool.shutdown(wait=True)  # every check thread ends here (each request is bounded)


# -- the report ----------------------------------------------------------------------------


def _num(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def report(run: Run, server: dict[str, Any], started_at: str, load: tuple[float, float]) -> str:
    log: list[tuple[float, int, str, int]] = server["log"]
    n = run.endpoints
    minutes = (run.rest_end - run.rest_start) / 60
    first = [e for e in log if run.start <= e[0] <= run.first_done]
    rest = [e for e in log if run.rest_start <= e[0] < run.rest_end]
    first_routes = Counter(route for _, _, route, _ in first)
    rest_routes = Counter(route for _, _, route, _ in rest)
    first_bytes = sum(body for *_, body in first)
    rest_bytes = sum(body for *_, body in rest)
    per_endpoint = Counter(index for _, index, route, _ in rest if route != CONNECTION)

    lines = [
        f"## Verification cost at rest ({n} endpoints), {started_at}",
        "",
        f"`verification_cost.py --endpoints {n} --minutes {run.rounds * run.interval / 60:g} "
        f"--interval {run.interval:g}`: the operator's EndpointChecks ({VERIFIERS} threads, "
        "real check_endpoint and tritonclient over HTTP) against a **stand-in** HTTP server "
        "(not Triton; loopback, one port per endpoint, no model run). "
        f"Machine: {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
        f"load average {load[0]:.2f} at the start, {load[1]:.2f} at the end.",
        "",
        "Requests at the stand-in server, by route",
        "",
    ]
    rows: list[list[str]] = []
    for route in (*ROUTES, OTHER):
        if route == OTHER and not (first_routes[route] or rest_routes[route]):
            continue
        rows.append(
            [
                f"`{route}`",
                _num(first_routes[route] / n, 2),
                _num(rest_routes[route] / n / minutes, 2),
                _num(rest_routes[route] / minutes, 1),
            ]
        )
    first_total = sum(v for k, v in first_routes.items() if k != CONNECTION)
    rest_total = sum(v for k, v in rest_routes.items() if k != CONNECTION)
    rows.append(
        [
            "**all requests**",
            _num(first_total / n, 2),
            _num(rest_total / n / minutes, 2),
            _num(rest_total / minutes),
        ]
    )
    rows.append(
        [
            CONNECTION + "s",
            _num(first_routes[CONNECTION] / n, 2),
            _num(rest_routes[CONNECTION] / n / minutes, 2),
            _num(rest_routes[CONNECTION] / minutes),
        ]
    )
    rows.append(
        [
            "request bodies, KiB",
            _num(first_bytes / n / 1024, 1),
            _num(rest_bytes / n / minutes / 1024, 1),
            _num(rest_bytes / minutes / 1024, 1),
        ]
    )
    lines.append(
        table(
            [
                "route",
                "first round, per endpoint",
                "at rest, per endpoint per minute",
                f"at rest, all {n} per minute",
            ],
            rows,
        )
    )
    if per_endpoint:
        low, high = min(per_endpoint.get(i, 0) for i in range(n)), max(per_endpoint.values())
        got = f"{low}" if low == high else f"{low} to {high}"
        lines += ["", f"At rest each endpoint got {got} requests in {minutes:.2f} min."]

    first_checks = [c for c in run.checks if c.started <= run.first_done]
    rest_checks = [c for c in run.checks if run.rest_start <= c.started < run.rest_end]
    first_cpu = run.cpu["first"] - run.cpu["start"]
    rest_cpu = run.cpu["rest_end"] - run.cpu["rest_start"]
    first_wall = run.first_done - run.start

    def per_check(cpu: float, count: int) -> str:
        return _num(1000 * cpu / count, 2) if count else "-"

    def median_ms(values: Sequence[float]) -> str:
        return _num(1000 * statistics.median(values), 2) if values else "-"

    def max_ms(values: Sequence[float]) -> str:
        return _num(1000 * max(values), 2) if values else "-"

    first_woken = sum(1 for t, _ in run.woken if t <= run.first_done)
    rest_woken = sum(1 for t, _ in run.woken if run.rest_start <= t < run.rest_end)
    server_first = run.server_cpu["first"] - run.server_cpu["start"]
    server_rest = run.server_cpu["rest_end"] - run.server_cpu["rest_start"]
    cpu_rows = [
        ["wall time, s", _num(first_wall, 2), _num(minutes * 60, 1)],
        [
            "checks (full = with the smoke inference)",
            f"{len(first_checks)} ({sum(c.smoke for c in first_checks)} full)",
            f"{len(rest_checks)} ({sum(c.smoke for c in rest_checks)} full)",
        ],
        [
            "failed checks",
            str(sum(not c.ok for c in first_checks)),
            str(sum(not c.ok for c in rest_checks)),
        ],
        ["resources woken (result changed)", str(first_woken), str(rest_woken)],
        [
            "**checking process CPU, s** (loop + check threads)",
            _num(first_cpu, 3),
            f"{_num(rest_cpu, 3)} ({_num(rest_cpu / minutes, 3)} per minute)",
        ],
        [
            "share of one core",
            f"{100 * first_cpu / first_wall:.0f} %" if first_wall else "-",
            f"{100 * rest_cpu / (minutes * 60):.3f} %",
        ],
        [
            "checking process CPU per check, ms",
            per_check(first_cpu, len(first_checks)),
            per_check(rest_cpu, len(rest_checks)),
        ],
        [
            "thread CPU inside check_endpoint, median / max ms",
            f"{median_ms([c.cpu for c in first_checks])} / {max_ms([c.cpu for c in first_checks])}",
            f"{median_ms([c.cpu for c in rest_checks])} / {max_ms([c.cpu for c in rest_checks])}",
        ],
        [
            "check wall time, median / max ms",
            f"{median_ms([c.wall for c in first_checks])} / {max_ms([c.wall for c in first_checks])}",
            f"{median_ms([c.wall for c in rest_checks])} / {max_ms([c.wall for c in rest_checks])}",
        ],
        [
            "stand-in server CPU, s (not the operator's, not counted above)",
            _num(server_first, 3),
            f"{_num(server_rest, 3)} ({_num(server_rest / minutes, 3)} per minute)",
        ],
    ]
    lines += [
        "",
        "The checking side (one process: the event loop with EndpointChecks' table and timers, "
        f"and its {VERIFIERS} check threads)",
        "",
        table(
            ["", "first round (full checks)", f"at rest ({run.rounds} re-checks of each endpoint)"], cpu_rows
        ),
    ]
    failures = Counter(c.message for c in run.checks if not c.ok)
    if failures:
        lines += ["", "Failed checks:", *(f"- {count} x {message}" for message, count in failures.items())]
    lines += ["", f"Stand-in server threads left at its stop: {server['threads']} (1 = its main thread)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--endpoints", type=int, default=50, help="endpoints (one resource each)")
    parser.add_argument(
        "--minutes", type=float, default=3.0, help="time at rest (rounded to whole intervals)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=defaults.verify_interval_seconds,
        help="re-check interval, s (the operator's verify_interval_seconds)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.endpoints <= 1000 or args.interval <= 0 or args.minutes <= 0:
        parser.error("--endpoints 1-1000, --interval and --minutes above 0")
    rounds = max(1, round(args.minutes * 60 / args.interval))
    run = Run(args.endpoints, args.interval, rounds)
    started_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    load_start = os.getloadavg()[0]
    print(
        f"# {args.endpoints} stand-in endpoints, re-check every {args.interval:g} s, "
        f"{rounds} interval(s) at rest: about {(rounds + 0.5) * args.interval / 60:.1f} min",
        file=sys.stderr,
    )
    stand_in = start_stand_in(args.endpoints)
    try:
        asyncio.run(drive(run, stand_in, defaults.verify_timeout_seconds))
    finally:
        server = stand_in.stop()
    if not run.first_complete:
        print(f"the first round did not end within {FIRST_ROUND_LIMIT:g} s", file=sys.stderr)
        return 1
    print(report(run, server, started_at, (load_start, os.getloadavg()[0])))
    return 0 if all(c.ok for c in run.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
