"""A newcomer's path through the README works command by command.

The README marks each shell block that a newcomer runs and that can run on the
test ground with an HTML comment right before its fence::

    <!-- readme-test: local expect="STATUS: deployed" -->
    ```sh
    helm install ...
    ```

``expect="..."`` (any number, optional) is text the block's output must
contain. This module extracts the marked blocks and runs them in README order,
each with ``bash -euo pipefail``, so a failing command anywhere in a block
fails the test with the README line it came from.

What the test provides, as a newcomer's shell would have it:

* a fresh-clone-like working folder (the repository's top-level entries
  linked into a scratch folder), so files the blocks write stay out of the
  checkout, plus ``model.onnx`` (the test ground's ResNet-18: the README's
  name ``resnet50`` is only a name, and ResNet-18 keeps one Triton replica
  small on a shared machine);
* ``KUBECONFIG`` for the test ground's admin, ``PATH`` with its kubectl and
  helm and this virtualenv's ``tritonresnet``;
* ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``MODEL_URI`` and
  ``S3_ENDPOINT`` pointing at the test ground's S3 (moto), where the same
  ONNX file was uploaded: the variables the README asks the reader to set.

The README's install block runs the operator the way a cluster does: ``helm
install`` puts its Deployment on the emulated CPU node, where the node agent
runs the operator image as its ServiceAccount. So this test must be the only
operator: the session's admin ``operator`` fixture (pytest may have started
it for an earlier module, or starts it now) is stopped while the blocks run
and started again afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from testground.controlplane import ControlPlane
from testground.models import OnnxModels
from testground.nodeagent import NodeAgent
from testground.operator_run import OperatorProcess
from testground.readme_blocks import LOCAL, ReadmeBlock, marked_blocks
from testground.s3 import S3Server
from testground.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CRD = REPO / "crds" / "tritonresnet.io_tritonresnets.yaml"

#: Blocks marked for the local test ground (the pod network's run in e2e/test_network.py).
GROUND = LOCAL
#: The namespaces the README's blocks create; they must be free before the walk.
README_NAMESPACES = ("vision", "tritonresnet-system")
HELM_RELEASE = "tritonresnet-operator"
#: Per block. The README's own waits are longer (a real cluster builds for
#: minutes); on the test ground apply -> Ready takes about 20 s.
BLOCK_TIMEOUT_SECONDS = 420.0

# -- the extraction itself, without a cluster ----------------------------------------


def test_marked_blocks_are_extracted_in_order_with_their_expectations() -> None:
    text = (
        "# Title\n"
        "```sh\nnot marked\n```\n"
        '<!-- readme-test: local expect="a b" expect=c -->\n'
        "```sh\necho one\necho two\n```\n"
        "<!-- readme-test: local -->\n"
        "```bash\necho three\n```\n"
    )
    first, second = marked_blocks(text)
    assert first == ReadmeBlock(line=7, ground="local", code="echo one\necho two\n", expects=("a b", "c"))
    assert second == ReadmeBlock(line=12, ground="local", code="echo three\n", expects=())


@pytest.mark.parametrize(
    "text, problem",
    [
        ("<!-- readme-test: local -->\n\n```sh\necho\n```\n", "not followed by a ```sh fence"),
        ("<!-- readme-test: local -->\n```yaml\na: 1\n```\n", "not followed by a ```sh fence"),
        ("<!-- readme-test: local -->\n```sh\necho\n", "never closes"),
        ("<!-- readme-test: local expext=x -->\n```sh\necho\n```\n", "unknown readme-test option"),
        ("<!-- readme-test: -->\n```sh\necho\n```\n", "names no test ground"),
        ("<!-- readme-test: locl -->\n```sh\necho\n```\n", "unknown test ground 'locl'"),
    ],
)
def test_a_mistyped_marker_is_an_error_not_a_skipped_block(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        marked_blocks(text)


def test_readme_marks_the_newcomers_path_for_the_test_ground() -> None:
    """The walk covers install, credentials, a model, Ready, status, classify, the
    tutorial's layout and request, Triton's own clients, the mixed GPU fleet, the workstation
    commands and clean-up; dropping a marker from one of them fails here."""
    blocks = [block for block in marked_blocks(README.read_text()) if block.ground == GROUND]
    assert blocks
    code = "\n".join(block.code for block in blocks)
    for command in (
        "helm install tritonresnet-operator helm/tritonresnet-operator -n tritonresnet-system"
        " --create-namespace",
        "kubectl -n vision create secret generic s3-credentials",
        "kind: TritonResNet",
        "kubectl explain tritonresnet.spec --recursive",
        "kubectl -n vision wait trn/resnet50 --for=condition=Ready",
        "kubectl -n vision get trn -o wide",
        "kubectl -n vision describe trn resnet50",
        "kubectl -n vision scale trn resnet50 --replicas=",
        "tritonresnet status resnet50 -n vision",
        "kubectl get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.compute.major",
        "gpuKinds: Auto",
        "tritonresnet status fleet -n vision",
        "tritonresnet classify",
        "--grpc",
        # coming from the tutorial: its layout, then its own request
        '"maxBatchSize":0',
        "class_count=1000",
        # Triton's own clients: what image_client reads, over both protocols
        'get_model_config("resnet50", as_json=True)',
        "tritonresnet inspect model.onnx",
        "tritonresnet build -f",
        "helm uninstall tritonresnet-operator",
    ):
        assert command in code, f"no marked README block runs {command!r}"


# -- kubectl explain, as the README shows it ---------------------------------------------


def explain_sections(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object with fields under ``schema``, by its ``kubectl explain`` path; kubectl
    walks through arrays (``spec.engine.targets.tolerations``), so this does too."""
    node = schema.get("items", schema) if schema.get("type") == "array" else schema
    if node.get("properties"):
        yield path, node
        for name, child in node["properties"].items():
            yield from explain_sections(child, f"{path}.{name}")


