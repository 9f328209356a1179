"""What ships: CRD copies in sync, samples valid, the chart's Deployment hardened, Argo CD's check wired.

No cluster: files are read as YAML and the chart is rendered with ``helm
template``. The apiserver-side checks are in tests/integration/test_helm.py
and tests/integration/test_crd_validation.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from testground.chart import CHART_DIR, MANIFESTS_DIR, REPO_ROOT, of_kind, render_chart
from tritonresnet import cli
from tritonresnet.api.spec import parse_spec
from tritonresnet.controller.settings import OPTIONS, Settings, settings_from

CRDS_DIR = REPO_ROOT / "crds"
CRD_FILE = CRDS_DIR / "tritonresnet.io_tritonresnets.yaml"
SAMPLES_DIR = MANIFESTS_DIR / "samples"
ARGOCD_DIR = MANIFESTS_DIR / "argocd"
SYNC_HINT = "run manifests/sync-crds.sh"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def crd_schema() -> dict[str, Any]:
    (crd,) = load_all(CRD_FILE)
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def sample_resources() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['metadata']['name']}", doc)
        for path in sorted(SAMPLES_DIR.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load_all(path)
        if doc["kind"] == "TritonResNet"
    ]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = of_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


# -- CRD copies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "copy_dir", [CHART_DIR / "crds", MANIFESTS_DIR / "base" / "crds"], ids=["helm-chart", "kustomize-base"]
)
def test_crd_copies_are_byte_identical_to_crds_folder(copy_dir: Path) -> None:
    sources = sorted(CRDS_DIR.glob("*.yaml"))
    assert sources, "crds/ holds no CRD"
    for source in sources:
        copy = copy_dir / source.name
        assert copy.is_file(), f"{copy} is missing; {SYNC_HINT}"
        assert copy.read_bytes() == source.read_bytes(), f"{copy} differs from {source}; {SYNC_HINT}"


def test_chart_crds_folder_holds_only_our_crds_and_kopfs_peering_crds() -> None:
    extra = {p.name for p in (CHART_DIR / "crds").glob("*.yaml")} - {p.name for p in CRDS_DIR.glob("*.yaml")}
    assert extra == {"kopf.dev_peerings.yaml"}
    kinds = {doc["spec"]["names"]["kind"] for doc in load_all(CHART_DIR / "crds" / "kopf.dev_peerings.yaml")}
    assert kinds == {"ClusterKopfPeering", "KopfPeering"}


def test_kustomize_base_lists_every_crd_copy() -> None:
    kustomization = yaml.safe_load((MANIFESTS_DIR / "base" / "kustomization.yaml").read_text())
    listed = {Path(r).name for r in kustomization["resources"] if r.startswith("crds/")}
    assert listed == {p.name for p in CRDS_DIR.glob("*.yaml")}


# -- samples -------------------------------------------------------------------------------


def test_samples_cover_the_common_cases() -> None:
    specs = [doc["spec"] for _, doc in sample_resources()]
    assert any(len(s.get("engine", {}).get("targets", [])) >= 2 for s in specs), "mixed GPU fleet"
    assert any(s.get("model", {}).get("format") == "onnx" for s in specs), "onnx format"
    assert any("claimName" in s["repository"] for s in specs), "existing PVC"
    assert any("create" in s["repository"] for s in specs), "created PVC"
    private = [s for s in specs if s["source"].get("endpoint") and s["source"].get("credentialsSecret")]
    assert private, "private S3"
    assert any("autoscaling" in s.get("serving", {}) for s in specs), "autoscaling"


@pytest.mark.parametrize(("name", "resource"), sample_resources(), ids=[n for n, _ in sample_resources()])
def test_sample_matches_the_crd_schema_and_parses(name: str, resource: dict[str, Any]) -> None:
    # The apiserver is the real judge (tests/integration/test_crd_validation.py applies
    # every sample); this catches a typo without a cluster and checks the operator agrees.
    jsonschema.validate(resource, crd_schema())
    parse_spec(resource)


def test_private_s3_sample_secret_has_placeholder_aws_keys_only() -> None:
    secrets = [d for d in load_all(SAMPLES_DIR / "private-s3.yaml") if d["kind"] == "Secret"]
    (secret,) = secrets
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(value.startswith("REPLACE_WITH_") for value in secret["stringData"].values())
    (resource,) = [d for d in load_all(SAMPLES_DIR / "private-s3.yaml") if d["kind"] == "TritonResNet"]
    assert resource["spec"]["source"]["credentialsSecret"] == secret["metadata"]["name"]


def test_samples_kustomization_lists_every_sample() -> None:
    kustomization = yaml.safe_load((SAMPLES_DIR / "kustomization.yaml").read_text())
    files = {p.name for p in SAMPLES_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


# -- chart values and the operator's Deployment ----------------------------------------------------


def test_default_values_match_values_schema() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.validate(yaml.safe_load((CHART_DIR / "values.yaml").read_text()), schema)


@pytest.mark.parametrize(
    "bad",
    [
        {"replicas": "two"},
        {"watchNamespaces": "vision"},
        {"watchNamespaces": ["Not_A_Namespace"]},
        {"operator": {"logFormat": "xml"}},
        {"operator": {"defaultRelease": "25.1"}},
        {"operator": {"verifyIntervalSeconds": 0}},
        {"operator": {"workers": 2.5}},
        {"operator": {"jobTtlSeconds": "3600"}},
        {"image": {"repository": "x", "pullPolicy": "Sometimes"}},
        {"replica": 1},
    ],
)
def test_values_schema_rejects_bad_values(bad: dict[str, Any]) -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    merged = {
        **values,
        **{k: {**values[k], **v} if isinstance(v, dict) and k in values else v for k, v in bad.items()},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(merged, schema)


def test_chart_operator_pod_is_hardened() -> None:
    objects = render_chart({}, include_crds=False)
    (deployment,) = of_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(objects)
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_chart_single_replica_is_standalone_and_never_overlaps() -> None:
    objects = render_chart({}, include_crds=False)
    (deployment,) = of_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    args = operator_container(objects)["args"]
    assert "--standalone" in args and "--all-namespaces" in args
    assert not of_kind(objects, "ClusterKopfPeering")


def test_chart_several_replicas_use_kopf_peering() -> None:
    objects = render_chart({"replicas": 2, "peeringName": "trn-peers"}, include_crds=False)
    args = operator_container(objects)["args"]
    assert "--peering=trn-peers" in args and "--standalone" not in args
    (peering,) = of_kind(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "trn-peers"


def test_chart_namespaced_passes_namespaces_and_peers_per_namespace() -> None:
    objects = render_chart({"watchNamespaces": ["vision", "audio"], "replicas": 2}, include_crds=False)
    args = operator_container(objects)["args"]
    assert [a for a in args if a.startswith("--namespace=")] == ["--namespace=vision", "--namespace=audio"]
    assert "--all-namespaces" not in args
    assert sorted(p["metadata"]["namespace"] for p in of_kind(objects, "KopfPeering")) == ["audio", "vision"]


def test_chart_passes_operator_options_as_settings_env() -> None:
    values = {
        "operator": {
            "builderRegistry": "registry.internal/ml",
            "defaultRelease": "24.12",
            "tritonImage": "registry.internal/tritonserver",
            "logFormat": "plain",
            "workloadImagePullSecrets": ["pull-a", "pull-b"],
        },
        "imagePullSecrets": [{"name": "operator-pull"}],
        "podAnnotations": {"prometheus.io/scrape": "true"},
        "image": {"repository": "registry.internal/tritonresnet-operator", "tag": "0.1.0-rc1"},
    }
    objects = render_chart(values, include_crds=False)
    container = operator_container(objects)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "TRITONRESNET_BUILDER_REGISTRY": "registry.internal/ml",
        "TRITONRESNET_DEFAULT_RELEASE": "24.12",
        "TRITONRESNET_TRITON_IMAGE": "registry.internal/tritonserver",
        "TRITONRESNET_IMAGE_PULL_SECRETS": "pull-a,pull-b",
    }
    assert "--log-format=plain" in container["args"]
    assert container["image"] == "registry.internal/tritonresnet-operator:0.1.0-rc1"
    (deployment,) = of_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "operator-pull"}]
    assert pod["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}


@pytest.mark.parametrize(
    "path",
    [CHART_DIR / "templates" / "deployment.yaml", MANIFESTS_DIR / "base" / "deployment.yaml"],
    ids=["helm-chart", "kustomize-base"],
)
def test_chart_env_names_are_operator_settings(path: Path) -> None:
    # Every TRITONRESNET_* the chart sets (or the base names) must be an option of settings.OPTIONS.
    names = set(re.findall(r"TRITONRESNET_[A-Z_]+", path.read_text()))
    assert names and names <= {option.env for option in OPTIONS}


def test_chart_passes_timings_and_workers_as_settings_env_the_operator_accepts() -> None:
    values = {
        "operator": {
            "resyncSeconds": 30,
            "verifyIntervalSeconds": 120.5,
            "verifyTimeoutSeconds": 10,
            "jobTtlSeconds": 10000000,
            "workers": 16,
        }
    }
    env = {e["name"]: e["value"] for e in operator_container(render_chart(values, include_crds=False))["env"]}
    assert env == {
        "TRITONRESNET_RESYNC_SECONDS": "30",
        "TRITONRESNET_VERIFY_INTERVAL_SECONDS": "120.5",
        "TRITONRESNET_VERIFY_TIMEOUT_SECONDS": "10",
        # Whole numbers stay whole (not 1e+07), which the operator's int parser needs.
        "TRITONRESNET_JOB_TTL_SECONDS": "10000000",
        "TRITONRESNET_WORKERS": "16",
    }
    settings = settings_from(env)
    assert (settings.verify_interval_seconds, settings.job_ttl_seconds, settings.workers) == (
        120.5,
        10**7,
        16,
    )


def test_chart_default_container_runs_the_operator_with_its_defaults_but_json_logs_and_metrics() -> None:
    # The container's args and env, through the real `tritonresnet operator` parser.
    container = operator_container(render_chart({}, include_crds=False))
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    flags = cli.argument_parser().parse_args(["operator", *container["args"]])
    assert settings_from(env, flags) == Settings(
        log_format="json", liveness_endpoint="http://0.0.0.0:8080/healthz", metrics_address="0.0.0.0:8081"
    )
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in container["ports"]


def test_kustomize_base_deployment_matches_chart_default() -> None:
    base = load_all(MANIFESTS_DIR / "base" / "deployment.yaml")
    chart = render_chart({}, include_crds=False)
    base_container = operator_container(base)
    chart_container = operator_container(chart)
    for key in ("args", "securityContext", "livenessProbe", "resources", "volumeMounts"):
        assert base_container[key] == chart_container[key], key
    (base_deployment,) = of_kind(base, "Deployment")
    (chart_deployment,) = of_kind(chart, "Deployment")
    base_pod = base_deployment["spec"]["template"]["spec"]
    chart_pod = chart_deployment["spec"]["template"]["spec"]
    for key in ("securityContext", "volumes"):
        assert base_pod[key] == chart_pod[key], key


# -- the operator image ----------------------------------------------------------------------------


def test_dockerfile_is_pinned_non_root_and_runs_the_operator() -> None:
    text = (REPO_ROOT / "operator" / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    users = re.findall(r"^USER (\S+)$", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert '"--constraint", ' in text or "--constraint /tmp/constraints.txt" in text
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.+)$", text, flags=re.MULTILINE)
    assert json.loads(entrypoint) == ["tritonresnet", "operator"]
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'tritonresnet = "tritonresnet.cli:main"' in pyproject


# -- Argo CD -------------------------------------------------------------------------------------


def test_argocd_config_snippet_embeds_the_health_script() -> None:
    lua = (ARGOCD_DIR / "health-tritonresnet.lua").read_text()
    (config_map,) = load_all(ARGOCD_DIR / "argocd-cm-health.yaml")
    assert config_map["metadata"]["name"] == "argocd-cm"
    key = "resource.customizations.health.tritonresnet.io_TritonResNet"
    assert config_map["data"][key] == lua


def test_argocd_health_script_reads_kstatus_fields_and_returns_known_states() -> None:
    # No Lua interpreter in the test environment: check the script's shape; the
    # behaviour test below runs it when lupa is installed.
    lua = (ARGOCD_DIR / "health-tritonresnet.lua").read_text()
    assert set(re.findall(r'hs\.status = "(\w+)"', lua)) == {"Healthy", "Progressing", "Degraded"}
    for needle in (
        "observedGeneration",
        "metadata.generation",
        '"Ready"',
        '"Reconciling"',
        '"Stalled"',
        '"Degraded"',
        '"Failed"',
    ):
        assert needle in lua, needle
    assert lua.count("return hs") >= 5
    # Balanced blocks: every function/if/for opens one `end`.
    code = re.sub(r"--[^\n]*|\"[^\"]*\"", "", lua)
    opens = len(re.findall(r"\b(function|if|for|while)\b", code)) - len(re.findall(r"\belseif\b", code))
    assert opens == len(re.findall(r"\bend\b", code))


def _health(obj: dict[str, Any]) -> dict[str, str]:
    lupa = pytest.importorskip("lupa", reason="lupa (a Lua runtime) is not installed")
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua = (ARGOCD_DIR / "health-tritonresnet.lua").read_text()
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(lua)
    return {"status": str(result["status"]), "message": str(result["message"])}


def _trn(generation: int, observed: int | None, phase: str, **conditions: str) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            {"type": t, "status": s, "message": f"{t} is {s}", "observedGeneration": generation}
            for t, s in conditions.items()
        ],
    }
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"generation": generation}, "status": status}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"metadata": {"generation": 1}}, "Progressing"),
        (_trn(2, 1, "Ready", Ready="True"), "Progressing"),
        (_trn(2, 2, "Ready", Ready="True", Reconciling="False", Stalled="False"), "Healthy"),
        (_trn(2, 2, "Building", Ready="False", Reconciling="True"), "Progressing"),
        (_trn(2, 2, "Failed", Ready="False", Stalled="True"), "Degraded"),
        (_trn(2, 2, "Degraded", Ready="False", Degraded="True"), "Degraded"),
    ],
)
def test_argocd_health_script_behaviour(obj: dict[str, Any], expected: str) -> None:
    assert _health(obj)["status"] == expected
