"""Pure renderers: a parsed spec in, whole Kubernetes objects (dicts) out.

Each function returns a complete object (apiVersion, kind, metadata with
labels and an owner reference to the TritonResNet, spec) ready for
server-side apply. Nothing here talks to the cluster or mutates its inputs:
the user's selectors, tolerations and resources are copied, never shared.

``cr`` is the TritonResNet: the whole object, or only its ``metadata``
(name, namespace and uid are read).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tritonresnet_builder.contract import (
    NON_RETRYABLE_EXIT_CODES,
    TERMINATION_LOG,
    BuildArgs,
    PublishArgs,
    pinned_config_name,
)

from tritonresnet.api import names
from tritonresnet.api.spec import GPU_RESOURCE, AutoscalingMetric, Target, TritonResNetSpec
from tritonresnet.controller import fleet
from tritonresnet.controller.children import RETRY_ANNOTATION, Served, served_annotations
from tritonresnet.controller.settings import Settings

Object = dict[str, Any]

#: Where every pod mounts the model repository; the builder gets it as --repository.
REPOSITORY_MOUNT = "/models"
REPOSITORY_VOLUME = "models"
SCRATCH_VOLUME = "tmp"
BUILDER_CONTAINER = "builder"
TRITON_CONTAINER = "tritonserver"

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002

#: A non-root uid present in NGC images (triton-server) and in the builder image.
RUN_AS_USER = 1000

#: GPU nodes are commonly tainted so only pods asking for a GPU land there.
GPU_TOLERATION: Mapping[str, str] = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

JOB_BACKOFF_LIMIT = 3
PUBLISH_TIMEOUT_SECONDS = 900

#: Builder pod sizes: a TensorRT build of a ResNet needs a few GiB of host memory.
GPU_BUILD_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "1", "memory": "2Gi"},
    "limits": {"memory": "8Gi", GPU_RESOURCE: "1"},
}
CPU_BUILD_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"memory": "4Gi"},
}
PUBLISH_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}

#: The Pods metric an HPA on queue time reads through the custom metrics API.
#: Triton exports it as a counter; the metrics adapter must serve it as the
#: average queue time per request (see the autoscaling docs).
QUEUE_TIME_METRIC = "nv_inference_queue_duration_us"

#: Triton's APIs that change what it serves (load, unload, the repository index) or how it
#: runs (shared memory, tracing, logging): only a request carrying the control credential may
#: use them. Health, metadata, model config, statistics and inference stay open: every client
#: needs them, and none changes what is served.
RESTRICTED_APIS: tuple[str, ...] = ("model-repository", "shared-memory", "trace", "logging")
#: The HTTP header carrying the credential (lower case: gRPC metadata keys must be).
CONTROL_HEADER = "tritonresnet-control"
#: Over gRPC Triton 2.51 looks for the key behind its own prefix (its 403 names it).
GRPC_CONTROL_METADATA = f"triton-grpc-protocol-{CONTROL_HEADER}"
#: Where the Triton container finds the credential: an env var from the control Secret, put
#: into its args by Kubernetes' $(VAR) expansion (Triton takes it only on the command line).
CONTROL_ENV = "TRITONRESNET_CONTROL_TOKEN"
CONTROL_SECRET_KEY = "token"
#: Kept apart from any other use of the key: a credential for this purpose only.
_CONTROL_CONTEXT = b"tritonresnet triton control v1\0"

CREDENTIAL_KEYS: tuple[tuple[str, bool], ...] = (
    ("AWS_ACCESS_KEY_ID", False),
    ("AWS_SECRET_ACCESS_KEY", False),
    ("AWS_SESSION_TOKEN", True),  # only temporary credentials have one
)


# -- shared pieces --------------------------------------------------------------------------


def cr_metadata(cr: Mapping[str, Any]) -> Mapping[str, Any]:
    """The metadata of ``cr``, whether given the whole object or its metadata."""
    meta = cr.get("metadata", cr)
    return meta if isinstance(meta, Mapping) else cr


def owner_reference(cr: Mapping[str, Any]) -> Object:
    cr_meta = cr_metadata(cr)
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": cr_meta["name"],
        "uid": cr_meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(cr: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> Object:
    return {
        "name": name,
        "namespace": cr_metadata(cr)["namespace"],
        "labels": dict(labels),
        "ownerReferences": [owner_reference(cr)],
    }


def claim_name(cr_name: str, spec: TritonResNetSpec) -> str:
    """The PVC holding the model repository: the user's, or the one we create."""
    return spec.repository.claim_name or names.pvc_name(cr_name)


