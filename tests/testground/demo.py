"""The local demo: from nothing to a classified image through the real operator.

    make demo                 # set up, run, print the top 5, tear down
    make demo DEMO_ARGS=--keep  # leave the cluster up and print how to reach it

Runs on a machine with no cluster and no GPU. What is real and what is
emulated is printed up front; see tests/README.md for the details.

Every run starts from a fresh state: the previous run's folder (default
``.demo/``) is removed first, together with any process a killed earlier run
left behind. Ctrl-C, SIGTERM and a failure all tear down everything the run
started; the exit code is 0 when it got to the end, 130 for Ctrl-C, 143 for
SIGTERM and 1 for a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

from testground import network
from testground.binaries import ensure_binaries
from testground.clusternet import NETWORK_NODES, start_cluster_network
from testground.controlplane import start_control_plane
from testground.models import ensure_models
from testground.nodeagent import DEFAULT_NODES, NodeSpec, start_node_agent
from testground.nodeagent_runtime import kill_registered_groups
from testground.operator_run import (
    OperatorProcess,
    apply_sample,
    install_crd,
    network_placement,
    wait_for_trn,
)
from testground.s3 import start_s3
from testground.waiting import WaitTimeout

REPO = Path(__file__).resolve().parents[2]
DEFAULT_WORKDIR = REPO / ".demo"
SAMPLE_IMAGE = REPO / "operator" / "tritonresnet" / "client" / "data" / "sample.jpg"
#: The nodes the demo's node agent runs; the banner is written from this list.
NODES: tuple[NodeSpec, ...] = DEFAULT_NODES
#: Marks a folder as a demo's (so a second run may remove it) and, locked, as in use.
MARK = ".tritonresnet-demo"
#: ``tritonresnet classify`` as this Python runs it.
CLASSIFY = (sys.executable, "-m", "tritonresnet", "classify")
CLASSIFY_TIMEOUT = 120.0  # seconds, for the one classification
#: How long processes a killed earlier run left get after SIGTERM before SIGKILL
#: (tritonserver takes about 4 s to stop its stubs).
LEFTOVER_GRACE = 10.0


def describe_nodes(nodes: Sequence[NodeSpec]) -> str:
    """``5 nodes (3 NVIDIA-A10G, 1 Tesla-T4, 1 without a GPU)``, counted from the list itself."""
    kinds = Counter(node.gpu_product for node in nodes if node.has_gpu)
    parts = [f"{count} {product}" for product, count in kinds.items()]
    cpu_only = sum(1 for node in nodes if not node.has_gpu)
    if cpu_only:
        parts.append(f"{cpu_only} without a GPU")
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''} ({', '.join(parts)})"


def banner(nodes: Sequence[NodeSpec], network_nodes: Sequence[NodeSpec], no_network: str) -> str:
    """What is real and what is emulated; ``no_network``: why there is no pod network (empty: there is)."""
    if no_network:
        routing = f"            no pod network ({no_network}): Triton is called at a pod's address\n"
    else:
        routing = (
            "            a pod network (network namespaces and veth links) on "
            f"{describe_nodes(network_nodes)},\n"
            "            kube-proxy (nftables) and CoreDNS: Triton is called through its Service's name\n"
        )
    return f"""\
