"""Control-plane, etcd and helm binaries built from pinned Go modules.

There is no kube-apiserver in any package registry we can rely on and no
container engine to run kind, so the test ground compiles the real components
from their Go modules, the way envtest ships real binaries for Go operators.

The Go tools modules live next to this file (``tools/<name>/go.mod``), one per
upstream project so their dependency graphs never fight. ``--regenerate``
rewrites them from the pinned releases (Kubernetes' ``replace`` lines come from
that release's own go.mod, never typed by hand). Built binaries are cached
under the user's cache directory keyed by the versions, so only the first run
on a machine pays for the build (the control plane about 11 minutes on two cores
with empty Go caches, 2026-12-03; the other parts below 14 - 19 minutes more,
beside the tests).

Set ``TRITONRESNET_TESTGROUND_BIN`` (or envtest's ``KUBEBUILDER_ASSETS``) to a
folder that already holds the binaries to skip the build entirely.

kwok (``ensure_kwok``) is built the same way but only when a benchmark asks
for it: the test suite never runs it, so a fresh machine's first ``make test``
does not pay for it. It has a cache folder of its own, keyed by its version.

Karpenter (``ensure_karpenter``: its core with the kwok cloud provider, from
``sigs.k8s.io/karpenter``) is built the same way, on demand, the first time
the autoscaler test runs; a cache folder of its own, keyed by its version.

KEDA (``ensure_keda``: its operator and its external-metrics API server, from
``github.com/kedacore/keda/v2``) is built the same way, on demand, the first
time the autoscaling test runs; a cache folder of its own, keyed by its
version. Its CRDs come from the same module (``keda_module_dir``). Its
admission webhooks (``cmd/webhooks``) are not built: they only validate
ScaledObjects, and the test ground's API server already checks them against
the CRDs' schemas.

The pod network's parts (``ensure_network_binaries``, see testground.network)
are also fetched on demand, the first time a test asks for the network:
kube-proxy from the same Kubernetes module, a CoreDNS with only the plugins
the test ground uses (``tools/coredns/main.go``), and the ``nft`` command
kube-proxy's nftables mode runs, from Debian's packages (``apt-get download``
and ``dpkg -x``, no installation: nothing on the machine changes). One cache
folder, keyed by all three versions.

Prometheus (``ensure_prometheus``, see testground.prometheus) comes from Debian's
package the same way, on demand, into a cache folder keyed by the package's version.
prometheus-operator's CRDs (``prometheus_operator_module_dir``) come from its pinned Go
module, downloaded (not built) into Go's module cache the first time they are asked for.

The suite's parts (``BUILD_PARTS``: the control plane, the pod network's, Prometheus,
Karpenter, KEDA) are made in that order by one background process
(``start_background_build``): ``make test`` starts it before pip fills the venv, and
pytest starts one for what a session needs when none runs. Every part still has its
own lock, so a test asking for a part waits only for that one, and builds it itself
when no one else does.

    python -m testground.binaries              # build or reuse, print the folder
    python -m testground.binaries --kwok       # the same for kwok, print its path
    python -m testground.binaries --karpenter  # the same for Karpenter, print its path
    python -m testground.binaries --keda       # the same for KEDA, print its folder
    python -m testground.binaries --network    # the pod network's binaries, print their folder
    python -m testground.binaries --all        # everything the suite runs, one part after another
    python -m testground.binaries --background --while-pid PID
                                               # the same in a process of its own (make test), while PID lives
    python -m testground.binaries --prometheus # Debian's prometheus, print its path
    python -m testground.binaries --regenerate # rewrite tools/*/go.mod
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.21.4"
#: kwok's controller fakes kubelets (nodes and pod lifecycles) for the operator-only benchmark.
KWOK_VERSION = "v0.8.0"
KWOK_MODULE = "sigs.k8s.io/kwok"
KWOK_PACKAGE = "sigs.k8s.io/kwok/cmd/kwok"

#: Karpenter's core with its kwok cloud provider, for the autoscaler test (``ensure_karpenter``).
#: v1.14.1 is the newest release whose go.mod asks for no newer Go than the machines have (1.26.8).
KARPENTER_VERSION = "v1.14.1"
KARPENTER_MODULE = "sigs.k8s.io/karpenter"
KARPENTER_PACKAGE = "sigs.k8s.io/karpenter/kwok"
#: KEDA's operator and metrics API server, for the autoscaling test (``ensure_keda``).
KEDA_VERSION = "v2.21.0"
KEDA_MODULE = "github.com/kedacore/keda/v2"
#: binary name -> package; the binary names are KEDA's own (its Makefile's bin/).
KEDA_COMMANDS = {"keda": f"{KEDA_MODULE}/cmd/operator", "keda-adapter": f"{KEDA_MODULE}/cmd/adapter"}
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
#: Built from the same module, only for the pod network (``ensure_network_binaries``).
NETWORK_KUBE_COMMANDS = ("kube-proxy",)
COREDNS_VERSION = "v1.15.0"
COREDNS_MODULE = "github.com/coredns/coredns"
#: Debian packages giving ``nft`` (its other libraries are part of a Debian base system).
NFTABLES_PACKAGES = ("nftables=1.0.6-2+deb12u2", "libnftables1=1.0.6-2+deb12u2", "libnftnl11=1.2.4-2")
#: prometheus-operator's module, for its CRDs only (nothing of it is compiled). The proxy serves
#: this release of the main module; later ones only as the split-off API module.
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
#: Prometheus, a static Go binary: its package alone (the rest of its Depends is the web UI's JavaScript).
PROMETHEUS_PACKAGES = ("prometheus=2.42.0+ds-5+deb12u1",)
NETWORK_BINARIES = ("kube-proxy", "coredns", "nftables/usr/sbin/nft")
ALL_BINARIES = (*KUBE_COMMANDS, "etcd", "helm")

TOOLS_DIR = Path(__file__).resolve().parent / "tools"
ENV_OVERRIDES = ("TRITONRESNET_TESTGROUND_BIN", "KUBEBUILDER_ASSETS")

# Packages whose version variables kubectl and the servers report.
_VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CGO_ENABLED="0", GOFLAGS="-mod=mod", GOTOOLCHAIN="local")
    return env


def _go(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(["go", *args], cwd=cwd, env=_go_env(), check=True, capture_output=True, text=True)
    return proc.stdout


def user_cache_dir() -> Path:
    """The project's folder in the user's cache (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tritonresnet"


def _tools_cache() -> Path:
    """Where the built and fetched tools live, each in a folder keyed by its versions."""
    return user_cache_dir() / "testground"


def cache_dir() -> Path:
    key = f"kubernetes-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_helm-{HELM_VERSION}"
    return _tools_cache() / key


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() and os.access(folder / name, os.X_OK) for name in ALL_BINARIES)