def _volumes(cr_name: str, spec: TritonResNetSpec, read_only: bool) -> list[Object]:
    claim = {"claimName": claim_name(cr_name, spec)} | ({"readOnly": True} if read_only else {})
    return [
        {"name": REPOSITORY_VOLUME, "persistentVolumeClaim": claim},
        # The root filesystem is read-only; tools still want a writable /tmp.
        {"name": SCRATCH_VOLUME, "emptyDir": {}},
    ]


def _volume_mounts(spec: TritonResNetSpec, read_only: bool) -> list[Object]:
    repository: Object = {"name": REPOSITORY_VOLUME, "mountPath": REPOSITORY_MOUNT, "readOnly": read_only}
    if spec.repository.sub_path:
        repository["subPath"] = spec.repository.sub_path
    return [repository, {"name": SCRATCH_VOLUME, "mountPath": "/tmp"}]


def _container_security() -> Object:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security() -> Object:
    # fsGroup makes a fresh volume writable by the non-root builder.
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _tolerations(base: Iterable[Mapping[str, Any]], gpu: bool) -> list[Object]:
    tolerations = [copy.deepcopy(dict(t)) for t in base]
    already = any(t.get("key") == GPU_RESOURCE and t.get("operator") == "Exists" for t in tolerations)
    if gpu and not already:
        tolerations.append(dict(GPU_TOLERATION))
    return tolerations


def _wants_gpu(resources: Mapping[str, Mapping[str, str]]) -> bool:
    return any(GPU_RESOURCE in resources.get(kind, {}) for kind in ("limits", "requests"))


def _resources(resources: Mapping[str, Mapping[str, str]]) -> Object:
    return {kind: dict(values) for kind, values in resources.items()}


def _pod_base(settings: Settings) -> Object:
    base: Object = {
        # These pods never call the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(),
    }
    if settings.image_pull_secrets:
        base["imagePullSecrets"] = [{"name": secret} for secret in settings.image_pull_secrets]
    return base


# -- builder Jobs ---------------------------------------------------------------------------


def credential_env(secret: str) -> list[Object]:
    """AWS credentials from the user's Secret; a missing access key fails the pod visibly
    (CreateContainerConfigError) instead of surfacing later as an access-denied from S3."""
    if not secret:
        return []
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}
        for key, optional in CREDENTIAL_KEYS
    ]


def _builder_container(image: str, argv: Sequence[str], env: list[Object], resources: Object) -> Object:
    return {
        "name": BUILDER_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": list(argv),
        "env": [{"name": "HOME", "value": "/tmp"}, *env],
        "resources": resources,
        # The builder writes its JSON result here; on a crash the log tail stands in.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _container_security(),
    }


def _pod_failure_policy() -> Object:
    return {
        "rules": [
            # The user's mistake or an unsuitable node: retrying cannot help.
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": BUILDER_CONTAINER,
                    "operator": "In",
                    "values": sorted(int(code) for code in NON_RETRYABLE_EXIT_CODES),
                },
            },
            # Evictions, preemption and node drains are not the build's fault.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }


def _job(metadata: Object, pod_labels: Mapping[str, str], pod_spec: Object, settings: Settings) -> Object:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": JOB_BACKOFF_LIMIT,
            "ttlSecondsAfterFinished": settings.job_ttl_seconds,
            "podFailurePolicy": _pod_failure_policy(),
            "template": {"metadata": {"labels": dict(pod_labels)}, "spec": pod_spec},
        },
    }


def build_args(spec: TritonResNetSpec, engine_key: str) -> BuildArgs:
    return BuildArgs(
        repository=REPOSITORY_MOUNT,
        engine_key=engine_key,
        source=spec.source.contract(),
        engine=spec.engine_settings(),
        result_file=TERMINATION_LOG,
    )


