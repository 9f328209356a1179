"""Shared set-up of the operator benchmarks: the whole test ground, an audit log, watches.

Every benchmark runs the real pieces the end-to-end tests use (etcd,
kube-apiserver, controller-manager, scheduler, the node agent running
builder pods as processes, moto's S3 server, the operator process) and
measures from the outside:

* **who calls the API**: ``apiserver_request_total`` carries no client label
  (only verb, group, version, resource, subresource, scope, component, code),
  so the apiserver also writes an audit log (metadata level, one JSON line per
  finished request with user, verb, resource, name and a microsecond
  timestamp). The operator runs with its own client certificate user
  (:data:`OPERATOR_USER`), so its requests are counted exactly;
* **when things happen**: watches on the benchmark namespace record every
  event with the local wall clock (:class:`Recorder`);
* **what the operator costs**: CPU seconds and peak RSS of its process from
  ``/proc``.

Import it after ``sys.path`` holds the repository's ``tests`` folder (each
benchmark script does that first).
"""

from __future__ import annotations

import contextlib
import re
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

import tritonresnet.api.names as names  # noqa: E402
from testground import audit, controlplane  # noqa: E402
from testground.audit import AuditEvent  # noqa: E402
from testground.controlplane import ControlPlane, start_control_plane  # noqa: E402
from testground.models import ensure_models  # noqa: E402
from testground.nodeagent import NodeAgent, start_node_agent  # noqa: E402
from testground.operator_run import OperatorProcess, install_crd  # noqa: E402
from testground.s3 import S3Server, start_s3  # noqa: E402

#: The operator's identity for these runs: a client certificate user in
#: ``system:masters`` (so RBAC changes nothing), distinct from the admin user
#: that the node agent, kubectl and the benchmark's own watches share.
OPERATOR_USER = "tritonresnet-operator-bench"
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # One line per request, written when it completes (a watch: when it ends).
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [{"level": "Metadata"}],
}
CLK_TCK = 100  # os.sysconf("SC_CLK_TCK") on Linux


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- the apiserver with an audit log ----------------------------------------------------


@contextlib.contextmanager
def _audited_apiserver(audit_log: Path, policy: Path) -> Iterator[None]:
    """Start the test ground's apiserver with an audit log.

    ``testground.controlplane`` has no hook for extra apiserver flags, so
    the function that builds its command line is wrapped for the duration
    of the start-up.
    """
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    original = controlplane._apiserver_component

    def with_audit(*args: Any, **kwargs: Any) -> controlplane.Component:
        component = original(*args, **kwargs)
        component.argv += [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={audit_log}",
            "--audit-log-maxsize=0",  # never rotate: a run reads the whole file
            "--audit-log-format=json",
        ]
        return component

    controlplane._apiserver_component = with_audit
    try:
        yield
    finally:
        controlplane._apiserver_component = original


class AuditLog(audit.AuditLog):
    """The test ground's audit log reader, with the benchmark operator's requests at hand."""

    def operator(self, since: float = 0.0, until: float = float("inf")) -> list[AuditEvent]:
        return self.by_user(OPERATOR_USER, since, until)


def verb_resource(event: AuditEvent) -> str:
    """``verb resource``; a non-resource request (discovery, /version) by its path."""
    return f"{event.verb} {event.resource or event.uri.split('?')[0]}"


# -- apiserver metrics ------------------------------------------------------------------


_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def request_totals(metrics_text: str) -> Counter[tuple[str, str]]:
    """``apiserver_request_total`` summed by (verb, resource[/subresource])."""
    totals: Counter[tuple[str, str]] = Counter()
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        totals[(labels.get("verb", "").lower(), resource)] += int(float(match["value"]))
    return totals


def request_total_labels(metrics_text: str) -> list[str]:
    """The label names ``apiserver_request_total`` carries (to say why the audit log is used)."""
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            return sorted(name for name, _ in _LABEL.findall(match["labels"]))
    return []


# -- the operator process ---------------------------------------------------------------


@dataclass(frozen=True)
class ProcessSample:
    cpu_seconds: float  #: utime + stime of the process (its threads included)
    rss_bytes: int
    peak_rss_bytes: int  #: VmHWM


def sample_process(pid: int) -> ProcessSample:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name (which may hold spaces) start after ") ".
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    status = {
        line.split(":")[0]: line.split()[1]
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith(("VmRSS", "VmHWM"))
    }
    return ProcessSample(
        (utime + stime) / CLK_TCK, int(status.get("VmRSS", 0)) * 1024, int(status.get("VmHWM", 0)) * 1024
    )


# -- watches with local timestamps ------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    at: float  #: local wall clock when the event arrived
    type: str  #: ADDED | MODIFIED | DELETED
    kind: str
    obj: Mapping[str, Any]