# -- regenerating the tools modules ------------------------------------------------


def _init_module(folder: Path, module: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _go(["mod", "init", module], folder)


def _regenerate_kubernetes() -> None:
    folder = TOOLS_DIR / "kubernetes"
    _init_module(folder, "tritonresnet.io/testground/tools/kubernetes")
    info = json.loads(_go(["mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"], folder))
    staging_version = "v0" + KUBERNETES_VERSION[2:]  # v1.36.3 -> v0.36.3
    edits = [f"-require=k8s.io/kubernetes@{KUBERNETES_VERSION}"]
    # k8s.io/kubernetes points its staging modules at ./staging, which is not in
    # the module zip: replace each one with its published release instead.
    for line in Path(info["GoMod"]).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("./staging/"):
            edits.append(f"-replace={parts[0]}={parts[0]}@{staging_version}")
    edits += [f"-tool=k8s.io/kubernetes/cmd/{cmd}" for cmd in (*KUBE_COMMANDS, *NETWORK_KUBE_COMMANDS)]
    _go(["mod", "edit", *edits], folder)
    _go(["mod", "tidy"], folder)


def _regenerate_simple(name: str, module: str, version: str, tool: str) -> None:
    folder = TOOLS_DIR / name
    _init_module(folder, f"tritonresnet.io/testground/tools/{name}")
    _go(["mod", "edit", f"-require={module}@{version}", f"-tool={tool}"], folder)
    _go(["mod", "tidy"], folder)


def _regenerate_coredns() -> None:
    # Our own main package (main.go) picks the plugins: keep it, renew go.mod and go.sum.
    folder = TOOLS_DIR / "coredns"
    for name in ("go.mod", "go.sum"):
        (folder / name).unlink(missing_ok=True)
    _go(["mod", "init", "tritonresnet.io/testground/tools/coredns"], folder)
    _go(["mod", "edit", f"-require={COREDNS_MODULE}@{COREDNS_VERSION}"], folder)
    _go(["mod", "tidy"], folder)


def regenerate() -> None:
    _regenerate_kubernetes()
    _regenerate_coredns()
    _regenerate_simple("etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION, "go.etcd.io/etcd/server/v3")
    _regenerate_simple("helm", "helm.sh/helm/v3", HELM_VERSION, "helm.sh/helm/v3/cmd/helm")
    _regenerate_simple("kwok", KWOK_MODULE, KWOK_VERSION, KWOK_PACKAGE)
    _regenerate_karpenter()
    _regenerate_prometheus_operator()
    _regenerate_keda()


def _regenerate_prometheus_operator() -> None:
    # No package of it is built: go.mod requires the module, go.sum pins its files' hash.
    folder = TOOLS_DIR / "prometheus-operator"
    _init_module(folder, "tritonresnet.io/testground/tools/prometheus-operator")
    _go(["mod", "edit", f"-require={PROMETHEUS_OPERATOR_MODULE}@{PROMETHEUS_OPERATOR_VERSION}"], folder)
    _go(["mod", "download", f"{PROMETHEUS_OPERATOR_MODULE}@{PROMETHEUS_OPERATOR_VERSION}"], folder)


def _regenerate_keda() -> None:
    folder = TOOLS_DIR / "keda"
    _init_module(folder, "tritonresnet.io/testground/tools/keda")
    info = json.loads(_go(["mod", "download", "-json", f"{KEDA_MODULE}@{KEDA_VERSION}"], folder))
    edits = [f"-require={KEDA_MODULE}@{KEDA_VERSION}"]
    # A dependent module does not inherit KEDA's replace lines: take them from the
    # release's own go.mod (local paths excepted, they are not in the module zip).
    for line in Path(info["GoMod"]).read_text().splitlines():
        parts = line.removeprefix("replace").split()
        if "=>" not in parts or parts[-1].startswith("./") or parts[-1].startswith("../"):
            continue
        arrow = parts.index("=>")
        old, new = "@".join(parts[:arrow]), "@".join(parts[arrow + 1 :])
        edits.append(f"-replace={old}={new}")
    edits += [f"-tool={package}" for package in KEDA_COMMANDS.values()]
    _go(["mod", "edit", *edits], folder)
    _go(["mod", "tidy"], folder)


def _regenerate_karpenter() -> None:
    # Our instance-type file lives there too: keep it, renew go.mod and go.sum.
    folder = TOOLS_DIR / "karpenter"
    for name in ("go.mod", "go.sum"):
        (folder / name).unlink(missing_ok=True)
    _go(["mod", "init", "tritonresnet.io/testground/tools/karpenter"], folder)
    _go(
        ["mod", "edit", f"-require={KARPENTER_MODULE}@{KARPENTER_VERSION}", f"-tool={KARPENTER_PACKAGE}"],
        folder,
    )
    _go(["mod", "tidy"], folder)


# -- building -----------------------------------------------------------------------


def _kube_ldflags() -> str:
    major, minor = KUBERNETES_VERSION[1:].split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in _VERSION_PACKAGES:
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _build_plan() -> list[tuple[str, str, str, str]]:
    """(binary, tools module, package, ldflags) for every binary, in the order they are built.

    helm and kubectl first: the unit tests that render the chart need only them (``ensure_tool``),
    so on a fresh machine they run while the servers are still being compiled.
    """
    helm_ld = f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
    kube = {
        cmd: (cmd, "kubernetes", f"k8s.io/kubernetes/cmd/{cmd}", _kube_ldflags()) for cmd in KUBE_COMMANDS
    }
    return [
        ("helm", "helm", "helm.sh/helm/v3/cmd/helm", helm_ld),
        kube["kubectl"],
        ("etcd", "etcd", "go.etcd.io/etcd/server/v3", "-s -w"),
        *(kube[cmd] for cmd in KUBE_COMMANDS if cmd != "kubectl"),
    ]


def _network_build_plan() -> list[tuple[str, str, str, str]]:
    plan = [
        (cmd, "kubernetes", f"k8s.io/kubernetes/cmd/{cmd}", _kube_ldflags()) for cmd in NETWORK_KUBE_COMMANDS
    ]
    coredns_ld = f"-s -w -X {COREDNS_MODULE}/coremain.GitCommit={COREDNS_VERSION}"
    plan.append(("coredns", "coredns", "tritonresnet.io/testground/tools/coredns", coredns_ld))
    return plan


def build(  # type: ignore[no-untyped-def]
    target: Path, log=print, plan: list[tuple[str, str, str, str]] | None = None, nice: bool = False
) -> None:
    """Build ``plan``'s binaries into ``target``; ``nice`` lowers the compiler's priority, for a big
    build that may run next to tests."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="testground-tools-") as tmp:
        # Build from a copy so `go` never rewrites the committed go.mod/go.sum.
        work = Path(tmp) / "tools"
        shutil.copytree(TOOLS_DIR, work)
        for binary, module, package, ldflags in plan or _build_plan():
            if (target / binary).is_file():
                continue
            started = time.monotonic()
            log(f"testground: building {binary} from {package} (first run only) ...")
            partial = target / f".{binary}.partial"
            argv = ["go", "build", "-trimpath", f"-ldflags={ldflags}", "-o", str(partial), package]
            subprocess.run(
                ["nice", "-n", "10", *argv] if nice else argv,
                cwd=work / module,
                env=_go_env(),
                check=True,
            )
            partial.rename(target / binary)
            log(f"testground: built {binary} in {time.monotonic() - started:.0f} s")


def _given_folder(log=print) -> Path | None:  # type: ignore[no-untyped-def]
    """The folder ``ENV_OVERRIDES`` name, when it holds every binary."""
    for var in ENV_OVERRIDES:
        if os.environ.get(var):
            folder = Path(os.environ[var])
            if _complete(folder):
                return folder
            log(f"testground: {var}={folder} lacks some of {', '.join(ALL_BINARIES)}; building instead")
    return None


def ensure_binaries(log=print) -> Path:  # type: ignore[no-untyped-def]
    """Return a folder holding every binary, building it once if needed."""
    return _given_folder(log) or _made_once(cache_dir(), _complete, lambda folder: build(folder, log))


def ensure_tool(name: str, log=print) -> Path:  # type: ignore[no-untyped-def]
    """The path of one binary of ``ensure_binaries``' folder (``helm``, ``kubectl``) as soon as it is
    there: while another process builds the folder, not only once the whole of it is built; and
    when nobody does, only this one is built."""
    given = _given_folder(log)
    if given is not None:
        return given / name
    plan = [step for step in _build_plan() if step[0] == name]
    if not plan:
        raise ValueError(f"{name} is not one of {', '.join(ALL_BINARIES)}")

    def usable(folder: Path) -> bool:
        return os.access(folder / name, os.X_OK)

    return _made_once(cache_dir(), usable, lambda folder: build(folder, log, plan)) / name


def _made_once(
    folder: Path,
    complete: Callable[[Path], bool],
    make: Callable[[Path], None],
) -> Path:
    """``folder`` once ``complete``, calling ``make`` at most once per machine, also when several
    processes ask at the same time (a background build and a test, say).

    While another process holds the folder's lock ``complete`` is asked again every second, so a
    caller that needs only part of the folder (``ensure_tool``) goes on as soon as its part is in
    place; every binary appears whole, by a rename (``build``).
    """
    if complete(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if complete(folder):
                    return folder
                time.sleep(1.0)
        if not complete(folder):
            make(folder)
    return folder


# -- kwok, for benchmarks only ------------------------------------------------------


def kwok_cache_dir() -> Path:
    return _tools_cache() / f"kwok-{KWOK_VERSION}"


def ensure_kwok(log=print) -> Path:  # type: ignore[no-untyped-def]
    """Return the path of a kwok binary built from its pinned module, building it once if needed."""
    folder = kwok_cache_dir()
    binary = folder / "kwok"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.is_file():
            with tempfile.TemporaryDirectory(prefix="testground-kwok-") as tmp:
                # A copy, as in build(): go must not rewrite the committed go.mod/go.sum.
                work = Path(tmp) / "kwok"
                shutil.copytree(TOOLS_DIR / "kwok", work)
                started = time.monotonic()
                log(f"testground: building kwok from {KWOK_PACKAGE}@{KWOK_VERSION} (first run only) ...")
                partial = folder / ".kwok.partial"
                subprocess.run(
                    ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(partial), KWOK_PACKAGE],
                    cwd=work,
                    env=_go_env(),
                    check=True,
                )
                partial.rename(binary)
                log(f"testground: built kwok in {time.monotonic() - started:.0f} s")
    return binary


def kwok_module_dir() -> Path:
    """kwok's module source in the Go module cache (its stock Stage files live under kustomize/stage)."""
    return _module_dir("kwok", KWOK_MODULE, KWOK_VERSION)


def _module_dir(tools: str, module: str, version: str) -> Path:
    with tempfile.TemporaryDirectory(prefix=f"testground-{tools}-") as tmp:
        work = Path(tmp) / tools
        shutil.copytree(TOOLS_DIR / tools, work)
        info = json.loads(_go(["mod", "download", "-json", f"{module}@{version}"], work))
    return Path(info["Dir"])


# -- Karpenter, for the autoscaler test only ------------------------------------------


def karpenter_cache_dir() -> Path:
    return _tools_cache() / f"karpenter-{KARPENTER_VERSION}"


def _karpenter_complete(folder: Path) -> bool:
    return (folder / "karpenter").is_file() and os.access(folder / "karpenter", os.X_OK)


def ensure_karpenter(log=print) -> Path:  # type: ignore[no-untyped-def]
    """The path of Karpenter (core plus its kwok cloud provider) built from its pinned module, once."""
    ldflags = f"-s -w -X sigs.k8s.io/karpenter/pkg/operator.Version={KARPENTER_VERSION}"
    plan = [("karpenter", "karpenter", KARPENTER_PACKAGE, ldflags)]
    folder = _made_once(karpenter_cache_dir(), _karpenter_complete, lambda target: build(target, log, plan))
    return folder / "karpenter"


def karpenter_module_dir() -> Path:
    """Karpenter's module source in the Go module cache: its CRDs (pkg/apis/crds, kwok/apis/crds)."""
    return _module_dir("karpenter", KARPENTER_MODULE, KARPENTER_VERSION)


# -- KEDA, for the autoscaling test only ----------------------------------------------


def keda_cache_dir() -> Path:
    return _tools_cache() / f"keda-{KEDA_VERSION}"


def _keda_complete(folder: Path) -> bool:
    return all((folder / name).is_file() and os.access(folder / name, os.X_OK) for name in KEDA_COMMANDS)


def ensure_keda(log=print) -> Path:  # type: ignore[no-untyped-def]
    """A folder with KEDA's operator (``keda``) and metrics API server (``keda-adapter``), built once."""
    ldflags = f"-s -w -X {KEDA_MODULE}/version.Version={KEDA_VERSION}"
    plan = [(binary, "keda", package, ldflags) for binary, package in KEDA_COMMANDS.items()]
    return _made_once(keda_cache_dir(), _keda_complete, lambda target: build(target, log, plan, nice=True))


def keda_module_dir() -> Path:
    """KEDA's module source in the Go module cache: its CRDs (config/crd/bases)."""
    return _module_dir("keda", KEDA_MODULE, KEDA_VERSION)


# -- the pod network's parts, on demand ---------------------------------------------


def network_cache_dir() -> Path:
    nft = NFTABLES_PACKAGES[0].split("=", 1)[1]
    key = f"network-kubernetes-{KUBERNETES_VERSION}_coredns-{COREDNS_VERSION}_nftables-{nft}"
    return _tools_cache() / key


def _network_complete(folder: Path) -> bool:
    return all((folder / name).is_file() and os.access(folder / name, os.X_OK) for name in NETWORK_BINARIES)


def nft_env(folder: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) with the unpacked ``nft`` first on PATH and its libraries found."""
    out = dict(os.environ if env is None else env)
    root = folder / "nftables"
    out["PATH"] = os.pathsep.join(filter(None, [str(root / "usr" / "sbin"), out.get("PATH")]))
    libs = [str(path) for path in sorted((root / "usr" / "lib").glob("*-linux-gnu"))]
    out["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [*libs, out.get("LD_LIBRARY_PATH")]))
    return out


def fetch_debian_packages(  # type: ignore[no-untyped-def]
    target: Path,
    packages: Sequence[str],
    check: Sequence[str],
    env: Callable[[], dict[str, str]] | None = None,
    log=print,
) -> str:
    """Unpack Debian's ``packages`` (``name=version``) into ``target``, then run ``check`` there.

    ``apt-get download`` and ``dpkg-deb -x``: nothing is installed and nothing on the machine
    changes. The files appear at ``target`` whole or not at all (a partial folder next to it is
    renamed), and are removed again if ``check`` (argv, run with what ``env`` returns) fails.
    ``env`` is called once the files are in place: an environment that names their folders
    (``nft_env`` finds the library folder by looking) can only be made then. Returns what
    ``check`` printed, for the log.
    """
    started = time.monotonic()
    log(f"testground: fetching {', '.join(packages)} (first run only) ...")
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="testground-deb-") as tmp:
        os.chmod(tmp, 0o755)  # apt's download user must be able to write there
        subprocess.run(["apt-get", "download", "-q", *packages], cwd=tmp, check=True, capture_output=True)
        for deb in sorted(Path(tmp).glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    checked = subprocess.run(list(check), env=env() if env else None, capture_output=True, text=True)
    if checked.returncode != 0:
        shutil.rmtree(target)
        raise RuntimeError(f"{check[0]} from {', '.join(packages)} does not run: {checked.stderr.strip()}")
    output = (checked.stdout or checked.stderr).strip()
    log(f"testground: unpacked {output.splitlines()[0]} in {time.monotonic() - started:.0f} s")
    return output


def ensure_network_binaries(log=print) -> Path:  # type: ignore[no-untyped-def]
    """A folder with kube-proxy, coredns and nftables/ (``nft_env``), made once per machine."""

    def make(folder: Path) -> None:
        if not (folder / "nftables" / "usr" / "sbin" / "nft").is_file():
            nft = folder / "nftables"
            fetch_debian_packages(nft, NFTABLES_PACKAGES, ["nft", "--version"], lambda: nft_env(folder), log)
        build(folder, log, _network_build_plan())

    return _made_once(network_cache_dir(), _network_complete, make)


# -- Prometheus, for the metrics tests ------------------------------------------------


def prometheus_operator_module_dir() -> Path:
    """prometheus-operator's module source in the Go module cache (downloaded once, kept by
    version there): its CRDs are under ``example/prometheus-operator-crd``."""
    return _module_dir("prometheus-operator", PROMETHEUS_OPERATOR_MODULE, PROMETHEUS_OPERATOR_VERSION)


def prometheus_cache_dir() -> Path:
    version = PROMETHEUS_PACKAGES[0].split("=", 1)[1]
    return _tools_cache() / f"prometheus-{version}"


def _prometheus_binary(folder: Path) -> Path:
    return folder / "deb" / "usr" / "bin" / "prometheus"


def ensure_prometheus(log=print) -> Path:  # type: ignore[no-untyped-def]
    """The path of Debian's ``prometheus`` binary, unpacked (never installed) once per machine."""

    def complete(folder: Path) -> bool:
        return os.access(_prometheus_binary(folder), os.X_OK)

    def make(folder: Path) -> None:
        fetch_debian_packages(
            folder / "deb", PROMETHEUS_PACKAGES, [str(_prometheus_binary(folder)), "--version"], log=log
        )

    return _prometheus_binary(_made_once(prometheus_cache_dir(), complete, make))


# -- the suite's builds, in the order it needs them ------------------------------------

#: Every part the test suite runs, in the order a build of them all makes them. tests/conftest.py
#: orders the tests the same way, so on a fresh machine each test waits at most for the part it
#: needs while the parts after it build (``start_background_build``). The control plane first,
#: at normal priority; the others at the lowest, taking only what the tests leave idle.
BUILD_PARTS = ("control-plane", "network", "prometheus", "karpenter", "keda")
BUILD_LOG_NAME = "background-build.log"


def _make_part(part: str, log=print) -> None:  # type: ignore[no-untyped-def]
    makers: dict[str, Callable[[], object]] = {
        "control-plane": lambda: ensure_binaries(log),
        "network": lambda: ensure_network_binaries(log),
        "prometheus": lambda: (ensure_prometheus(log), prometheus_operator_module_dir()),
        "karpenter": lambda: ensure_karpenter(log),
        "keda": lambda: ensure_keda(log),
    }
    makers[part]()


def part_built(part: str) -> bool:
    """Whether ``part`` (one of ``BUILD_PARTS``) is in the cache already."""
    checks: dict[str, Callable[[], bool]] = {
        "control-plane": lambda: _given_folder(log=lambda _: None) is not None or _complete(cache_dir()),
        "network": lambda: _network_complete(network_cache_dir()),
        "prometheus": lambda: os.access(_prometheus_binary(prometheus_cache_dir()), os.X_OK),
        "karpenter": lambda: _karpenter_complete(karpenter_cache_dir()),
        "keda": lambda: _keda_complete(keda_cache_dir()),
    }
    return checks[part]()


def ensure_all(parts: Sequence[str] = BUILD_PARTS, log=print) -> None:  # type: ignore[no-untyped-def]
    """Make ``parts`` (of ``BUILD_PARTS``) one after the other, in that order.

    One at a time: each ``go build`` already compiles on every core, and two at once would
    compile the packages they share twice (kube-proxy's with the control plane's, say) before
    either could take them from Go's build cache.
    """
    for part in sorted(parts, key=BUILD_PARTS.index):
        make_part_started = time.monotonic()
        if part != "control-plane" and os.nice(0) < 19:
            os.nice(19 - os.nice(0))  # the tests run beside: only their idle time from here on
        _make_part(part, log)
        log(f"testground: {part} ready ({time.monotonic() - make_part_started:.0f} s)")


def _builder_lock() -> Path:
    return _tools_cache() / ".builder.lock"


def build_log() -> Path:
    """Where a background build (``start_background_build``) writes what it does."""
    return _tools_cache() / BUILD_LOG_NAME


def _builder_running() -> bool:
    lock_path = _builder_lock()
    if not lock_path.exists():
        return False
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


def start_background_build(
    parts: Sequence[str], while_pid: int
) -> subprocess.Popen[bytes] | None:
    """Build the missing ones of ``parts`` in a process of its own, while process ``while_pid``
    lives (``make test``'s make, or pytest), writing to ``build_log()``.

    None when nothing is missing or a background build already runs (``make test`` starts one
    before the venv exists; the session's then finds it). The process leads a process group of
    its own, so stopping it by the group (``stop_background_build``) stops its ``go`` too.
    Whoever needs a part meanwhile waits for it on that part's lock (``_made_once``).
    """
    missing = [part for part in BUILD_PARTS if part in parts and not part_built(part)]
    if not missing or _builder_running():
        return None
    log = build_log()
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "testground.binaries", "--parts", ",".join(missing)]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*argv, "--while-pid", str(while_pid)],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_background_build(build: subprocess.Popen[bytes]) -> None:
    """Stop a build ``start_background_build`` started, with its ``go`` children, if it still runs."""
    if build.poll() is not None:
        return
    os.killpg(build.pid, signal.SIGTERM)
    try:
        build.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(build.pid, signal.SIGKILL)
        build.wait()


