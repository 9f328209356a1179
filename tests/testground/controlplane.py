"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler.

The binaries come from ``testground.binaries`` (built once from pinned Go
modules). Everything runs as child processes of the calling Python process,
each in its own session, on free loopback ports, with state and logs under
one work folder:

    workdir/pki/            CA, serving and client certificates, service-account keys
    workdir/etcd-data/      etcd's data directory
    workdir/kubeconfigs/    admin, controller-manager, scheduler, service accounts
    workdir/logs/<component>.log
    workdir/audit-policy.yaml, workdir/logs/audit.log
                            the apiserver's audit log (``testground.audit``): by
                            default only the e2e operator's ServiceAccount's requests

``start_control_plane`` always stops every process it started, by PID, also
when the body raises or the user presses Ctrl-C.

    python -m testground.controlplane --workdir DIR   # run one until Ctrl-C
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testground import audit
from testground.binaries import ensure_binaries
from testground.pki import FRONT_PROXY_CLIENT, CertPair, Pki, generate_pki
from testground.waiting import WaitTimeout, wait_for

# Room for 65k Services: every TritonResNet owns one, and the benchmarks make 500.
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CLUSTER_NAME = "testground"

STARTUP_TIMEOUT = 90.0  # seconds; cold start on two busy cores takes a few
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
POLL_INTERVAL = 0.1  # start-up is timed (startup_seconds), so its checks poll often
PORT_ATTEMPTS = 3  # free ports are picked before binding, so another process can win one


def log(message: str) -> None:
    print(f"testground: {message}", file=sys.stderr, flush=True)


# -- small pure helpers -------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def kubeconfig_dict(
    server: str,
    ca_pem: str,
    user: str,
    *,
    client: CertPair | None = None,
    token: str | None = None,
    namespace: str = "default",
) -> dict[str, Any]:
    """A one-context kubeconfig; credentials are embedded so the file stands alone."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    credentials: dict[str, str] = {}
    if client is not None:
        credentials["client-certificate-data"] = b64(client.cert.read_text())
        credentials["client-key-data"] = b64(client.key.read_text())
    if token is not None:
        credentials["token"] = token
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": CLUSTER_NAME, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [
            {"name": user, "context": {"cluster": CLUSTER_NAME, "user": user, "namespace": namespace}}
        ],
        "current-context": user,
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def rss_of(pid: int) -> int:
    """Resident memory of a process in bytes, from /proc (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def http_get(url: str, context: ssl.SSLContext | None = None, timeout: float = 5.0) -> tuple[int, str] | None:
    """(status, body) of a GET, or None when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
        return None


def _insecure_context() -> ssl.SSLContext:
    # The controller-manager and scheduler serve /healthz with a self-signed
    # certificate they make at start-up; only liveness is asked of them.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- processes ----------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the starting thread dies.

    A test process killed with SIGKILL cannot run its teardown; this keeps a
    shared machine from filling with orphaned apiservers. It follows the
    thread that started the process, so start the control plane from a thread
    that lives as long as the control plane (pytest's main thread does).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Component:
    """One child process with its log file; started in its own session."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None  #: None: ours

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"---- starting: {' '.join(self.argv)}\n".encode())
            log_file.flush()
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env=self.env,
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the process group led by our PID; SIGKILL it after ``grace`` seconds."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {process.pid}) ignored SIGTERM for {grace:.0f} s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # The group may hold children that outlived the leader; they go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


class PortTaken(RuntimeError):
    """Another process took a port between our picking it and the component binding it."""

    def __init__(self, component: str, message: str) -> None:
        super().__init__(message)
        self.component = component


def _wait_ready(component: Component, check: Callable[[], bool], timeout: float = STARTUP_TIMEOUT) -> float:
    """Poll ``check`` until true; fail fast with the log tail if the process exits."""
    started = time.monotonic()

    def ready() -> bool:
        if not component.running():
            tail = component.log_tail()
            message = f"{component.name} exited during start-up; last lines of {component.log_path}:\n{tail}"
            if "address already in use" in tail:
                raise PortTaken(component.name, message)
            raise RuntimeError(message)
        return check()

    try:
        wait_for(ready, f"{component.name} to become ready", timeout, every=POLL_INTERVAL)
    except WaitTimeout as error:
        raise error.with_detail(f"last lines of {component.log_path}:\n{component.log_tail()}") from None
    return time.monotonic() - started


