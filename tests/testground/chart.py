"""The operator's Helm chart and kustomize manifests, rendered as Kubernetes objects.

Tests apply what these return to the real apiserver, so the chart the user
installs is the chart the tests run: ``render_chart({"watchNamespaces": ["a"]})``
is ``helm template`` with those values, parsed into dicts.

    objects = render_chart({"replicas": 1})
    control_plane.kubectl("apply", "-f", "-", input=to_yaml(objects))
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from testground.binaries import ensure_tool

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "tritonresnet-operator"
MANIFESTS_DIR = REPO_ROOT / "manifests"
DEFAULT_RELEASE_NAME = "tritonresnet-operator"
DEFAULT_NAMESPACE = "tritonresnet-system"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}{result.stdout}")
    return result.stdout


def _helm(*args: str) -> str:
    return _run([str(ensure_tool("helm")), *args])


def _values_file(values: Mapping[str, Any], folder: Path) -> Path:
    path = folder / "values.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    return path


def parse_objects(text: str) -> list[dict[str, Any]]:
    """Every non-empty document of a YAML stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def to_yaml(objects: Iterable[Mapping[str, Any]]) -> str:
    return yaml.safe_dump_all([dict(obj) for obj in objects], sort_keys=False)


def helm_lint(values: Mapping[str, Any] | None = None) -> str:
    """``helm lint --strict`` of the chart with ``values``; raises on failure."""
    with tempfile.TemporaryDirectory(prefix="chart-values-") as tmp:
        values_file = _values_file(values or {}, Path(tmp))
        return _helm("lint", "--strict", str(CHART_DIR), "--values", str(values_file))


def render_chart(
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    release: str = DEFAULT_RELEASE_NAME,
    include_crds: bool = True,
    chart: Path = CHART_DIR,
    show_only: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """``helm template`` of a chart (ours unless told): its CRDs (first, as Helm installs them)
    and templates, or only the templates in ``show_only`` (paths inside the chart)."""
    with tempfile.TemporaryDirectory(prefix="chart-values-") as tmp:
        argv = [
            "template",
            release,
            str(chart),
            "--namespace",
            namespace,
            "--values",
            str(_values_file(values or {}, Path(tmp))),
        ]
        if include_crds:
            argv.append("--include-crds")
        for template in show_only:
            argv += ["--show-only", template]
        objects = parse_objects(_helm(*argv))
    # Helm orders CRDs first already; keep that promise explicit for callers that apply in order.
    return sorted(objects, key=lambda obj: obj.get("kind") != "CustomResourceDefinition")


def render_kustomize(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize <folder>`` (kustomize as built into kubectl)."""
    return parse_objects(_run([str(ensure_tool("kubectl")), "kustomize", str(folder)]))


def helm_install(
    kubeconfig: Path,
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    release: str = DEFAULT_RELEASE_NAME,
    wait: bool = False,
) -> str:
    """``helm install`` into a real cluster, the way the README does it; returns Helm's
    output, NOTES.txt included."""
    with tempfile.TemporaryDirectory(prefix="chart-values-") as tmp:
        argv = [
            "install",
            release,
            str(CHART_DIR),
            "--namespace",
            namespace,
            "--create-namespace",
            "--kubeconfig",
            str(kubeconfig),
            "--values",
            str(_values_file(values or {}, Path(tmp))),
        ]
        if wait:
            argv.append("--wait")
        return _helm(*argv)


def run_documented(command: str, *extra: str) -> str:
    """Run one command as the README writes it (``helm ...`` or ``kubectl ...``, paths relative
    to the repository root) with the test ground's binaries, plus ``extra`` arguments such as
    ``--kubeconfig``; returns its output, raises on failure."""
    tool, *args = shlex.split(command)
    if tool not in ("helm", "kubectl"):
        raise ValueError(f"not a helm or kubectl command: {command!r}")
    return _run([str(ensure_tool(tool)), *args, *extra], cwd=REPO_ROOT)


def helm_uninstall(
    kubeconfig: Path, *, namespace: str = DEFAULT_NAMESPACE, release: str = DEFAULT_RELEASE_NAME
) -> str:
    return _helm("uninstall", release, "--namespace", namespace, "--kubeconfig", str(kubeconfig))


def of_kind(objects: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [obj for obj in objects if obj.get("kind") == kind]


def operator_service_account(objects: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    """(namespace, name) of the ServiceAccount the operator's Deployment runs as."""
    (deployment,) = of_kind(objects, "Deployment")
    name = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    return deployment["metadata"].get("namespace", DEFAULT_NAMESPACE), name