def _stop_when_gone(pid: int) -> None:
    """Stop this process's group (itself and its ``go``) once process ``pid`` has ended."""

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.killpg(os.getpgrp(), signal.SIGTERM)
                return
            except PermissionError:
                pass  # alive, someone else's
            time.sleep(1.0)

    threading.Thread(target=watch, name="while-pid", daemon=True).start()


def _run_parts(parts: Sequence[str], log) -> int:  # type: ignore[no-untyped-def]
    """The background build's body: ``parts`` in order, each failure logged and the rest still made
    (the test needing a failed part builds it again itself and fails with its error)."""
    _builder_lock().parent.mkdir(parents=True, exist_ok=True)
    with open(_builder_lock(), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("testground: another background build runs; it makes these parts")
            return 0
        failed = []
        for part in parts:
            try:
                ensure_all([part], log)
            except (OSError, subprocess.CalledProcessError, RuntimeError) as error:
                log(f"testground: {part} failed: {error}")
                failed.append(part)
        return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--regenerate", action="store_true", help="rewrite tools/*/go.mod from the pinned releases"
    )
    parser.add_argument(
        "--kwok", action="store_true", help="build or reuse kwok (benchmarks only) and print its path"
    )
    parser.add_argument(
        "--karpenter",
        action="store_true",
        help="build or reuse Karpenter (autoscaler test) and print its path",
    )
    parser.add_argument(
        "--keda", action="store_true", help="build or reuse KEDA (autoscaling test) and print its folder"
    )
    parser.add_argument(
        "--network", action="store_true", help="build or fetch the pod network's parts and print their folder"
    )
    parser.add_argument("--all", action="store_true", help="build or reuse all the suite runs, in order")
    parser.add_argument(
        "--parts", help=f"comma-separated, of {', '.join(BUILD_PARTS)}: build or reuse those, in that order"
    )
    parser.add_argument(
        "--background",
        action="store_true",
        help="build what --parts names (default: all) in a process of its own and return at once",
    )
    parser.add_argument(
        "--while-pid", type=int, help="stop building (and stop go) when this process has ended"
    )
    parser.add_argument(
        "--prometheus", action="store_true", help="fetch or reuse Debian's prometheus and print its path"
    )
    args = parser.parse_args(argv)
    # A build stopped with SIGTERM (the suite stops its background build so) unwinds: the go
    # process is waited for and the temporary copy of the tools modules is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.regenerate:
        regenerate()
    to_stderr = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    parts = args.parts.split(",") if args.parts else list(BUILD_PARTS)
    unknown = sorted(set(parts) - set(BUILD_PARTS))
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)} (known: {', '.join(BUILD_PARTS)})")
    if args.background:
        started = start_background_build(parts, args.while_pid or os.getppid())
        if started is None:
            print("testground: the test ground's binaries are built, or a build of them runs")
        else:
            print(f"testground: building {', '.join(parts)} in the background (log: {build_log()})")
        return 0
    if args.while_pid:
        _stop_when_gone(args.while_pid)
    if args.kwok:
        print(ensure_kwok(log=to_stderr))
        return 0
    if args.karpenter:
        print(ensure_karpenter(log=to_stderr))
        return 0
    if args.keda:
        print(ensure_keda(log=to_stderr))
        return 0
    if args.network:
        print(ensure_network_binaries(log=to_stderr))
        return 0
    if args.prometheus:
        print(ensure_prometheus(log=to_stderr))
        return 0
    if args.parts:
        return _run_parts(parts, to_stderr)
    if args.all:
        ensure_all(log=to_stderr)
        return 0
    print(ensure_binaries(log=to_stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
