"""Operator-only scale: N TritonResNets to steady state with pods that finish at once.

``scale.py`` runs every builder pod as a Python process, so at 500 resources
the wall time is the builders' CPU, not the operator's. Here kwok's stage
controller plays the nodes instead of the node agent (``testground.kwok``):
a bound pod becomes Running at once, a builder Job pod Succeeded at once with
the builder's JSON result in its termination message (a stage of ours), so
every resource still goes build Job -> publish Job -> Deployment -> Ready
through the real control plane (scheduler, Job and Deployment controllers),
with no process behind any pod and no S3.

For each count (``--count``, default 1000 and 5000), on one ground: a fresh
namespace, a freshly started operator, then N onnx-format resources with
``replicas: 0`` created at once from ``--threads`` client threads. They serve
on GPU nodes (``serving.nodeSelector`` on GPU feature discovery's
``nvidia.com/gpu.present`` label, with the GPU taint tolerated), so the build
pods land on kwok's GPU nodes too; ``--any-node`` leaves both out. Steady
state = every resource ``Ready=True`` at its generation and no write by the
operator for ``--quiet`` seconds. Measured:

* wall time from the first create to the operator's last write;
* the operator's CPU seconds (utime+stime from /proc, from just before the
  first create) and peak RSS (VmHWM, start-up included);
* API requests per resource: the operator's, from the apiserver's audit log
  (which logs only the operator's user here), all and writes only; and every
  client's, from the growth of ``apiserver_request_total``.

The resources are followed with one watch (a LIST of thousands every few
seconds would itself load the two cores). Every wait has a timeout: a count
that does not settle within ``--timeout`` is reported as timed out.

``--profile DIR`` attaches py-spy to the operator for each count and
prints where its CPU goes (own and inclusive time per function) after the
table. ``--operator-path`` puts another checkout's
``operator`` and ``builder_image`` folders first on the operator's
PYTHONPATH (with that checkout's CRD), to measure older code.

    .venv/bin/python benchmarks/operator_scale.py [--count 1000 --count 5000] [--timeout 900]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _testground import (
    KwokGround,
    apply_all,
    is_ready,
    kwok_test_ground,
    log,
    offline_trn_manifest,
    prepare_offline_namespace,
    request_totals,
    sample_process,
    table,
    verb_resource,
)
from testground.audit import count_by
from testground.nodeagent_nodes import GPU_PRESENT_LABEL, GPU_TOLERATION
from tritonresnet.api import names

DEFAULT_COUNTS = (1000, 5000)
OPERATOR_START_TIMEOUT = 120.0
NAMESPACE_DELETE_TIMEOUT = 900.0


@dataclass(frozen=True)
class Result:
    count: int
    ready: int
    steady: bool
    create_seconds: float
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    requests: int
    writes: int
    all_clients_requests: int
    by_verb_resource: Counter[str]
    phases: Counter[str]
    process_cpu: dict[str, float] = field(default_factory=dict)  #: CPU s of each test-ground process
    load_average: float = float("nan")  #: mean 1-minute load average during the run (all sessions)
    profile: str = ""


@dataclass
class Follower:
    """Ready-ness of every TritonResNet of one namespace, from one list and then a watch."""

    ground: KwokGround
    namespace: str
    ready: dict[str, bool] = field(default_factory=dict)
    phase: dict[str, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def _record(self, event_type: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        with self._lock:
            if event_type == "DELETED":
                self.ready.pop(name, None)
                self.phase.pop(name, None)
            else:
                self.ready[name] = is_ready(obj)
                self.phase[name] = str((obj.get("status") or {}).get("phase") or "-")

    def _run(self) -> None:
        from kubernetes import client, watch
        from kubernetes.client.exceptions import ApiException

        api = self.ground.cp.api_client()
        custom = client.CustomObjectsApi(api)
        args = (names.GROUP, names.VERSION, self.namespace, names.PLURAL)
        version = ""
        while not self._stop.is_set():
            try:
                if not version:  # (re)list: the first time, or after the watch's version expired
                    listed = custom.list_namespaced_custom_object(*args)
                    with self._lock:
                        self.ready.clear()
                        self.phase.clear()
                    for item in listed["items"]:
                        self._record("ADDED", item)
                    version = listed["metadata"]["resourceVersion"]
                w = watch.Watch()
                for event in w.stream(
                    custom.list_namespaced_custom_object, *args, resource_version=version, timeout_seconds=30
                ):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = ""
                        break
                    version = obj["metadata"].get("resourceVersion", version)
                    self._record(event["type"], obj)
                    if self._stop.is_set():
                        break
                w.stop()
            except ApiException as error:
                log(f"watch: {error.status} {error.reason}; listing again")
                version = ""
                time.sleep(1.0)
            except Exception as error:  # a dropped connection: continue from the last version
                log(f"watch: {error!r}; restarting")
                time.sleep(1.0)
        api.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=40)

    def counts(self) -> tuple[int, int, Counter[str]]:
        """(resources seen, Ready at their generation, phases)."""
        with self._lock:
            return len(self.ready), sum(self.ready.values()), Counter(self.phase.values())


def restart_operator(ground: KwokGround) -> None:
    """A fresh operator process, so CPU and peak RSS belong to this count alone."""
    ground.operator.restart()
    since = time.time()
    deadline = since + OPERATOR_START_TIMEOUT
    while time.time() < deadline:
        proc = ground.operator.proc
        if proc is None or proc.poll() is not None:
            tail = ground.operator.log_text()[-3000:]
            raise RuntimeError(f"the operator exited at start-up; its log ends:\n{tail}")
        if any(e.verb == "list" and e.resource == names.PLURAL for e in ground.audit.operator(since=since)):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the operator did not list TritonResNets within {OPERATOR_START_TIMEOUT:.0f} s")


def wait_steady(
    ground: KwokGround,
    follower: Follower,
    count: int,
    started: float,
    timeout: float,
    quiet: float,
    loads: list[float],
) -> float | None:
    """Epoch of the operator's last write once all ``count`` are Ready and it has been quiet for
    ``quiet`` seconds; None on timeout. Appends the machine's load average to ``loads`` meanwhile."""
    deadline = started + timeout
    last_report = 0.0
    while time.time() < deadline:
        loads.append(os.getloadavg()[0])
        seen, ready, phases = follower.counts()
        writes = [e.at for e in ground.audit.operator(since=started) if e.is_write]
        last_write = max(writes, default=started)
        now = time.time()
        if now - last_report > 30:
            cpu = sample_process(ground.operator_pid).cpu_seconds
            log(
                f"{now - started:6.0f} s: {ready}/{count} Ready, {len(writes)} operator writes, "
                f"operator CPU {cpu:.0f} s total, phases {dict(phases)}"
            )
            last_report = now
        if seen == count and ready == count and now - last_write >= quiet:
            return last_write
        time.sleep(2.0)
    return None