# -- the control plane --------------------------------------------------------------


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}"


@dataclass
class ControlPlane:
    """A running control plane: where it is, how to reach it as admin, and its processes."""

    workdir: Path
    bin_dir: Path
    kubeconfig: Path
    server: str
    ca_file: Path
    pki: Pki
    #: The apiserver's audit log (JSON lines; ``testground.audit.AuditLog`` reads it).
    audit_log: Path
    startup_seconds: dict[str, float] = field(default_factory=dict)
    _components: dict[str, Component] = field(default_factory=dict, repr=False)

    # -- talking to it

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    @contextlib.contextmanager
    def applied(self, objects: Sequence[dict[str, Any]], server_side: bool = False) -> Iterator[None]:
        """``objects`` applied for the block and deleted (not awaited) after it, also when it raises."""
        document = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        self.kubectl("apply", *(["--server-side"] if server_side else []), "-f", "-", input=document)
        try:
            yield
        finally:
            self.kubectl(
                "delete", "-f", "-", "--ignore-not-found", "--wait=false", input=document, check=False
            )

    def api_client(self) -> Any:
        """A fresh admin ``kubernetes.client.ApiClient`` (close it, or use it as a context manager)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def env(self) -> dict[str, str]:
        """The environment a subprocess needs to use this cluster with the built tools."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", "")])
        return env

    def admin_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))
        return context

    def _admin_get(self, path: str, timeout: float = 10.0) -> tuple[int, str] | None:
        return http_get(f"{self.server}{path}", self.admin_ssl_context(), timeout)

    def apiserver_metrics(self) -> str:
        """The apiserver's Prometheus metrics (``apiserver_request_total`` counts API calls)."""
        answer = self._admin_get("/metrics", timeout=30)
        if answer is None or answer[0] != 200:
            raise RuntimeError(f"GET /metrics failed: {answer}")
        return answer[1]

    # -- namespaces

    def install_crds(self, paths: Sequence[Path]) -> list[str]:
        """Apply CRD files (server-side: some are too large for the last-applied annotation) and
        wait until each is Established; returns their names."""
        crds = [yaml.safe_load(path.read_text())["metadata"]["name"] for path in paths]
        for path in paths:
            self.kubectl("apply", "--server-side", "-f", str(path))
        for crd in crds:
            self.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")
        return crds

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        """Create a namespace and wait until pods can be created in it.

        Pod admission rejects pods until the ``default`` ServiceAccount exists,
        and projected token volumes need the ``kube-root-ca.crt`` ConfigMap;
        both are made by controllers a moment after the namespace.
        """
        from kubernetes import client

        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
        with self.api_client() as api:
            client.CoreV1Api(api).create_namespace(body)
        wait_for(
            lambda: (
                self._exists(f"/api/v1/namespaces/{name}/serviceaccounts/default")
                and self._exists(f"/api/v1/namespaces/{name}/configmaps/kube-root-ca.crt")
            ),
            f"the default ServiceAccount in namespace {name}",
            60,
            every=POLL_INTERVAL,
        )

    @contextlib.contextmanager
    def throwaway_namespace(self, prefix: str = "t", labels: dict[str, str] | None = None) -> Iterator[str]:
        """A new namespace named ``<prefix>-<random>``, ready for pods, deleted on exit.

        The one way a test gets a namespace of its own, whatever the scope of its
        fixture. The deletion is not awaited: the name is never used again, and
        waiting for the namespace controller would add seconds to every test.
        """
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.create_namespace(name, labels)
        try:
            yield name
        finally:
            self.delete_namespace(name)

    def delete_namespace(self, name: str, wait: bool = False, timeout: float = 120) -> None:
        """Delete a namespace (a missing one is fine); with ``wait``, until it is gone."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        with self.api_client() as api:
            try:
                client.CoreV1Api(api).delete_namespace(name, propagation_policy="Background")
            except ApiException as error:
                if error.status != 404:
                    raise
        if wait:
            wait_for(
                lambda: not self._exists(f"/api/v1/namespaces/{name}"),
                f"namespace {name} to be deleted",
                timeout,
            )

    def _exists(self, path: str) -> bool:
        answer = self._admin_get(path)
        if answer is None:
            return False
        if answer[0] in (200, 404):
            return answer[0] == 200
        raise RuntimeError(f"GET {path}: {answer[0]} {answer[1][:300]}")

    # -- identities

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path | None = None, expiration_seconds: int = 86400
    ) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount with a TokenRequest token.

        Use it to run something (the operator) with exactly the rights RBAC gives that account.
        """
        from kubernetes import client

        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        with self.api_client() as api:
            answer = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
        user = f"system:serviceaccount:{namespace}:{name}"
        config = kubeconfig_dict(
            self.server, self.ca_file.read_text(), user, token=answer.status.token, namespace=namespace
        )
        target = path or self.workdir / "kubeconfigs" / f"sa-{namespace}-{name}.yaml"
        return write_kubeconfig(target, config)

    def client_kubeconfig(self, user: str, groups: Sequence[str] = (), path: Path | None = None) -> Path:
        """A kubeconfig with a client certificate for ``user`` in ``groups`` (for example a node:
        ``system:node:<name>`` in ``system:nodes``, which the Node authorizer recognises)."""
        safe = user.replace(":", "-")
        pair = self.pki.issue_client(f"client-{safe}", user, groups)
        target = path or self.workdir / "kubeconfigs" / f"{safe}.yaml"
        config = kubeconfig_dict(self.server, self.ca_file.read_text(), user, client=pair)
        return write_kubeconfig(target, config)

    # -- processes

    def pids(self) -> dict[str, int]:
        return {name: c.pid for name, c in self._components.items() if c.pid is not None and c.running()}

    def rss_bytes(self) -> dict[str, int]:
        return {name: rss_of(pid) for name, pid in self.pids().items()}

    def restart_apiserver(self) -> float:
        """Stop kube-apiserver and start it again on the same port; returns seconds until ready."""
        component = self._components["kube-apiserver"]
        log("restarting kube-apiserver")
        component.stop()
        component.start()
        seconds = _wait_ready(component, self._apiserver_ready)
        log(f"kube-apiserver ready again in {seconds:.1f} s")
        return seconds

    def _apiserver_ready(self) -> bool:
        answer = self._admin_get("/readyz")
        return answer is not None and answer[0] == 200

    def stop(self) -> None:
        """Stop every process, dependants first; safe to call twice."""
        for name in reversed(list(self._components)):
            try:
                self._components[name].stop()
            except Exception as error:  # keep stopping the others
                log(f"stopping {name} failed: {error!r}")