tritonresnet local demo
  real:     kube-apiserver, etcd, controller-manager, scheduler (built from Kubernetes' Go modules),
            the tritonresnet operator, the builder, tritonserver (from nvidia-pytriton), S3 (moto server)
{routing}  emulated: the kubelets of {describe_nodes(nodes)}{"" if no_network else " and the network's"}:
            a node agent runs their pods as local processes;
            Triton's onnxruntime backend (a python-backend stand-in); the model's weights (random)
  not here: TensorRT and GPUs, so the demo serves the model in `format: onnx`
"""


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


# -- signals ------------------------------------------------------------------------


class Interrupts:
    """SIGINT and SIGTERM both become one KeyboardInterrupt, so both tear down alike.

    Only the first signal raises. A second one must not cut the teardown short
    (that is what leaves processes behind), and it comes often: `timeout make demo`
    signals the whole process group and make passes SIGTERM on to us as well.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.shielded = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        # Also replaces SIG_IGN, which a shell starting us in the background sets for SIGINT.
        signal.signal(signal.SIGINT, self._handle)

    def shield(self) -> None:
        """The teardown has begun: from now on a signal is noted, never raised (raised
        inside a component's stop, it would leave that component's children running)."""
        self.shielded = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None or self.shielded:
            self.signum = self.signum or signum
            say(f"{signal.Signals(signum).name}: already tearing down, it ends by itself")
            return
        self.signum = signum
        raise KeyboardInterrupt

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


# -- the state folder ---------------------------------------------------------------


def _ancestors() -> set[int]:
    """This process and the ones that started it (they may carry the same environment)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def processes_using(workdir: Path) -> list[int]:
    """Processes whose TMPDIR is ``workdir``'s: every process a demo run starts inherits it
    (its node agent's pods too), so this finds what a killed run left behind and nothing else."""
    marker = f"TMPDIR={workdir / 'tmp'}".encode()
    mine = _ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def stop_leftovers(workdir: Path) -> int:
    """SIGTERM what an earlier run in ``workdir`` left running, SIGKILL it after a grace period.

    SIGTERM first, to each process: a tritonserver stopped so removes its backend stubs'
    shared-memory regions, which a SIGKILL of its group would leave in /dev/shm.
    """
    pids = processes_using(workdir)
    found = len(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + LEFTOVER_GRACE
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]
    # Pods of an agent that was killed outright, by process group, as the agent does on start.
    kill_registered_groups(workdir / "nodes" / "run")
    for pid in processes_using(workdir):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return found


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@contextlib.contextmanager
def fresh_workdir(workdir: Path) -> Iterator[Path]:
    """``workdir`` emptied of an earlier run's state and locked for this run.

    A folder that is not a demo's (no mark, not the default ``.demo/``) is never
    removed; a folder another run holds (``--keep`` in another shell) is refused.
    """
    mark = workdir / MARK
    if workdir.exists() and any(workdir.iterdir()):
        if not mark.exists() and workdir != DEFAULT_WORKDIR:
            raise SystemExit(f"{workdir} is not empty and not a demo's folder: pass another --workdir")
        if mark.exists():
            with mark.open("r+") as held:
                try:
                    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise SystemExit(
                        f"another demo is running in {workdir} ({held.read().strip()}): "
                        "stop it, or pass another --workdir"
                    ) from None
        stopped = stop_leftovers(workdir)
        if stopped:
            say(f"stopped {stopped} process(es) a killed earlier run left behind")
        shutil.rmtree(workdir)
        say(f"removed the previous run's state in {workdir}")
    workdir.mkdir(parents=True, exist_ok=True)
    lock: IO[str] = mark.open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        yield workdir
    finally:
        lock.close()


def contain_in(workdir: Path) -> None:
    """Point the temporary and kubectl cache folders of this process and all it starts
    (pods included: the node agent passes TMPDIR on) into ``workdir``, so a run leaves
    no file outside it, and :func:`processes_using` can tell its processes."""
    for variable, folder in (("TMPDIR", "tmp"), ("KUBECACHEDIR", "kube-cache")):
        path = workdir / folder
        path.mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(path)


# -- the run ------------------------------------------------------------------------


def wait_ready(operator: OperatorProcess, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    """Print each phase change until Ready; exit with the status and operator log on timeout."""
    last = ""

    def ready(trn: dict[str, Any]) -> bool:
        nonlocal last
        status = trn.get("status") or {}
        line = f"{status.get('phase', 'Pending')}: {status.get('message') or 'waiting for the operator'}"
        if line != last:
            say(line)
            last = line
        return bool(status.get("phase") == "Ready")

    try:
        return wait_for_trn(operator.cp, namespace, name, ready, "Ready", timeout, operator)
    except WaitTimeout as error:
        raise SystemExit(str(error)) from None  # a message for the user, not a traceback


def run(args: argparse.Namespace, workdir: Path, interrupts: Interrupts) -> None:
    started = time.monotonic()
    say("control-plane binaries (built once, then cached)")
    ensure_binaries(log=lambda m: print("    " + m, flush=True))
    say(f"ResNet ONNX ({args.model}, random weights, made with CPU torch once, then cached)")
    onnx = ensure_models().path(args.model)
    namespace, name = "vision", "resnet50"
    with contextlib.ExitStack() as stack:
        try:
            say("starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler")
            cp = stack.enter_context(start_control_plane(workdir / "control-plane"))
            say(f"starting the node agent for {describe_nodes(NODES)}, then S3")
            agent = stack.enter_context(start_node_agent(cp, workdir / "nodes", NODES))
            say(f"nodes Ready: {', '.join(agent.node_names)}")
            s3 = stack.enter_context(start_s3(workdir / "s3"))
            uri = s3.upload(onnx, f"{args.model}/model.onnx")
            say(f"uploaded {onnx.name} to {uri}")
            why_not = network.available()
            net = None
            if why_not:
                say(f"no pod network ({why_not}): Triton's pods stay on loopback addresses")
            else:
                say(
                    "starting the pod network: kube-proxy, CoreDNS, "
                    f"the node agent for {describe_nodes(NETWORK_NODES)}"
                )
                net = stack.enter_context(start_cluster_network(cp, workdir / "pod-network", NETWORK_NODES))
                say(f"pod network up: pods in {net.net.spec.pod_cidr}, Services routed by kube-proxy")
            install_crd(cp)
            operator = OperatorProcess(cp, workdir)
            if net is not None:  # the operator, on this machine, reaches a Service by its ClusterIP
                operator.env["TRITONRESNET_VERIFY_SERVICE"] = "cluster-ip"
            stack.callback(operator.kill, signal.SIGTERM)
            operator.start()
            say(f"operator running (log: {operator.log_path})")
            cp.create_namespace(namespace)
            serving = network_placement(net.node.name) if net is not None else None
            apply_sample(cp, namespace, s3, uri, name=name, serving=serving)
            say(f"applied TritonResNet {namespace}/{name} (format: onnx); waiting for Ready")
            trn = wait_ready(operator, namespace, name, args.timeout)
            # A user's client reaches the Service by its name; without a pod network, a pod's endpoint.
            url = f"{name}.{namespace}.svc:8000" if net is not None else trn["status"]["endpoints"][0]
            say(f"Ready in {time.monotonic() - started:.0f} s; classifying {SAMPLE_IMAGE.name} at {url}")
            argv = [*CLASSIFY, str(SAMPLE_IMAGE), "--url", url, "--model", "resnet50", "--top", "5"]
            print("$ tritonresnet classify " + " ".join(argv[len(CLASSIFY) :]), flush=True)
            if net is None:
                subprocess.run(argv, check=True)
            else:
                # From a pod-like namespace whose resolv.conf names the cluster's DNS, as a pod would.
                with net.client_netns(0, namespace) as client:
                    subprocess.run(network.in_netns(client, argv), check=True, timeout=CLASSIFY_TIMEOUT)
            print("(random weights: the labels are real ImageNet names, the guesses are not meaningful)")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tritonresnet",
                    "status",
                    name,
                    "-n",
                    namespace,
                    "--kubeconfig",
                    str(cp.kubeconfig),
                ],
                check=False,
            )
            if args.keep:
                say(
                    f"left running. In another shell: export KUBECONFIG={cp.kubeconfig}"
                    f" KUBECACHEDIR={os.environ['KUBECACHEDIR']} PATH={cp.bin_dir}:$PATH;"
                    " kubectl get trn -A. Ctrl-C tears it all down."
                )
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        signal.pause()
        except KeyboardInterrupt:
            interrupts.shield()
            say(f"{interrupts.name}: tearing down what this run started")
            raise
        except BaseException:
            interrupts.shield()
            say("failed: tearing down what this run started")
            raise
        interrupts.shield()
        say("tearing down")
    say("done")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help="state and logs, emptied at start (default: .demo/)",
    )
    parser.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    parser.add_argument("--model", default="resnet50", choices=("resnet50", "resnet18"))
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for Ready")
    args = parser.parse_args(argv)

    interrupts = Interrupts()
    interrupts.install()
    print(banner(NODES, NETWORK_NODES, network.available()), flush=True)
    try:
        with fresh_workdir(args.workdir.resolve()) as workdir:
            contain_in(workdir)
            try:
                run(args, workdir, interrupts)
            except Exception:
                traceback.print_exc()
                say(f"the demo failed; the logs are under {workdir}")
                return 1
    except KeyboardInterrupt:
        return interrupts.exit_code
    # Also when a signal came during the teardown of a run that got to the end (or with
    # --keep, whose end is Ctrl-C): the run did what it should.
    return 0


if __name__ == "__main__":
    sys.exit(main())