def process_cpu(ground: KwokGround) -> dict[str, float]:
    """CPU seconds so far of every process of the ground (the control plane's, kwok's, the operator's)."""
    pids = {**ground.cp.pids(), "kwok": ground.kwok.pid, "operator": ground.operator_pid}
    out = {}
    for name, pid in pids.items():
        if pid is not None:
            try:
                out[name] = sample_process(pid).cpu_seconds
            except (FileNotFoundError, ProcessLookupError):
                pass
    return out


class Profiler:
    """py-spy attached to the operator process: samples every thread (cProfile would see only the
    thread that enabled it), from outside, so the operator runs unchanged. Raw (collapsed) stacks."""

    # Python's own code is GIL-bound: a busy operator is a thread holding the GIL.

    def __init__(self, py_spy: str, pid: int, output: Path, rate: int) -> None:
        self.output = output
        self.rate = rate
        argv = [py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
        # --gil: only samples of the thread holding the GIL, so they add up to the operator's
        # Python CPU time (threads blocked in a socket read would count as busy otherwise);
        # --nonblocking: never pause the operator to read its stacks (a little less exact).
        argv += ["--output", str(output), "--gil", "--nonblocking"]
        self._log = open(output.with_suffix(".log"), "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        """SIGINT makes py-spy write its file; kill it if it does not finish."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def summary(self, lines: int, cpu_seconds: float) -> str:
        if not self.output.exists():
            return f"(py-spy wrote no profile; see {self.output.with_suffix('.log')})"
        return summarize_stacks(self.output.read_text(), self.rate, lines, cpu_seconds)


def _frame(frame: str) -> tuple[str, str]:
    """("run_pass (tritonresnet/controller/runtime.py)", "tritonresnet") from py-spy's
    "run_pass (tritonresnet/controller/runtime.py:455)": the function, and the package it is in."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    package = path.split("/")[0].removesuffix(".py")
    return f"{name} ({path})", package


def summarize_stacks(raw: str, rate: int, lines: int, cpu_seconds: float) -> str:
    """py-spy's samples as shares of the operator's measured CPU (``cpu_seconds``): own time by
    package and by function, and the time inside each of the operator's own functions (what they
    call included). Shares, not sample counts, because on a loaded machine a thread holding
    the GIL may be waiting for a core: samples then add up to more than the CPU it used."""
    by_package: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        own[frames[-1][0]] += count
        by_package[frames[-1][1]] += count
        for name in {f for f, package in frames if package == "tritonresnet"}:
            inclusive[name] += count
    if not total:
        return "(no samples)"

    def rows(counter: Counter[str]) -> list[list[str]]:
        return [
            [f"{100 * n / total:.0f} %", f"{cpu_seconds * n / total:.1f}", name]
            for name, n in counter.most_common(lines)
        ]

    headers = ["share", "CPU s", "where"]
    return "\n\n".join(
        [
            f"{total} samples holding the GIL at {rate}/s ({total / rate:.0f} s of GIL time); "
            f"CPU s = share x the operator's {cpu_seconds:.0f} CPU s",
            "own time by package (the code that was running)",
            table(headers, rows(by_package)),
            "own time by function",
            table(headers, rows(own)),
            "the operator's own functions, with what they call",
            table(headers, rows(inclusive)),
        ]
    )


def run_one(ground: KwokGround, count: int, args: argparse.Namespace) -> Result:
    namespace = f"bench-op-{count}"
    prepare_offline_namespace(ground.cp, namespace)
    restart_operator(ground)
    time.sleep(2.0)  # let the fresh operator settle after its initial lists
    follower = Follower(ground, namespace)
    follower.start()
    selector, tolerations = ({}, ()) if args.any_node else ({GPU_PRESENT_LABEL: "true"}, (GPU_TOLERATION,))
    manifests = [
        offline_trn_manifest(namespace, f"r{i:05d}", f"m{i:05d}", 0, selector, tolerations)
        for i in range(count)
    ]
    profiler = None
    if args.profile:
        output = args.profile / f"operator-{count}.txt"
        profiler = Profiler(args.py_spy, ground.operator_pid, output, args.profile_rate)
    loads: list[float] = []
    before_metrics = request_totals(ground.cp.apiserver_metrics())
    before = sample_process(ground.operator_pid)
    before_cpu = process_cpu(ground)
    started = time.time()
    try:
        apply_all(ground.cp, manifests, threads=args.threads)
        create_seconds = time.time() - started
        log(f"{count}: created in {create_seconds:.1f} s")
        last_write = wait_steady(ground, follower, count, started, args.timeout, args.quiet, loads)
        after = sample_process(ground.operator_pid)
        after_cpu = process_cpu(ground)
        after_metrics = request_totals(ground.cp.apiserver_metrics())
    finally:
        if profiler is not None:
            profiler.stop()
    end = last_write if last_write is not None else time.time()
    # Requests finished from the first create to the last write; a watch is logged when it ends.
    ops = ground.audit.operator(since=started, until=end)
    _, ready, phases = follower.counts()
    follower.stop()
    return Result(
        count=count,
        ready=ready,
        steady=last_write is not None,
        create_seconds=create_seconds,
        wall_seconds=end - started,
        cpu_seconds=after.cpu_seconds - before.cpu_seconds,
        peak_rss_mib=after.peak_rss_bytes / (1 << 20),
        requests=len(ops),
        writes=sum(1 for e in ops if e.is_write),
        all_clients_requests=sum((after_metrics - before_metrics).values()),
        by_verb_resource=count_by(ops, verb_resource),
        phases=phases,
        process_cpu={k: after_cpu[k] - before_cpu.get(k, 0.0) for k in after_cpu},
        load_average=sum(loads) / len(loads) if loads else float("nan"),
        profile=profiler.summary(args.profile_lines, after.cpu_seconds - before.cpu_seconds)
        if profiler is not None
        else "",
    )


def report(results: list[Result], label: str) -> str:
    rows = [
        [
            r.count,
            f"{r.ready}/{r.count}" + ("" if r.steady else " (timed out)"),
            f"{r.create_seconds:.0f}",
            f"{r.wall_seconds:.0f}",
            f"{r.cpu_seconds:.1f}",
            f"{r.peak_rss_mib:.0f}",
            f"{r.requests / r.count:.1f}",
            f"{r.writes / r.count:.1f}",
            f"{r.all_clients_requests / r.count:.0f}",
        ]
        for r in results
    ]
    headers = [
        "resources",
        "Ready",
        "creates s",
        "apply -> steady s",
        "operator CPU s",
        "operator peak RSS MiB",
        "operator requests / resource",
        "operator writes / resource",
        "all clients' requests / resource",
    ]
    parts = [
        f"operator-only scale ({label}), {datetime.date.today()}: kwok nodes, pods finish at once; "
        "onnx, replicas 0, created at once; operator requests from the apiserver audit log",
        table(headers, rows),
    ]
    for r in results:
        detail = ", ".join(
            f"{k} {v / r.count:.2f}" for k, v in r.by_verb_resource.most_common() if v >= r.count / 10
        )
        parts.append(f"{r.count} resources, operator requests per resource by verb and resource: {detail}")
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r.process_cpu.items(), key=lambda kv: -kv[1]))
        parts.append(
            f"{r.count} resources, CPU s by process from the first create to the end: {cpu} "
            f"(machine load average during the run {r.load_average:.1f}, other sessions included)"
        )
        if not r.steady:
            parts.append(f"{r.count} resources did not reach steady state; phases {dict(r.phases)}")
        if r.profile:
            parts.append(f"{r.count} resources, where the operator's CPU goes (py-spy):\n\n{r.profile}")
    return "\n\n".join(parts)


def operator_env(args: argparse.Namespace) -> dict[str, str]:
    env: dict[str, str] = {}
    if args.operator_path:
        root = args.operator_path.resolve()
        # Ahead of the virtualenv's editable install of this checkout, so the operator
        # process imports the other checkout's packages.
        env["PYTHONPATH"] = os.pathsep.join([str(root / "operator"), str(root / "builder_image")])
    return env


def check_operator_import(env: dict[str, str]) -> str:
    """Where the operator process will import tritonresnet from (printed with the results)."""
    code = "import tritonresnet, tritonresnet_builder; print(tritonresnet.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--count", type=int, action="append", help="resources (repeatable; default 1000 5000)"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds per count to reach steady state"
    )
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds without an operator write")
    parser.add_argument("--threads", type=int, default=8, help="client threads creating the resources")
    parser.add_argument("--workdir", type=Path, help="keep logs and the audit log here")
    parser.add_argument("--operator-path", type=Path, help="another checkout whose operator to run")
    parser.add_argument(
        "--any-node",
        action="store_true",
        help="no serving nodeSelector/tolerations (default: GPU nodes, by their feature discovery label)",
    )
    parser.add_argument("--profile", type=Path, help="profile the operator with py-spy; stacks go here")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="the py-spy to run")
    parser.add_argument("--profile-rate", type=int, default=20, help="py-spy samples per second")
    parser.add_argument("--profile-lines", type=int, default=20, help="functions per profile table")
    parser.add_argument("--label", default="", help="names the code measured in the table heading")
    args = parser.parse_args()
    env = operator_env(args)
    imported = check_operator_import(env)
    log(f"the operator imports tritonresnet from {imported}")
    crd = (
        args.operator_path.resolve() / "crds" / "tritonresnet.io_tritonresnets.yaml"
        if args.operator_path
        else None
    )
    label = args.label or (f"operator from {args.operator_path}" if args.operator_path else "this checkout")
    if args.profile:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-operator-scale-") as tmp:
        workdir = args.workdir or Path(tmp)
        with kwok_test_ground(workdir, operator_env=env, crd=crd) as ground:
            counts = args.count or DEFAULT_COUNTS
            for i, count in enumerate(counts):
                results.append(run_one(ground, count, args))
                print(report(results[-1:], label), flush=True)
                ground.operator.kill()
                if i + 1 < len(counts):  # the next count starts on an empty cluster (and a fresh operator)
                    namespace = f"bench-op-{count}"
                    ground.cp.delete_namespace(namespace, wait=True, timeout=NAMESPACE_DELETE_TIMEOUT)
                    ground.cp.kubectl("delete", "pv", f"bench-models-{namespace}", "--ignore-not-found")
    print(f"\noperator imported tritonresnet from {imported}\n\n" + report(results, label), flush=True)


if __name__ == "__main__":
    main()