def build_job(
    cr: Mapping[str, Any], spec: TritonResNetSpec, target: Target, engine_key: str, settings: Settings
) -> Object:
    """One build of one artifact for one GPU kind (tensorrt), or the one CPU build (onnx)."""
    cr_name = cr_metadata(cr)["name"]
    gpu = spec.uses_gpu_builds
    labels = names.labels(
        cr_name,
        "build",
        {names.LABEL_ENGINE_KEY: engine_key, names.LABEL_TARGET: names.label_value(target.name)},
    )
    container = _builder_container(
        settings.builder_image(settings.release_for(spec)),
        build_args(spec, engine_key).to_argv(),
        credential_env(spec.source.credentials_secret),
        _resources(GPU_BUILD_RESOURCES if gpu else CPU_BUILD_RESOURCES),
    )
    container["volumeMounts"] = _volume_mounts(spec, read_only=False)
    pod_spec = _pod_base(settings) | {
        "restartPolicy": "Never",
        # The build deadline sits on the pod, not the Job: a pod's
        # activeDeadlineSeconds counts from its startTime, which the kubelet
        # sets once the pod is bound to a node, so time spent Pending (no GPU
        # node yet, the cluster autoscaler adding one) does not count. A
        # Job's activeDeadlineSeconds would count from Job creation.
        # Image pulls do count: the kubelet sets startTime before pulling.
        "activeDeadlineSeconds": spec.engine.build_timeout_seconds,
        "nodeSelector": dict(target.node_selector),
        "tolerations": _tolerations(target.tolerations, gpu),
        "containers": [container],
        "volumes": _volumes(cr_name, spec, read_only=False),
    }
    metadata = _metadata(cr, names.build_job_name(cr_name, engine_key), labels)
    retry = (cr_metadata(cr).get("annotations") or {}).get(RETRY_ANNOTATION)
    if retry:
        # Part of the Job's content, so a new value makes a failed build's Job stale and it runs again.
        metadata["annotations"] = {RETRY_ANNOTATION: str(retry)}
    return _job(metadata, labels, pod_spec, settings)


def publish_args(
    spec: TritonResNetSpec, engine_keys: Iterable[str], version_key: str, protect_versions: Iterable[int]
) -> PublishArgs:
    batching = spec.serving.dynamic_batching
    return PublishArgs(
        repository=REPOSITORY_MOUNT,
        model_name=spec.model.name,
        version_key=version_key,
        engine_keys=tuple(sorted(set(engine_keys))),
        max_batch_size=spec.engine.max_batch_size,
        max_queue_delay_us=batching.max_queue_delay_us,
        preferred_batch_sizes=tuple(sorted(batching.preferred_batch_sizes)),
        instance_count=spec.serving.instance_count,
        keep_versions=spec.repository.retain_versions,
        protect_versions=tuple(sorted(set(protect_versions))),
        result_file=TERMINATION_LOG,
    )


def publish_job(
    cr: Mapping[str, Any],
    spec: TritonResNetSpec,
    engine_keys: Iterable[str],
    version_key: str,
    protect_versions: Iterable[int],
    settings: Settings,
) -> Object:
    """Assemble one model version from the built artifacts: CPU only, runs anywhere the volume mounts."""
    cr_name = cr_metadata(cr)["name"]
    labels = names.labels(cr_name, "publish", {names.LABEL_VERSION_KEY: version_key})
    container = _builder_container(
        settings.builder_image(settings.release_for(spec)),
        publish_args(spec, engine_keys, version_key, protect_versions).to_argv(),
        [],
        _resources(PUBLISH_RESOURCES),
    )
    container["volumeMounts"] = _volume_mounts(spec, read_only=False)
    pod_spec = _pod_base(settings) | {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": PUBLISH_TIMEOUT_SECONDS,
        "containers": [container],
        "volumes": _volumes(cr_name, spec, read_only=False),
    }
    metadata = _metadata(cr, names.publish_job_name(cr_name, version_key), labels)
    return _job(metadata, labels, pod_spec, settings)


# -- serving --------------------------------------------------------------------------------