def _words(text: str) -> str:
    """kubectl wraps and indents descriptions: compare word by word."""
    return " ".join(text.split())


@pytest.mark.cluster
def test_kubectl_explain_shows_every_spec_field_with_the_crds_description(crd: ControlPlane) -> None:
    """``kubectl explain tritonresnet.spec --recursive`` lists every field (names and types
    only: that is what kubectl prints with --recursive), and ``kubectl explain`` of each
    section prints each of its fields with the CRD's description, as for a built-in kind."""
    (version,) = yaml.safe_load(CRD.read_text())["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    listed = crd.kubectl("explain", "tritonresnet.spec", "--recursive").stdout
    names = {line.split("\t")[0].strip() for line in listed.splitlines() if "\t<" in line}
    problems, fields = [], 0
    for path, section in explain_sections(spec, "tritonresnet.spec"):
        shown = _words(crd.kubectl("explain", path).stdout)
        if _words(section.get("description", "")) not in shown:
            problems.append(f"{path}: its own description")
        for name, field in section["properties"].items():
            fields += 1
            if name not in names:
                problems.append(f"{path}.{name}: not listed by --recursive")
            description = _words(field.get("description", ""))
            if not description or description not in shown:
                problems.append(f"{path}.{name}: description not shown")
    assert fields > 40, f"only {fields} fields found in the CRD's spec schema"
    assert not problems, "\n".join(problems)


# -- the walk on the test ground -------------------------------------------------------


def running_operator_pods(cp: ControlPlane) -> list[str]:
    pods = json.loads(cp.kubectl("get", "pods", "--all-namespaces", "-o", "json").stdout)["items"]
    return [
        f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        for pod in pods
        if (pod.get("status") or {}).get("phase") in ("Pending", "Running")
        and any("tritonresnet-operator" in c.get("image", "") for c in pod["spec"]["containers"])
    ]


def wait_until_gone(cp: ControlPlane, namespace: str, timeout: float = 180.0) -> None:
    """An earlier test's namespace of the same name may still be terminating."""
    wait_for(
        lambda: cp.kubectl("get", "namespace", namespace, check=False).returncode != 0,
        f"namespace {namespace} to be gone (the README walk needs it free)",
        timeout,
        every=1.0,
    )


@pytest.fixture
def sole_operator(request: pytest.FixtureRequest, cluster: ControlPlane) -> Iterator[ControlPlane]:
    """Stop the session's admin operator while the README's own operator runs; start it again after."""
    session_operator: OperatorProcess = request.getfixturevalue("operator")
    session_operator.kill(signal.SIGTERM)
    try:
        assert not running_operator_pods(cluster), "another operator is running in the cluster"
        for namespace in README_NAMESPACES:
            wait_until_gone(cluster, namespace)
        yield cluster
    finally:
        session_operator.start()


@dataclass
class Newcomer:
    """A shell in a fresh clone, with the test ground's cluster, tools and S3 configured."""

    workdir: Path
    env: dict[str, str]

    def run(self, block: ReadmeBlock) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_SECONDS,
        )