class Recorder:
    """Watches TritonResNets, Jobs, Pods and Deployments of one namespace; keeps every event."""

    KINDS = ("TritonResNet", "Job", "Pod", "Deployment")

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp = cp
        self.namespace = namespace
        self.events: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _list_fn(self, api: Any, kind: str) -> tuple[Callable[..., Any], dict[str, Any]]:
        from kubernetes import client

        ns = self.namespace
        if kind == "TritonResNet":
            custom = client.CustomObjectsApi(api)
            args = {"group": names.GROUP, "version": names.VERSION, "namespace": ns, "plural": names.PLURAL}
            return custom.list_namespaced_custom_object, args
        if kind == "Job":
            return client.BatchV1Api(api).list_namespaced_job, {"namespace": ns}
        if kind == "Pod":
            return client.CoreV1Api(api).list_namespaced_pod, {"namespace": ns}
        return client.AppsV1Api(api).list_namespaced_deployment, {"namespace": ns}

    def _watch(self, kind: str, ready: threading.Event) -> None:
        from kubernetes import watch

        api = self.cp.api_client()
        fn, args = self._list_fn(api, kind)
        version = ""
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                stream = w.stream(
                    fn,
                    **args,
                    resource_version=version or None,
                    timeout_seconds=30,
                    allow_watch_bookmarks=False,
                )
                ready.set()
                for event in stream:
                    obj = event["object"]
                    raw = obj if isinstance(obj, dict) else api.sanitize_for_serialization(obj)
                    version = raw["metadata"].get("resourceVersion", version)
                    with self._lock:
                        self.events.append(Seen(time.time(), event["type"], kind, raw))
                    if self._stop.is_set():
                        break
            except Exception as error:  # an expired resourceVersion: start over from now
                log(f"watch {kind}: {error!r}; restarting")
                version = ""
                time.sleep(0.5)
            finally:
                w.stop()
        api.close()

    def start(self) -> None:
        for kind in self.KINDS:
            ready = threading.Event()
            thread = threading.Thread(target=self._watch, args=(kind, ready), daemon=True)
            thread.start()
            self._threads.append(thread)
            ready.wait(10)
        time.sleep(0.5)  # the watch requests reach the apiserver after the generator starts

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return list(self.events)


# -- resources --------------------------------------------------------------------------


def trn_manifest(
    namespace: str, name: str, model_name: str, uri: str, s3: S3Server, replicas: int = 0
) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"uri": uri, "endpoint": s3.endpoint, "credentialsSecret": "s3-credentials"},
            "model": {"name": model_name, "format": "onnx"},
            "engine": {"maxBatchSize": 4},
            "serving": {"release": "25.01", "replicas": replicas, "instanceCount": 1},
            "repository": {"claimName": "models"},
        },
    }


def prepare_namespace(cp: ControlPlane, namespace: str, s3: S3Server) -> None:
    """The namespace, the S3 credentials Secret and the shared models PVC all resources publish into."""
    cp.create_namespace(namespace)
    secret = s3.credentials_secret(namespace)
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "50Gi"}}},
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([secret, pvc]))


def apply_all(cp: ControlPlane, manifests: Sequence[Mapping[str, Any]], threads: int = 4) -> None:
    """Create the resources from a few threads, as a GitOps tool syncing a folder would.

    (``kubectl create -f`` sends them one after another: 100 took 40 s on two busy cores.)
    """
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client

    with cp.api_client() as api:
        custom = client.CustomObjectsApi(api)

        def create(manifest: Mapping[str, Any]) -> None:
            namespace = manifest["metadata"]["namespace"]
            custom.create_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, names.PLURAL, dict(manifest)
            )

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(create, manifests))


def list_trns(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    from kubernetes import client

    with cp.api_client() as api:
        answer = client.CustomObjectsApi(api).list_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.PLURAL
        )
    return list(answer["items"])


def is_ready(trn: Mapping[str, Any]) -> bool:
    gen = trn["metadata"].get("generation")
    for cond in (trn.get("status") or {}).get("conditions") or ():
        if cond["type"] == "Ready":
            return bool(cond["status"] == "True" and cond.get("observedGeneration") == gen)
    return False


def phases(trns: Iterable[Mapping[str, Any]]) -> Counter[str]:
    return Counter(str((t.get("status") or {}).get("phase") or "-") for t in trns)


# -- numbers ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return float(statistics.quantiles(sorted(values), n=100, method="inclusive")[int(q) - 1])


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (so results.md can take the output as is)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


# -- the whole test ground --------------------------------------------------------------