def triton_args(model_name: str, version: int, locked: bool = False) -> list[str]:
    """Triton's command line; ``locked``: the control APIs want the credential from ``CONTROL_ENV``."""
    args = [
        f"--model-repository={REPOSITORY_MOUNT}",
        "--model-control-mode=explicit",
        f"--load-model={model_name}",
        # Loads <model>/configs/v<N>.pbtxt, which serves exactly version N.
        f"--model-config-name={pinned_config_name(version)}",
        # Ready only once every loaded model is ready: a broken version never takes traffic.
        "--strict-readiness=true",
        "--exit-on-error=false",
        "--log-verbose=0",
    ]
    if locked:
        # Explicit model control lets any client that reaches the port load or unload models;
        # with these, only the operator's say (the header) changes what is served.
        restricted = f"{','.join(RESTRICTED_APIS)}:{CONTROL_HEADER}=$({CONTROL_ENV})"
        args += [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]
    return args


# -- locking Triton down: its control credential, and who may reach it ---------------------


def triton_control_token(key: str, uid: str) -> str:
    """The credential Triton's control APIs of one TritonResNet want: HMAC-SHA256(key, uid).

    Derived, not stored: the operator holds only ``key`` (its own Secret, which the chart
    makes) and computes the same token on every pass and after every restart, so rendering
    stays pure and nothing has to remember a random value. One per resource (the uid), so a
    user who may read the Secrets of one namespace learns nothing about another's.
    """
    return hmac.new(key.encode(), _CONTROL_CONTEXT + uid.encode(), hashlib.sha256).hexdigest()


def control_token(cr: Mapping[str, Any], settings: Settings) -> str:
    """The resource's credential; empty when the operator has no key (Triton left unlocked)."""
    if not settings.triton_control_key:
        return ""
    return triton_control_token(settings.triton_control_key, str(cr_metadata(cr)["uid"]))


def control_secret_name(cr_name: str, token: str) -> str:
    """The Secret holding ``token``: the name carries a digest of the content.

    The operator may create Secrets but never read them (it holds no get, list or patch on
    Secrets), so it cannot update one: a new token (a rotated key) is a new Secret, which the
    Deployment then names. The digest reveals nothing of the token and cannot be guessed
    without the key, so nobody can create the name before the operator does.
    """
    return names.dns_label(cr_name, f"-triton-control-{hashlib.sha256(token.encode()).hexdigest()[:10]}")


def triton_control_secret(cr: Mapping[str, Any], settings: Settings) -> Object | None:
    """The Secret Triton reads its control credential from; None without a key.

    Immutable: its content never changes (a new token gets a new name), and the kubelet
    need not watch it.
    """
    token = control_token(cr, settings)
    if not token:
        return None
    cr_name = cr_metadata(cr)["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(cr, control_secret_name(cr_name, token), names.labels(cr_name, "triton")),
        "type": "Opaque",
        "immutable": True,
        "stringData": {CONTROL_SECRET_KEY: token},
    }


def network_policy_name(cr_name: str) -> str:
    return names.dns_label(cr_name, "-triton")


def _port_rule(peers: list[Object], ports: Sequence[int]) -> Object:
    return {"from": peers, "ports": [{"protocol": "TCP", "port": port} for port in ports]}