def _etcd_component(bin_dir: Path, workdir: Path) -> tuple[Component, str]:
    client_url = f"http://127.0.0.1:{free_port()}"
    peer_url = f"http://127.0.0.1:{free_port()}"
    argv = [
        str(bin_dir / "etcd"),
        "--name=testground",
        f"--data-dir={workdir / 'etcd-data'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=testground={peer_url}",
        # Throwaway data: durability buys nothing and fsync is slow on shared disks.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]
    return Component("etcd", argv, workdir / "logs" / "etcd.log"), client_url


def _audit_files(workdir: Path) -> tuple[Path, Path]:
    """(policy, log) of the apiserver's audit log; ``start_control_plane`` writes the policy."""
    return workdir / "audit-policy.yaml", workdir / "logs" / "audit.log"


def _apiserver_component(bin_dir: Path, workdir: Path, pki: Pki, port: int, etcd_url: str) -> Component:
    argv = [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        # The default reconciler refuses to publish a loopback address as the
        # `kubernetes` Service endpoint and keeps complaining.
        "--endpoint-reconciler-type=none",
        f"--tls-cert-file={pki.apiserver.cert}",
        f"--tls-private-key-file={pki.apiserver.key}",
        f"--client-ca-file={pki.ca.cert}",
        "--authorization-mode=Node,RBAC",
        # As OpenShift has it on: setting blockOwnerDeletion on an owner reference needs
        # `update` on the owner's `finalizers`. A check inside admission, not a request of
        # its own, so no audit line shows it: with this on, the operator's chart grant for it
        # is needed here too (a child's create is Forbidden without it).
        "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--allow-privileged=true",
        # Without a bound the apiserver waits on the controllers' open watches
        # for more than 30 s after SIGTERM; with it, it exits in about 1 s.
        "--shutdown-watch-termination-grace-period=1s",
        *_aggregation_flags(pki),
        *audit.apiserver_flags(*_audit_files(workdir)),
    ]
    return Component("kube-apiserver", argv, workdir / "logs" / "kube-apiserver.log")


def _aggregation_flags(pki: Pki) -> list[str]:
    """The aggregation layer, as kubeadm configures it: the apiserver forwards requests for an
    APIService to its server with the front-proxy certificate and the user in these headers."""
    return [
        f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
        f"--proxy-client-key-file={pki.front_proxy_client.key}",
        # To an endpoint of the APIService's Service, not its ClusterIP: the apiserver runs on
        # the host, where the service range is blackholed (kube-proxy's rules live in the node
        # namespace), as on a cluster whose control plane runs no kube-proxy.
        "--enable-aggregator-routing=true",
    ]


def _controller_manager_component(
    bin_dir: Path, workdir: Path, pki: Pki, kubeconfig: Path, port: int
) -> Component:
    argv = [
        str(bin_dir / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        "--controllers=*",
        # Each controller acts as its own ServiceAccount, so RBAC is exercised as in a real cluster.
        "--use-service-account-credentials",
        "--leader-elect=false",
        # The default client rate limit delays the default ServiceAccount by seconds.
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        f"--root-ca-file={pki.ca.cert}",
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--cluster-signing-cert-file={pki.ca.cert}",
        f"--cluster-signing-key-file={pki.ca.key}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={workdir / 'certs' / 'kube-controller-manager'}",
        # No --authentication/--authorization-kubeconfig: with them the
        # component loops on CA-bundle errors; /healthz stays open without them.
    ]
    return Component("kube-controller-manager", argv, workdir / "logs" / "kube-controller-manager.log")


def _scheduler_component(bin_dir: Path, workdir: Path, kubeconfig: Path, port: int) -> Component:
    argv = [
        str(bin_dir / "kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={workdir / 'certs' / 'kube-scheduler'}",
    ]
    return Component("kube-scheduler", argv, workdir / "logs" / "kube-scheduler.log")


def _healthz(port: int) -> Callable[[], bool]:
    context = _insecure_context()

    def check() -> bool:
        answer = http_get(f"https://127.0.0.1:{port}/healthz", context)
        return answer is not None and answer[0] == 200

    return check


def _start(cp: ControlPlane, component: Component) -> None:
    cp._components[component.name] = component
    component.start()
    log(f"started {component.name} (pid {component.pid}), log {component.log_path}")


def _bring_up(cp: ControlPlane) -> None:
    etcd, etcd_url = _etcd_component(cp.bin_dir, cp.workdir)
    port = int(cp.server.rsplit(":", 1)[1])
    apiserver = _apiserver_component(cp.bin_dir, cp.workdir, cp.pki, port, etcd_url)
    _start(cp, etcd)
    cp.startup_seconds["etcd"] = _wait_ready(
        etcd, lambda: (http_get(f"{etcd_url}/health") or (0, ""))[0] == 200
    )
    _start(cp, apiserver)
    cp.startup_seconds["kube-apiserver"] = _wait_ready(apiserver, cp._apiserver_ready)
    log(f"kube-apiserver ready at {cp.server} in {cp.startup_seconds['kube-apiserver']:.1f} s")

    kubeconfigs = cp.workdir / "kubeconfigs"
    ca_pem = cp.ca_file.read_text()
    cm_port, scheduler_port = free_port(), free_port()
    cm_kubeconfig = write_kubeconfig(
        kubeconfigs / "kube-controller-manager.yaml",
        kubeconfig_dict(
            cp.server, ca_pem, "system:kube-controller-manager", client=cp.pki.controller_manager
        ),
    )
    scheduler_kubeconfig = write_kubeconfig(
        kubeconfigs / "kube-scheduler.yaml",
        kubeconfig_dict(cp.server, ca_pem, "system:kube-scheduler", client=cp.pki.scheduler),
    )
    controller_manager = _controller_manager_component(cp.bin_dir, cp.workdir, cp.pki, cm_kubeconfig, cm_port)
    scheduler = _scheduler_component(cp.bin_dir, cp.workdir, scheduler_kubeconfig, scheduler_port)
    # Both start together; neither needs the other.
    _start(cp, controller_manager)
    _start(cp, scheduler)
    cp.startup_seconds["kube-controller-manager"] = _wait_ready(controller_manager, _healthz(cm_port))
    cp.startup_seconds["kube-scheduler"] = _wait_ready(scheduler, _healthz(scheduler_port))
    # Pods cannot be created before the ServiceAccount controller has made this.
    started = time.monotonic()
    wait_for(
        lambda: cp._exists("/api/v1/namespaces/default/serviceaccounts/default"),
        "the default ServiceAccount",
        STARTUP_TIMEOUT,
        every=POLL_INTERVAL,
    )
    cp.startup_seconds["default-serviceaccount"] = time.monotonic() - started


def _new_control_plane(workdir: Path, bin_dir: Path, pki: Pki) -> ControlPlane:
    """A not yet started control plane on a fresh port, with its admin kubeconfig written."""
    server = f"https://127.0.0.1:{free_port()}"
    kubeconfig = write_kubeconfig(
        workdir / "kubeconfigs" / "admin.yaml",
        kubeconfig_dict(server, pki.ca.cert.read_text(), "kubernetes-admin", client=pki.admin),
    )
    return ControlPlane(
        workdir=workdir,
        bin_dir=bin_dir,
        kubeconfig=kubeconfig,
        server=server,
        ca_file=pki.ca.cert,
        pki=pki,
        audit_log=_audit_files(workdir)[1],
    )


@contextlib.contextmanager
def start_control_plane(
    workdir: Path, bin_dir: Path | None = None, audit_policy: dict[str, Any] | None = None
) -> Iterator[ControlPlane]:
    """Start etcd, kube-apiserver, kube-controller-manager and kube-scheduler; stop them on exit.

    ``audit_policy``: what the apiserver's audit log records (default
    ``testground.audit.policy()``: the e2e operator's requests only).
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _audit_files(workdir)[0].write_text(yaml.safe_dump(audit_policy or audit.policy()))
    bin_dir = bin_dir or ensure_binaries(log=log)
    started = time.monotonic()
    pki = generate_pki(workdir / "pki")
    pki_seconds = time.monotonic() - started
    cp = _new_control_plane(workdir, bin_dir, pki)
    try:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                _bring_up(cp)
                break
            except PortTaken as error:
                if attempt == PORT_ATTEMPTS:
                    raise
                log(f"{error.component} found its port taken by another process; trying other ports")
                cp.stop()
                # etcd remembers its peer URL in its data; the next one gets new ports.
                shutil.rmtree(workdir / "etcd-data", ignore_errors=True)
                cp = _new_control_plane(workdir, bin_dir, pki)
        cp.startup_seconds = {"pki": pki_seconds, **cp.startup_seconds, "total": time.monotonic() - started}
        (workdir / "startup.json").write_text(json.dumps(cp.startup_seconds, indent=2))
        log(
            f"control plane ready in {cp.startup_seconds['total']:.1f} s ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in cp.startup_seconds.items() if k != "total")
            + f"); KUBECONFIG={cp.kubeconfig}"
        )
        yield cp
    finally:
        log("stopping the control plane")
        cp.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the test ground's control plane until Ctrl-C.")
    parser.add_argument("--workdir", type=Path, required=True, help="folder for certificates, data and logs")
    args = parser.parse_args(argv)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM tears down like Ctrl-C

    signal.signal(signal.SIGTERM, interrupt)
    # A shell starting us in the background ignores SIGINT for us; take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with start_control_plane(args.workdir) as cp:
            print(cp.kubeconfig, flush=True)
            log(f"export KUBECONFIG={cp.kubeconfig} PATH={cp.bin_dir}:$PATH; Ctrl-C stops it")
            while True:
                signal.pause()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