@dataclass
class Ground:
    cp: ControlPlane
    agent: NodeAgent
    s3: S3Server
    operator: OperatorProcess
    audit: AuditLog
    model_uri: str  #: one resnet18 ONNX in S3 that every resource points at
    workdir: Path
    notes: list[str] = field(default_factory=list)

    @property
    def operator_pid(self) -> int:
        assert self.operator.proc is not None
        return self.operator.proc.pid


@contextlib.contextmanager
def test_ground(workdir: Path, operator_env: Mapping[str, str] | None = None) -> Iterator[Ground]:
    """Everything up, the CRD installed, one model uploaded, the operator running as :data:`OPERATOR_USER`."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    audit_path = workdir / "audit.log"
    models = ensure_models()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_audited_apiserver(audit_path, workdir / "audit-policy.yaml"))
        cp = stack.enter_context(start_control_plane(workdir / "control-plane"))
        agent = stack.enter_context(start_node_agent(cp, workdir / "nodes"))
        s3 = stack.enter_context(start_s3(workdir / "s3"))
        install_crd(cp)
        uri = s3.upload(models.path("resnet18"), "bench/resnet18/model.onnx")
        kubeconfig = cp.client_kubeconfig(OPERATOR_USER, groups=["system:masters"])
        operator = OperatorProcess(cp, workdir, kubeconfig=kubeconfig, extra_env=dict(operator_env or {}))
        operator.start()
        stack.callback(operator.kill)
        ground = Ground(cp, agent, s3, operator, AuditLog(audit_path), uri, workdir)
        # The operator is up once it has listed what it watches (a watch is logged only when it ends).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(e.verb == "list" and e.resource == names.PLURAL for e in ground.audit.operator()):
                break
            time.sleep(0.5)
        log(f"test ground up in {workdir}; operator pid {ground.operator_pid}")
        yield ground


def wait_steady(
    ground: Ground,
    namespace: str,
    count: int,
    started: float,
    timeout: float,
    quiet_seconds: float = 10.0,
    poll: float = 2.0,
) -> tuple[float | None, list[dict[str, Any]]]:
    """Wait until all ``count`` resources are Ready and the operator has written nothing for
    ``quiet_seconds``; returns (epoch of the operator's last write, final resources) or
    (None, resources) on timeout. Samples the operator's RSS meanwhile (VmHWM keeps the peak)."""
    deadline = started + timeout
    last_report = 0.0
    trns: list[dict[str, Any]] = []
    while time.time() < deadline:
        trns = list_trns(ground.cp, namespace)
        ready = sum(map(is_ready, trns))
        writes = [e for e in ground.audit.operator(since=started) if e.is_write]
        last_write = max((e.at for e in writes), default=started)
        if time.time() - last_report > 30:
            log(f"{time.time() - started:6.0f} s: {ready}/{count} Ready, phases {dict(phases(trns))}")
            last_report = time.time()
        if ready == count and len(trns) == count and time.time() - last_write >= quiet_seconds:
            return last_write, trns
        time.sleep(poll)
    return None, trns


# -- the operator alone: kwok's fake nodes instead of the node agent --------------------

#: At thousands of resources a line for every client's request makes the audit log
#: (hundreds of MB) and reading it a load of its own on the same two cores, so the
#: operator-only ground logs the operator's requests only; every client's count
#: comes from ``apiserver_request_total``.
OPERATOR_AUDIT_POLICY: dict[str, Any] = {
    **AUDIT_POLICY,
    "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}],
}
#: The scheduler's client rate on the operator-only ground, as the controller-manager's.
#: At its default (50 QPS) it binds at most 50 pods a second: with two builder pods
#: per resource that alone would hold 5,000 resources for 200 s.
SCHEDULER_QPS, SCHEDULER_BURST = 200, 400
#: No builder runs on kwok's nodes, so nothing ever fetches the model: the source
#: only has to be a valid spec (port 9 is discard; nobody connects to it).
OFFLINE_MODEL_URI = "s3://bench/resnet18/model.onnx"
OFFLINE_S3_ENDPOINT = "http://127.0.0.1:9"


@contextlib.contextmanager
def _operator_audited_apiserver(audit_log: Path, policy: Path) -> Iterator[None]:
    """As :func:`_audited_apiserver`, with :data:`OPERATOR_AUDIT_POLICY` (read when the apiserver starts)."""
    with _audited_apiserver(audit_log, policy):
        policy.write_text(yaml.safe_dump(OPERATOR_AUDIT_POLICY))
        yield


@contextlib.contextmanager
def _scheduler_rate(qps: int, burst: int) -> Iterator[None]:
    """Start the scheduler with this client rate (no hook for it either: wrap its command line)."""
    original = controlplane._scheduler_component

    def with_rate(*args: Any, **kwargs: Any) -> controlplane.Component:
        component = original(*args, **kwargs)
        component.argv += [f"--kube-api-qps={qps}", f"--kube-api-burst={burst}"]
        return component

    controlplane._scheduler_component = with_rate
    try:
        yield
    finally:
        controlplane._scheduler_component = original


def offline_trn_manifest(
    namespace: str,
    name: str,
    model_name: str,
    replicas: int = 0,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """:func:`trn_manifest`'s resource for a ground without S3 (the source is never fetched),
    optionally served (and built) on the nodes ``node_selector`` picks."""
    serving: dict[str, Any] = {"release": "25.01", "replicas": replicas, "instanceCount": 1}
    if node_selector:
        serving["nodeSelector"] = dict(node_selector)
    if tolerations:
        serving["tolerations"] = [dict(t) for t in tolerations]
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {
                "uri": OFFLINE_MODEL_URI,
                "endpoint": OFFLINE_S3_ENDPOINT,
                "credentialsSecret": "s3-credentials",
            },
            "model": {"name": model_name, "format": "onnx"},
            "engine": {"maxBatchSize": 4},
            "serving": serving,
            "repository": {"claimName": "models"},
        },
    }


