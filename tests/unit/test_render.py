"""render: whole Kubernetes objects from a parsed spec, checked field by field without a cluster."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from tritonresnet.api import names
from tritonresnet.api.spec import Target, TritonResNetSpec, parse_spec
from tritonresnet.controller import render
from tritonresnet.controller.children import Served
from tritonresnet.controller.settings import Settings
from tritonresnet_builder.contract import NON_RETRYABLE_EXIT_CODES, BuildArgs, PublishArgs, parse_args

META = {"name": "resnet50", "namespace": "vision", "uid": "0b1e4c6a-0000-4000-8000-000000000001"}
SETTINGS = Settings(builder_registry="registry.example/ml", default_release="25.01")
LOCKED = Settings(
    builder_registry="registry.example/ml",
    default_release="25.01",
    triton_control_key="an operator key of forty characters, ok!",
)
ENGINE_KEY = "0123456789abcdef"
VERSION_KEY = "fedcba9876543210"


def served(version: int, release: str = "25.01") -> Served:
    """A published version as the Deployment pins it (no tensors: rendering does not read them)."""
    return Served(version, VERSION_KEY, (), (), release)


def parse(**spec: Any) -> TritonResNetSpec:
    base: dict[str, Any] = {
        "source": {"uri": "s3://models/r50/model.onnx"},
        "repository": {"claimName": "models"},
    }
    base.update(spec)
    return parse_spec({"metadata": dict(META), "spec": base})


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def container(obj: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(obj)["containers"]
    result: dict[str, Any] = only
    return result


def mount(obj: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [m for m in container(obj)["volumeMounts"] if m["name"] == name]
    result: dict[str, Any] = found
    return result


def volume(obj: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [v for v in pod_spec(obj)["volumes"] if v["name"] == name]
    result: dict[str, Any] = found
    return result


GPU_TARGET = Target(
    "a10g", {"nvidia.com/gpu.product": "NVIDIA-A10G"}, ({"key": "dedicated", "operator": "Exists"},)
)


def gpu_build(spec: TritonResNetSpec | None = None) -> dict[str, Any]:
    return render.build_job(META, spec or parse(), GPU_TARGET, ENGINE_KEY, SETTINGS)


# -- every object -------------------------------------------------------------------------


def all_objects() -> list[dict[str, Any]]:
    spec = parse(
        serving={"resources": {"requests": {"cpu": "2"}}, "autoscaling": {"maxReplicas": 3}},
        repository={"create": {}},
    )
    objects = [
        gpu_build(spec),
        render.publish_job(META, spec, [ENGINE_KEY], VERSION_KEY, [1], SETTINGS),
        render.triton_deployment(META, spec, served(2), SETTINGS),
        render.service(META),
        render.pod_disruption_budget(META),
        render.hpa(META, spec),
        render.models_pvc(META, spec),
        render.triton_control_secret(META, LOCKED),
        render.triton_network_policy(META, LOCKED),
    ]
    return [o for o in objects if o is not None]


def test_every_object_is_owned_by_the_resource_as_its_controller() -> None:
    for obj in all_objects():
        assert obj["metadata"]["namespace"] == "vision"
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "tritonresnet.io/v1alpha1",
                "kind": "TritonResNet",
                "name": "resnet50",
                "uid": META["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ], obj["kind"]
        labels = obj["metadata"]["labels"]
        assert labels[names.LABEL_INSTANCE] == "resnet50"
        assert labels[names.LABEL_MANAGED_BY] == "tritonresnet-operator"


def test_renderers_accept_the_whole_resource_or_its_metadata() -> None:
    whole = {
        "apiVersion": "tritonresnet.io/v1alpha1",
        "kind": "TritonResNet",
        "metadata": dict(META),
        "spec": {},
    }
    spec = parse()
    assert render.build_job(whole, spec, GPU_TARGET, ENGINE_KEY, SETTINGS) == gpu_build(spec)
    assert render.triton_deployment(whole, spec, served(1), SETTINGS) == render.triton_deployment(
        META, spec, served(1), SETTINGS
    )
    assert render.service(whole) == render.service(META)


def test_renderers_do_not_mutate_or_share_their_inputs() -> None:
    spec = parse(
        serving={"tolerations": [{"key": "t", "operator": "Exists"}], "nodeSelector": {"pool": "gpu"}}
    )
    snapshot = copy.deepcopy(spec)
    deployment = render.triton_deployment(META, spec, served(1), SETTINGS)
    build = render.build_job(META, spec, spec.build_targets()[0], ENGINE_KEY, SETTINGS)
    pod_spec(deployment)["tolerations"][0]["key"] = "changed"
    pod_spec(deployment)["nodeSelector"]["pool"] = "changed"
    container(deployment)["resources"]["limits"]["nvidia.com/gpu"] = "8"
    pod_spec(build)["tolerations"][0]["key"] = "changed"
    assert spec == snapshot


# -- build Job -------------------------------------------------------------------------------


def test_build_job_is_named_and_labelled_from_its_engine_key() -> None:
    job = gpu_build()
    assert job["apiVersion"] == "batch/v1"
    assert job["kind"] == "Job"
    assert job["metadata"]["name"] == "resnet50-build-0123456789"
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels[names.LABEL_COMPONENT] == "build"
        assert labels[names.LABEL_ENGINE_KEY] == ENGINE_KEY
        assert labels[names.LABEL_TARGET] == "a10g"


def test_build_job_args_round_trip_through_the_contract() -> None:
    spec = parse(
        source={
            "uri": "s3://models/r50/model.onnx",
            "sha256": "c" * 64,
            "endpoint": "http://minio:9000",
            "externalData": [{"location": "model.onnx.data", "sha256": "d" * 64}],
        },
        engine={
            "precision": "fp32",
            "maxBatchSize": 16,
            "workspaceMiB": 2048,
            "accuracy": {"minTop5AgreementPercent": 80, "maxAbsDifference": 0.25},
        },
    )
    args = parse_args(container(gpu_build(spec))["args"])
    assert isinstance(args, BuildArgs)
    assert args.repository == render.REPOSITORY_MOUNT
    assert args.engine_key == ENGINE_KEY
    assert args.source == spec.source.contract()
    assert args.engine.precision == "fp32"
    assert args.engine.max_batch_size == 16
    assert args.engine.optimum_batch() == 8
    assert args.engine.workspace_mib == 2048
    assert args.engine.accuracy == spec.engine.accuracy
    assert args.result_file == container(gpu_build(spec))["terminationMessagePath"] == "/dev/termination-log"


def test_build_job_never_retries_non_retryable_exit_codes_and_ignores_disruptions() -> None:
    policy = gpu_build()["spec"]["podFailurePolicy"]["rules"]
    fail = [r for r in policy if r["action"] == "FailJob"]
    ignore = [r for r in policy if r["action"] == "Ignore"]
    assert fail[0]["onExitCodes"]["operator"] == "In"
    assert fail[0]["onExitCodes"]["containerName"] == container(gpu_build())["name"]
    assert sorted(fail[0]["onExitCodes"]["values"]) == sorted(int(c) for c in NON_RETRYABLE_EXIT_CODES)
    assert ignore == [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]


def test_build_job_deadline_is_on_the_pod_so_waiting_for_a_node_does_not_count() -> None:
    job = gpu_build(parse(engine={"buildTimeoutSeconds": 1200}))
    assert "activeDeadlineSeconds" not in job["spec"]
    assert pod_spec(job)["activeDeadlineSeconds"] == 1200
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 3
    assert job["spec"]["ttlSecondsAfterFinished"] == SETTINGS.job_ttl_seconds
    assert container(job)["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_build_job_for_tensorrt_asks_for_a_gpu_on_the_target_nodes() -> None:
    job = gpu_build()
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod_spec(job)["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A10G"}
    assert pod_spec(job)["tolerations"] == [
        {"key": "dedicated", "operator": "Exists"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert container(job)["image"] == "registry.example/ml/tritonresnet-builder:25.01"


def test_build_job_for_onnx_is_one_cpu_build() -> None:
    spec = parse(model={"format": "onnx"}, serving={"release": "24.12"})
    (target,) = spec.build_targets()
    job = render.build_job(META, spec, target, ENGINE_KEY, SETTINGS)
    assert "nvidia.com/gpu" not in container(job)["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in container(job)["resources"].get("requests", {})
    assert pod_spec(job)["tolerations"] == []
    assert pod_spec(job)["nodeSelector"] == {}
    assert container(job)["image"].endswith("tritonresnet-builder:24.12")


def test_build_job_mounts_the_repository_read_write_with_its_sub_path() -> None:
    job = gpu_build(parse(repository={"claimName": "shared", "subPath": "team-a/models"}))
    assert mount(job, render.REPOSITORY_VOLUME) == {
        "name": render.REPOSITORY_VOLUME,
        "mountPath": "/models",
        "readOnly": False,
        "subPath": "team-a/models",
    }
    assert volume(job, render.REPOSITORY_VOLUME)["persistentVolumeClaim"] == {"claimName": "shared"}


def test_build_job_gets_credentials_from_the_secret_only_when_one_is_named() -> None:
    assert [e["name"] for e in container(gpu_build())["env"]] == ["HOME"]
    spec = parse(source={"uri": "s3://models/r50/model.onnx", "credentialsSecret": "s3-creds"})
    env = {e["name"]: e for e in container(gpu_build(spec))["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("s3-creds", key)
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["optional"] is False


def test_builder_pods_run_unprivileged() -> None:
    job = gpu_build()
    assert pod_spec(job)["securityContext"]["runAsNonRoot"] is True
    assert pod_spec(job)["automountServiceAccountToken"] is False
    security = container(job)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_image_pull_secrets_come_from_the_settings() -> None:
    settings = Settings(image_pull_secrets=("mirror",))
    job = render.build_job(META, parse(), GPU_TARGET, ENGINE_KEY, settings)
    assert pod_spec(job)["imagePullSecrets"] == [{"name": "mirror"}]
    assert "imagePullSecrets" not in pod_spec(gpu_build())


# -- publish Job ----------------------------------------------------------------------------


def test_publish_job_args_round_trip_and_it_needs_no_gpu() -> None:
    spec = parse(
        serving={
            "dynamicBatching": {"maxQueueDelayMicroseconds": 250, "preferredBatchSizes": [8, 4]},
            "instanceCount": 2,
        },
        repository={"claimName": "models", "retainVersions": 5},
    )
    job = render.publish_job(META, spec, ["b" * 16, "a" * 16], VERSION_KEY, [3, 1], SETTINGS)
    assert job["metadata"]["name"] == "resnet50-publish-fedcba9876"
    assert job["metadata"]["labels"][names.LABEL_VERSION_KEY] == VERSION_KEY
    args = parse_args(container(job)["args"])
    assert args == PublishArgs(
        repository="/models",
        model_name="resnet50",
        version_key=VERSION_KEY,
        engine_keys=("a" * 16, "b" * 16),
        max_batch_size=8,
        max_queue_delay_us=250,
        preferred_batch_sizes=(4, 8),
        instance_count=2,
        keep_versions=5,
        protect_versions=(1, 3),
    )
    assert "nvidia.com/gpu" not in container(job)["resources"]["limits"]
    assert "nodeSelector" not in pod_spec(job)
    assert job["spec"]["podFailurePolicy"] == gpu_build()["spec"]["podFailurePolicy"]


# -- Triton -------------------------------------------------------------------------------


def triton(spec: TritonResNetSpec | None = None, version: int = 3) -> dict[str, Any]:
    return render.triton_deployment(META, spec or parse(), served(version), SETTINGS)


def test_triton_loads_exactly_the_pinned_version_explicitly() -> None:
    main = container(triton())
    assert main["image"] == "nvcr.io/nvidia/tritonserver:25.01-py3"
    assert main["command"] == ["tritonserver"]
    assert main["args"] == [
        "--model-repository=/models",
        "--model-control-mode=explicit",
        "--load-model=resnet50",
        "--model-config-name=v3",
        "--strict-readiness=true",
        "--exit-on-error=false",
        "--log-verbose=0",
    ]
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }


def test_triton_readiness_and_startup_ask_for_the_pinned_model_version_liveness_for_the_server() -> None:
    main = container(triton(version=3))
    model_ready = {"path": "/v2/models/resnet50/versions/3/ready", "port": "http"}
    assert main["startupProbe"]["httpGet"] == model_ready
    assert main["readinessProbe"]["httpGet"] == model_ready
    assert main["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # The startup probe must outlast a slow model load before liveness may restart the pod.
    assert main["startupProbe"]["periodSeconds"] * main["startupProbe"]["failureThreshold"] >= 300


def test_triton_readiness_follows_the_model_name_and_version_served() -> None:
    main = container(triton(parse(model={"name": "classifier_v2.onnx-x"}), version=12))
    assert main["readinessProbe"]["httpGet"]["path"] == "/v2/models/classifier_v2.onnx-x/versions/12/ready"


def test_triton_mounts_the_repository_read_only() -> None:
    deployment = triton(parse(repository={"claimName": "models", "subPath": "team-a"}))
    assert mount(deployment, render.REPOSITORY_VOLUME)["readOnly"] is True
    assert mount(deployment, render.REPOSITORY_VOLUME)["subPath"] == "team-a"
    assert volume(deployment, render.REPOSITORY_VOLUME)["persistentVolumeClaim"] == {
        "claimName": "models",
        "readOnly": True,
    }


def test_triton_requests_a_gpu_and_tolerates_gpu_nodes_by_default() -> None:
    deployment = triton(parse(serving={"nodeSelector": {"pool": "a10g"}}))
    assert container(deployment)["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert pod_spec(deployment)["nodeSelector"] == {"pool": "a10g"}
    assert render.GPU_TOLERATION in pod_spec(deployment)["tolerations"]


def test_triton_without_a_gpu_does_not_tolerate_gpu_nodes() -> None:
    deployment = triton(parse(serving={"resources": {"requests": {"cpu": "1"}}}))
    assert container(deployment)["resources"] == {"requests": {"cpu": "1"}}
    assert pod_spec(deployment)["tolerations"] == []


def test_triton_rolls_out_without_downtime_and_spreads_over_nodes() -> None:
    deployment = triton(parse(serving={"replicas": 4}))
    assert deployment["spec"]["replicas"] == 4
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    (term,) = pod_spec(deployment)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == names.selector_labels(
        "resnet50", "triton"
    )


def test_triton_selector_is_stable_across_versions_and_pods_carry_the_version() -> None:
    v1, v2 = triton(version=1), triton(version=2)
    assert v1["spec"]["selector"] == v2["spec"]["selector"]
    selector = v1["spec"]["selector"]["matchLabels"]
    pod_labels = v2["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert pod_labels[names.LABEL_MODEL_VERSION] == "2"
    annotations = v1["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8002"


def test_triton_deployment_refuses_a_version_below_one() -> None:
    with pytest.raises(ValueError):
        triton(version=0)


# -- Service, PDB, HPA, PVC ---------------------------------------------------------------------


def test_service_exposes_http_grpc_and_metrics_of_the_triton_pods() -> None:
    svc = render.service(META)
    assert svc["metadata"]["name"] == "resnet50"
    assert svc["spec"]["selector"] == names.selector_labels("resnet50", "triton")
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {"http": (8000, "http"), "grpc": (8001, "grpc"), "metrics": (8002, "metrics")}


def test_pdb_allows_one_pod_down_and_does_not_block_drains_of_unhealthy_pods() -> None:
    pdb = render.pod_disruption_budget(META)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"] == names.selector_labels("resnet50", "triton")
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_hpa_scales_the_resource_itself_on_cpu() -> None:
    spec = parse(
        serving={
            "resources": {"requests": {"cpu": "2"}},
            "autoscaling": {"minReplicas": 2, "maxReplicas": 6, "metric": {"targetAverageUtilization": 60}},
        }
    )
    hpa = render.hpa(META, spec)
    assert hpa is not None
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "tritonresnet.io/v1alpha1",
        "kind": "TritonResNet",
        "name": "resnet50",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}},
        }
    ]


def test_hpa_on_queue_time_reads_tritons_metric_per_pod() -> None:
    spec = parse(
        serving={
            "autoscaling": {
                "maxReplicas": 4,
                "metric": {"type": "queueTime", "targetQueueTimeMicroseconds": 500},
            }
        }
    )
    hpa = render.hpa(META, spec)
    assert hpa is not None
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "nv_inference_queue_duration_us"},
                "target": {"type": "AverageValue", "averageValue": "500"},
            },
        }
    ]


def test_hpa_is_none_without_autoscaling() -> None:
    assert render.hpa(META, parse()) is None


def test_models_pvc_only_when_the_operator_creates_the_claim() -> None:
    assert render.models_pvc(META, parse()) is None
    pvc = render.models_pvc(META, parse(repository={"create": {"size": "50Gi", "storageClassName": "nfs"}}))
    assert pvc is not None
    assert pvc["metadata"]["name"] == "resnet50-models"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": "50Gi"}},
        "storageClassName": "nfs",
    }
    default_class = render.models_pvc(META, parse(repository={"create": {}}))
    assert default_class is not None
    assert "storageClassName" not in default_class["spec"]


def test_pods_mount_the_created_claim_by_its_rendered_name() -> None:
    spec = parse(repository={"create": {}})
    claim = volume(triton(spec), render.REPOSITORY_VOLUME)["persistentVolumeClaim"]["claimName"]
    assert claim == names.pvc_name("resnet50")


def test_triton_image_and_annotations_follow_the_served_version_not_the_spec() -> None:
    deployment = render.triton_deployment(
        META, parse(serving={"release": "25.02"}), served(4, "24.12"), SETTINGS
    )
    assert container(deployment)["image"] == "nvcr.io/nvidia/tritonserver:24.12-py3"
    annotations = deployment["metadata"]["annotations"]
    assert annotations["tritonresnet.io/model-version"] == "4"
    assert annotations["tritonresnet.io/release"] == "24.12"
    assert annotations["tritonresnet.io/version-key"] == VERSION_KEY


# -- locked down: the control credential and who may reach Triton ---------------------------


def test_the_control_token_is_an_hmac_of_the_uid_one_per_resource_and_key() -> None:
    token = render.triton_control_token("key-one", "uid-a")
    assert token == render.triton_control_token("key-one", "uid-a")  # pure: every pass, every restart
    assert len(token) == 64 and int(token, 16) >= 0
    others = {
        render.triton_control_token("key-one", "uid-b"),
        render.triton_control_token("key-two", "uid-a"),
    }
    assert token not in others and len(others) == 2
    assert render.control_token(META, LOCKED) == render.triton_control_token(
        LOCKED.triton_control_key, META["uid"]
    )
    assert render.control_token(META, SETTINGS) == ""  # no key: no credential


def test_locked_triton_restricts_the_control_apis_to_the_header_from_its_secret() -> None:
    deployment = render.triton_deployment(META, parse(), served(3), LOCKED)
    main = container(deployment)
    restricted = (
        "model-repository,shared-memory,trace,logging:tritonresnet-control=$(TRITONRESNET_CONTROL_TOKEN)"
    )
    assert main["args"][-2:] == [
        f"--http-restricted-api={restricted}",
        f"--grpc-restricted-protocol={restricted}",
    ]
    secret = render.triton_control_secret(META, LOCKED)
    assert secret is not None
    assert main["env"] == [
        {
            "name": "TRITONRESNET_CONTROL_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "token"}},
        }
    ]
    # The token itself is never in the Deployment, only the Secret's name.
    assert render.control_token(META, LOCKED) not in str(deployment)


def test_without_a_key_triton_is_not_locked_and_there_is_no_secret() -> None:
    main = container(render.triton_deployment(META, parse(), served(3), SETTINGS))
    assert not any("restricted" in arg for arg in main["args"])
    assert "env" not in main
    assert render.triton_control_secret(META, SETTINGS) is None


def test_the_control_secret_is_immutable_and_named_after_a_digest_of_its_token() -> None:
    secret = render.triton_control_secret(META, LOCKED)
    assert secret is not None
    token = render.control_token(META, LOCKED)
    assert secret["stringData"] == {"token": token}
    assert secret["immutable"] is True and secret["type"] == "Opaque"
    name = secret["metadata"]["name"]
    assert name.startswith("resnet50-triton-control-") and token not in name
    rotated = Settings(triton_control_key="another operator key of forty characters")
    other = render.triton_control_secret(META, rotated)
    assert other is not None and other["metadata"]["name"] != name  # a new key is a new Secret
    assert len(render.control_secret_name("x" * 63, token)) <= 63


def test_the_secret_is_rendered_only_while_the_deployment_is_to_be_applied() -> None:
    kinds = [o["kind"] for o in render.triton_access(META, LOCKED, deployment_current=False)]
    assert kinds == ["Secret", "NetworkPolicy"]
    assert [o["kind"] for o in render.triton_access(META, LOCKED, deployment_current=True)] == [
        "NetworkPolicy"
    ]
    assert [o["kind"] for o in render.triton_access(META, SETTINGS, deployment_current=False)] == [
        "NetworkPolicy"
    ]
    assert render.CREATE_ONLY_KINDS == {"Secret"}


def _rules(policy: dict[str, Any]) -> list[tuple[list[Any], list[int]]]:
    return [(rule["from"], [p["port"] for p in rule["ports"]]) for rule in policy["spec"]["ingress"]]


def test_the_network_policy_admits_the_own_namespace_the_clients_and_monitoring_to_their_ports() -> None:
    settings = Settings(
        triton_clients=("tritonresnet-system", "shop"), metrics_namespace_label="team/mon=yes"
    )
    policy = render.triton_network_policy(META, settings)
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["metadata"]["name"] == "resnet50-triton"
    assert policy["spec"]["podSelector"] == {"matchLabels": names.selector_labels("resnet50", "triton")}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert _rules(policy) == [
        ([{"podSelector": {}}], [8000, 8001, 8002]),
        (
            [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "tritonresnet-system"}
                    }
                },
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}},
            ],
            [8000, 8001],
        ),
        ([{"namespaceSelector": {"matchLabels": {"team/mon": "yes"}}}], [8002]),
    ]


def test_every_namespace_may_call_triton_by_default_but_only_monitoring_scrapes_it() -> None:
    (_own, clients, monitoring) = _rules(render.triton_network_policy(META, Settings()))
    assert clients == ([{"namespaceSelector": {}}], [8000, 8001])
    assert monitoring == (
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        [8002],
    )