def fresh_clone(folder: Path) -> Path:
    """The repository's tracked top-level entries, linked: paths like helm/ and
    manifests/ resolve as in a clone, and whatever the blocks write stays here."""
    folder.mkdir()
    for entry in REPO.iterdir():
        if entry.name.startswith(".") or entry.name.endswith(".egg-info"):
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


@pytest.fixture
def newcomer(sole_operator: ControlPlane, s3: S3Server, onnx_models: OnnxModels, tmp_path: Path) -> Newcomer:
    cp = sole_operator
    model = onnx_models.path("resnet18")
    workdir = fresh_clone(tmp_path / "tritonresnet")
    (workdir / "model.onnx").symlink_to(model)
    helm_home = tmp_path / "helm"
    env = cp.env() | {
        "PATH": os.pathsep.join(
            [str(cp.bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
        ),
        "HOME": str(tmp_path / "home"),
        "HELM_CACHE_HOME": str(helm_home / "cache"),
        "HELM_CONFIG_HOME": str(helm_home / "config"),
        "HELM_DATA_HOME": str(helm_home / "data"),
        "AWS_ACCESS_KEY_ID": s3.env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": s3.env["AWS_SECRET_ACCESS_KEY"],
        "MODEL_URI": s3.upload(model, "readme/resnet50/model.onnx"),
        "S3_ENDPOINT": s3.endpoint,
    }
    (tmp_path / "home").mkdir()
    return Newcomer(workdir, env)


def _text(output: str | bytes | None) -> str:
    """A timed-out run's partial output (bytes even in text mode)."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def diagnostics(cp: ControlPlane, agent: NodeAgent) -> str:
    """What a reader of a failed run needs: the resources, and the in-cluster operator's log."""
    parts = [
        cp.kubectl("get", "trn,jobs,pods,pvc", "-A", "-o", "wide", check=False).stdout,
        cp.kubectl("get", "trn", "-A", "-o", "jsonpath={.items[*].status}", check=False).stdout,
    ]
    listed = cp.kubectl("get", "pods", "-n", "tritonresnet-system", "-o", "json", check=False).stdout
    pods = json.loads(listed or '{"items": []}')["items"]
    for pod in pods:
        log = agent.pod_log("tritonresnet-system", pod["metadata"]["name"], "operator")
        parts.append(f"--- operator pod {pod['metadata']['name']} log (tail) ---\n{log[-4000:]}")
    return "\n".join(parts)


def clean_up(cp: ControlPlane, env: dict[str, str]) -> None:
    """Whatever a failed walk left behind (the README's last block does this when all went well)."""
    helm = cp.bin_dir / "helm"
    subprocess.run(
        [str(helm), "uninstall", HELM_RELEASE, "-n", "tritonresnet-system", "--ignore-not-found", "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    for namespace in README_NAMESPACES:
        cp.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--timeout=120s", check=False)


@pytest.mark.cluster
@pytest.mark.triton
@pytest.mark.slow
def test_readme_local_blocks_run_in_order_on_the_test_ground(
    newcomer: Newcomer, sole_operator: ControlPlane, node_agent: NodeAgent
) -> None:
    cp = sole_operator
    blocks = [block for block in marked_blocks(README.read_text()) if block.ground == GROUND]
    try:
        for block in blocks:
            try:
                result = newcomer.run(block)
            except subprocess.TimeoutExpired as timeout:
                pytest.fail(
                    f"{block.describe()}\ndid not finish in {BLOCK_TIMEOUT_SECONDS:.0f} s; output so far:\n"
                    f"{_text(timeout.stdout)}{_text(timeout.stderr)}\n{diagnostics(cp, node_agent)}"
                )
            output = result.stdout + result.stderr
            if result.returncode != 0:
                pytest.fail(
                    f"{block.describe()}\nexited {result.returncode}:\n{output}\n"
                    f"{diagnostics(cp, node_agent)}"
                )
            missing = [text for text in block.expects if text not in output]
            assert not missing, f"{block.describe()}\nprinted none of {missing}:\n{output}"
    finally:
        clean_up(cp, newcomer.env)