def prepare_offline_namespace(cp: ControlPlane, namespace: str, timeout: float = 60.0) -> None:
    """As :func:`prepare_namespace` without S3 or the node agent: placeholder credentials, and
    the models PVC bound to a PersistentVolume made here (no provisioner runs, and the
    scheduler places no pod whose claim is unbound). Nothing mounts the volume."""
    cp.create_namespace(namespace)
    volume = f"bench-models-{namespace}"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3-credentials", "namespace": namespace},
        "stringData": {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"},
    }
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": volume},
        "spec": {
            "capacity": {"storage": "50Gi"},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "",
            "hostPath": {"path": "/srv/tritonresnet-bench/models"},
            "claimRef": {"kind": "PersistentVolumeClaim", "namespace": namespace, "name": "models"},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "volumeName": volume,
            "resources": {"requests": {"storage": "50Gi"}},
        },
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([secret, pv, pvc]))
    bound = "--for=jsonpath={.status.phase}=Bound"
    cp.kubectl("wait", "-n", namespace, bound, "pvc/models", f"--timeout={timeout:.0f}s")


def install_crd_file(cp: ControlPlane, crd: Path) -> None:
    """:func:`install_crd` for another CRD file (an older commit's, with the operator of that commit)."""
    cp.kubectl("apply", "--server-side", "-f", str(crd))
    cp.kubectl("wait", "--for=condition=Established", "crd/tritonresnets.tritonresnet.io", "--timeout=60s")
    for _ in range(50):  # kubectl's discovery cache needs a moment to learn the new kind
        if cp.kubectl("get", "trn", "-A", check=False).returncode == 0:
            return
        time.sleep(0.2)


@dataclass
class KwokGround:
    """The control plane, kwok's fake nodes and the operator; no node agent, no S3."""

    cp: ControlPlane
    kwok: controlplane.Component
    operator: OperatorProcess
    audit: AuditLog  #: the operator's requests only (:data:`OPERATOR_AUDIT_POLICY`)
    workdir: Path

    @property
    def operator_pid(self) -> int:
        assert self.operator.proc is not None
        return self.operator.proc.pid


@contextlib.contextmanager
def kwok_test_ground(
    workdir: Path, operator_env: Mapping[str, str] | None = None, crd: Path | None = None
) -> Iterator[KwokGround]:
    """Control plane with the operator-only audit log, kwok (``testground.kwok``) playing the
    nodes, the CRD (``crd``, default this checkout's) and the operator as :data:`OPERATOR_USER`."""
    from testground.kwok import start_kwok

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    audit_path = workdir / "audit.log"
    with contextlib.ExitStack() as stack:
        stack.enter_context(_operator_audited_apiserver(audit_path, workdir / "audit-policy.yaml"))
        stack.enter_context(_scheduler_rate(SCHEDULER_QPS, SCHEDULER_BURST))
        cp = stack.enter_context(start_control_plane(workdir / "control-plane"))
        kwok = stack.enter_context(start_kwok(cp, workdir))
        if crd is None:
            install_crd(cp)
        else:
            install_crd_file(cp, crd)
        kubeconfig = cp.client_kubeconfig(OPERATOR_USER, groups=["system:masters"])
        operator = OperatorProcess(cp, workdir, kubeconfig=kubeconfig, extra_env=dict(operator_env or {}))
        operator.start()
        stack.callback(operator.kill)
        ground = KwokGround(cp, kwok, operator, AuditLog(audit_path), workdir)
        log(f"operator-only test ground up in {workdir}; operator pid {ground.operator_pid}")
        yield ground