def triton_network_policy(cr: Mapping[str, Any], settings: Settings) -> Object:
    """Who may reach the Triton pods: HTTP and gRPC from the resource's own namespace and the
    namespaces of ``settings.triton_clients`` (the chart adds the operator's, which verifies
    every endpoint); metrics from the same and from namespaces labelled
    ``settings.metrics_namespace_label``. Everything else is dropped by a cluster that
    enforces NetworkPolicies.

    Defence in depth, not the lock: the control APIs want the credential whoever calls.
    """
    cr_name = cr_metadata(cr)["name"]
    own: Object = {"podSelector": {}}  # every pod of the resource's namespace
    if "*" in settings.triton_clients:
        clients: list[Object] = [{"namespaceSelector": {}}]
    else:
        clients = [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
            for namespace in settings.triton_clients
        ]
    label, _, value = settings.metrics_namespace_label.partition("=")
    monitoring: Object = {"namespaceSelector": {"matchLabels": {label: value}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(cr, network_policy_name(cr_name), names.labels(cr_name, "triton")),
        "spec": {
            "podSelector": {"matchLabels": names.selector_labels(cr_name, "triton")},
            "policyTypes": ["Ingress"],
            "ingress": [
                _port_rule([own], (HTTP_PORT, GRPC_PORT, METRICS_PORT)),
                _port_rule(clients, (HTTP_PORT, GRPC_PORT)),
                _port_rule([monitoring], (METRICS_PORT,)),
            ],
        },
    }


def triton_access(cr: Mapping[str, Any], settings: Settings, deployment_current: bool) -> list[Object]:
    """The children that lock a resource's Triton down: its control Secret and NetworkPolicy.

    The Secret is rendered only while the Deployment is about to be applied
    (``deployment_current`` False): the operator cannot see Secrets, so a Secret rendered on
    every pass would be created on every pass. The Deployment names the Secret, so whenever
    the token changes the Deployment changes too and the new Secret is created first.
    """
    secret = None if deployment_current else triton_control_secret(cr, settings)
    return [*([secret] if secret is not None else []), triton_network_policy(cr, settings)]


#: Kinds the operator creates but never reads: a create answered 409 means the object is there.
CREATE_ONLY_KINDS = frozenset({"Secret"})


def model_ready_path(model_name: str, version: int) -> str:
    """Triton's readiness of one model version: 200 only while that version is loaded and ready.

    Model names are ``[A-Za-z0-9_.-]`` (the contract's pattern), so the path needs no escaping.
    """
    return f"/v2/models/{model_name}/versions/{version}/ready"


def _probe(path: str, period: int, failures: int) -> Object:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _triton_container(
    cr_name: str, spec: TritonResNetSpec, served: Served, settings: Settings, token: str
) -> Object:
    model_ready = model_ready_path(spec.model.name, served.version)
    container: Object = {
        "name": TRITON_CONTAINER,
        # The release its plans were built for, not the spec's: a plan loads only in its own release.
        "image": settings.triton_server_image(served.release),
        "imagePullPolicy": "IfNotPresent",
        "command": ["tritonserver"],
        "args": triton_args(spec.model.name, served.version, locked=bool(token)),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Loading a large plan can take minutes; liveness waits for the startup probe.
        "startupProbe": _probe(model_ready, period=5, failures=120),
        # Ready means serving the pinned version: a pod whose model was unloaded or failed
        # leaves the Service, even though the server itself is still up (and still live).
        "readinessProbe": _probe(model_ready, period=5, failures=3),
        # Live is the process, not the model: a pod restarted for a model it cannot load
        # would only fail the same way again, whereas not ready it stays there to look at.
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3),
        # Let endpoints drop this pod before Triton stops accepting requests,
        # so a rolling update fails no request.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "resources": _resources(spec.serving.resources),
        "volumeMounts": _volume_mounts(spec, read_only=True),
        "securityContext": _container_security(),
    }
    if token:
        secret = control_secret_name(cr_name, token)
        container["env"] = [
            {"name": CONTROL_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": CONTROL_SECRET_KEY}}}
        ]
    return container


def triton_tolerations(spec: TritonResNetSpec) -> list[Object]:
    """What Triton pods tolerate: the user's, and the GPU taint when they ask for a GPU."""
    return _tolerations(spec.serving.tolerations, _wants_gpu(spec.serving.resources))


def _affinity(cr_name: str, spec: TritonResNetSpec, served: Served) -> Object:
    affinity = _anti_affinity(cr_name)
    if spec.fleet_mode and served.compute_capabilities:
        # Only nodes with a plan of this version: no pod lands on a GPU it cannot serve on,
        # and the cluster autoscaler only grows node groups that can serve it.
        affinity["nodeAffinity"] = fleet.required_affinity(served.compute_capabilities)
    return affinity


def _anti_affinity(cr_name: str) -> Object:
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": names.selector_labels(cr_name, "triton")},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    }


def triton_deployment(
    cr: Mapping[str, Any], spec: TritonResNetSpec, served: Served, settings: Settings
) -> Object:
    """Triton serving exactly the published version ``served``, mounted read-only, annotated with
    what it serves so the cluster remembers it (``children.served_from_deployment`` reads it back).

    ``replicas`` always comes from spec.serving.replicas: an HPA scales the
    TritonResNet through its scale subresource, which writes that field.
    """
    if served.version < 1:
        raise ValueError(f"model version must be 1 or more, got {served.version}")
    cr_name = cr_metadata(cr)["name"]
    pod_labels = names.labels(cr_name, "triton", {names.LABEL_MODEL_VERSION: str(served.version)})
    pod_spec = _pod_base(settings) | {
        "terminationGracePeriodSeconds": 60,
        "nodeSelector": dict(spec.serving.node_selector),
        "tolerations": triton_tolerations(spec),
        "affinity": _affinity(cr_name, spec, served),
        "containers": [_triton_container(cr_name, spec, served, settings, control_token(cr, settings))],
        "volumes": _volumes(cr_name, spec, read_only=True),
    }
    metadata = _metadata(cr, names.deployment_name(cr_name), names.labels(cr_name, "triton"))
    metadata["annotations"] = served_annotations(served)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": spec.serving.replicas,
            "revisionHistoryLimit": 3,
            # Above the startup probe's 10 minutes, so a slow load is not reported as stuck.
            "progressDeadlineSeconds": 900,
            "selector": {"matchLabels": names.selector_labels(cr_name, "triton")},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def service(cr: Mapping[str, Any]) -> Object:
    """HTTP, gRPC and metrics of the Triton pods."""
    cr_name = cr_metadata(cr)["name"]
    ports = [("http", HTTP_PORT, "http"), ("grpc", GRPC_PORT, "grpc"), ("metrics", METRICS_PORT, "http")]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(cr, names.service_name(cr_name), names.labels(cr_name, "triton")),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector_labels(cr_name, "triton"),
            "ports": [
                {"name": name, "port": port, "targetPort": name, "protocol": "TCP", "appProtocol": protocol}
                for name, port, protocol in ports
            ],
        },
    }


def pod_disruption_budget(cr: Mapping[str, Any]) -> Object:
    """At most one Triton pod voluntarily disrupted at a time.

    maxUnavailable 1 rather than minAvailable: with one replica, minAvailable 1
    would block every node drain forever; with more, it allows the same as
    maxUnavailable 1 and stays right when an HPA changes the replica count.
    """
    cr_name = cr_metadata(cr)["name"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(cr, names.pdb_name(cr_name), names.labels(cr_name, "triton")),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": names.selector_labels(cr_name, "triton")},
            # A pod that is not ready protects no traffic; do not let it block drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def _hpa_metric(metric: AutoscalingMetric) -> Object:
    if metric.type == "cpu":
        return {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": metric.target_average_utilization},
            },
        }
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": QUEUE_TIME_METRIC},
            "target": {"type": "AverageValue", "averageValue": str(metric.target_queue_time_us)},
        },
    }


def hpa(cr: Mapping[str, Any], spec: TritonResNetSpec) -> Object | None:
    """An HPA scaling the TritonResNet itself (its scale subresource), so spec.serving.replicas stays the one
    source of the replica count. None when spec.serving.autoscaling is not set."""
    autoscaling = spec.serving.autoscaling
    if autoscaling is None:
        return None
    cr_name = cr_metadata(cr)["name"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(cr, names.hpa_name(cr_name), names.labels(cr_name, "triton")),
        "spec": {
            "scaleTargetRef": {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": cr_name},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [_hpa_metric(autoscaling.metric)],
        },
    }


def models_pvc(cr: Mapping[str, Any], spec: TritonResNetSpec) -> Object | None:
    """The repository claim the operator creates for ``repository.create``.

    Owned by the TritonResNet, so it goes when the resource goes. A claim the
    user names in ``repository.claimName`` is never rendered here, so never
    owned and never deleted: None then.
    """
    create = spec.repository.create
    if create is None:
        return None
    cr_name = cr_metadata(cr)["name"]
    pvc_spec: Object = {
        "accessModes": list(create.access_modes),
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": create.size}},
    }
    if create.storage_class_name is not None:
        pvc_spec["storageClassName"] = create.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(cr, names.pvc_name(cr_name), names.labels(cr_name, "repository")),
        "spec": pvc_spec,
    }
