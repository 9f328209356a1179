"""What the user wrote, parsed: frozen dataclasses mirroring the CRD, defaults applied.

The CRD validates and defaults at apply time, but the operator does not rely
on it: a resource stored under an older CRD version, or created while the
CRD was being upgraded, reaches us without those defaults. :func:`parse_spec`
applies the same defaults and the same checks, and raises :class:`SpecError`
naming the field in the user's terms (``spec.source.uri``).

Field names, limits and patterns here and in
``crds/tritonresnet.io_tritonresnets.yaml`` must agree; the unit tests compare
them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tritonresnet_builder.contract import (
    FORMATS,
    MODEL_NAME_RE,
    PRECISIONS,
    AccuracyTolerance,
    EngineSettings,
    Format,
    HardwareCompatibility,
    Precision,
    Source,
)

from tritonresnet.api import names

# -- patterns and limits shared with the CRD -------------------------------------------
#
# The API server checks the CRD's patterns with Go's regexp: ``$`` is the end of the
# text and ``\d``/``\S`` are ASCII classes. Python's ``$`` also matches before a final
# newline and its classes are Unicode, so every pattern is compiled with re.ASCII and
# checked with :func:`matches` (a full match), which accepts exactly what the CRD does.


def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text, re.ASCII)


def matches(pattern: re.Pattern[str], value: str) -> bool:
    """``value`` matches all of ``pattern``, as the API server's check of the CRD's pattern does."""
    return pattern.fullmatch(value) is not None


#: NGC releases are YY.MM (spec.serving.release, and the operator's default release).
RELEASE_RE = _pattern(r"^\d{2}\.\d{2}$")

#: s3://bucket/key (bucket named by S3's rules) or an absolute local path.
SOURCE_URI_RE = _pattern(r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+|/\S+)$")
#: Optional fields accept "" (the issue's sample writes them out empty).
SHA256_RE = _pattern(r"^([0-9a-f]{64})?$")
#: A pin of an external-data file is never empty: an empty one would pin nothing.
REQUIRED_SHA256_RE = _pattern(r"^[0-9a-f]{64}$")
ENDPOINT_RE = _pattern(r"^(https?://\S+)?$")
REGION_RE = _pattern(r"^[a-z0-9-]{0,32}$")
#: A PVC's (or storage class's) name: a DNS subdomain.
CLAIM_NAME_RE = _pattern(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
#: A Secret's name, or "" for none.
SECRET_NAME_RE = _pattern(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)?$")
#: A target's name shows up in status and in child labels: a short DNS label.
TARGET_NAME_RE = _pattern(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
#: A relative folder inside the claim; no component may start with a dot (no ``..``). Also
#: the grammar of an external-data location (relative to the model, as the builder normalises it).
SUB_PATH_RE = _pattern(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")
#: Kubernetes' resource.Quantity grammar.
QUANTITY_RE = _pattern(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")
ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
TOLERATION_OPERATORS = ("Exists", "Equal")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
MetricType = Literal["cpu", "queueTime"]
#: Where the GPU kinds to build for come from: the hand-written targets only, or also the
#: nodes Triton may land on, grouped by compute capability (``controller/fleet.py``).
GpuKinds = Literal["Listed", "Auto"]
GPU_KINDS: tuple[GpuKinds, ...] = ("Listed", "Auto")
#: TensorRT's hardware compatibility level, as the CRD spells it (contract: none, ampere_plus).
HardwareCompatibilityName = Literal["None", "AmperePlus"]
HARDWARE_COMPATIBILITY: Mapping[HardwareCompatibilityName, HardwareCompatibility] = {
    "None": "none",
    "AmperePlus": "ampere_plus",
}
METRIC_TYPES: tuple[MetricType, ...] = ("cpu", "queueTime")

MAX_BATCH = 256
MAX_TARGETS = 16
MAX_PREFERRED_BATCH_SIZES = 16
MAX_TOLERATIONS = 32
MAX_SELECTOR_ENTRIES = 32
MAX_REPLICAS = 1000
MAX_EXTERNAL_DATA = 64
MAX_EXTERNAL_LOCATION = 1024

GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_SERVING_RESOURCES: Mapping[str, Mapping[str, str]] = {"limits": {GPU_RESOURCE: "1"}}
DEFAULT_TARGET_NAME = "default"
DEFAULT_CPU_UTILIZATION = 80
DEFAULT_QUEUE_TIME_US = 2000
ONNX_TARGET_NAME = "onnx"


class SpecError(ValueError):
    """A spec the operator cannot act on; ``field`` is the path the user wrote, e.g. ``spec.source.uri``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# -- the parsed spec ----------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    uri: str
    sha256: str = ""
    endpoint: str = ""
    region: str = ""
    credentials_secret: str = ""  #: Secret holding AWS_* keys; empty: the pod's default chain
    #: pins of external-data files: location (relative to the model) -> sha256, in spec order
    external_data: Mapping[str, str] = field(default_factory=dict)

    def contract(self) -> Source:
        return Source(
            uri=self.uri,
            sha256=self.sha256,
            endpoint=self.endpoint,
            region=self.region,
            external_data_sha256=dict(self.external_data),
        )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    format: Format = "tensorrt"


@dataclass(frozen=True)
class Target:
    """One GPU kind to build for: where its build pod runs."""

    name: str
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class EngineSpec:
    precision: Precision = "fp16"
    #: 0: no batching, the tutorial's layout (requests without a batch dimension, run at batch 1)
    max_batch_size: int = 8
    opt_batch_size: int = 0  #: 0: half of max_batch_size (contract.EngineSettings.optimum_batch)
    workspace_mib: int = 4096
    targets: tuple[Target, ...] = ()  #: as written; see TritonResNetSpec.build_targets()
    build_timeout_seconds: int = 3600
    accuracy: AccuracyTolerance = field(default_factory=AccuracyTolerance)  #: the gate of a plan
    #: Auto: one build per compute capability among the nodes Triton may land on, plus ``targets``.
    gpu_kinds: GpuKinds = "Listed"
    #: ampere_plus: one plan for every GPU of compute capability 8.0 and up (TensorRT's AMPERE_PLUS)
    hardware_compatibility: HardwareCompatibility = "none"


@dataclass(frozen=True)
class DynamicBatching:
    """Triton's dynamic batcher; not configured with maxBatchSize 1 or 0 (see triton_config)."""

    max_queue_delay_us: int = 100
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class AutoscalingMetric:
    type: MetricType = "cpu"
    target_average_utilization: int = 0  #: percent of the CPU request; set when type is cpu
    target_queue_time_us: int = 0  #: average queue time per request; set when type is queueTime


@dataclass(frozen=True)
class Autoscaling:
    max_replicas: int
    min_replicas: int = 1
    metric: AutoscalingMetric = field(
        default_factory=lambda: AutoscalingMetric("cpu", DEFAULT_CPU_UTILIZATION)
    )


@dataclass(frozen=True)
class ServingSpec:
    release: str = ""  #: empty: the operator's default release (Settings.default_release)
    replicas: int = 1
    resources: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: copy.deepcopy(DEFAULT_SERVING_RESOURCES)
    )
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    dynamic_batching: DynamicBatching = field(default_factory=DynamicBatching)
    instance_count: int = 1
    autoscaling: Autoscaling | None = None


@dataclass(frozen=True)
class RepositoryCreate:
    size: str = "20Gi"
    storage_class_name: str | None = None  #: None: the cluster's default class
    access_modes: tuple[str, ...] = ("ReadWriteMany",)


@dataclass(frozen=True)
class RepositorySpec:
    claim_name: str = ""  #: an existing claim; exclusive with create
    create: RepositoryCreate | None = None
    sub_path: str = ""  #: folder inside the claim used as the model repository root
    retain_versions: int = 3


@dataclass(frozen=True)
class TritonResNetSpec:
    source: SourceSpec
    model: ModelSpec
    repository: RepositorySpec
    engine: EngineSpec = field(default_factory=EngineSpec)
    serving: ServingSpec = field(default_factory=ServingSpec)

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            format=self.model.format,
            precision=self.engine.precision,
            max_batch_size=self.engine.max_batch_size,
            opt_batch_size=self.engine.opt_batch_size,
            workspace_mib=self.engine.workspace_mib,
            accuracy=self.engine.accuracy,
            hardware_compatibility=self.engine.hardware_compatibility,
        )

    def build_targets(self) -> tuple[Target, ...]:
        """The builds to run: one per GPU kind for tensorrt, one CPU build for onnx.

        With no targets written, the one target is where Triton runs (the
        serving nodeSelector and tolerations): the plan must match the GPU
        that will load it.
        """
        if self.model.format == "onnx":
            return (Target(name=ONNX_TARGET_NAME),)
        if self.fleet_mode:
            # The fleet's kinds are added by decide (controller/fleet.py): they come from Nodes.
            return self.engine.targets
        if self.engine.targets:
            return self.engine.targets
        return (Target(DEFAULT_TARGET_NAME, dict(self.serving.node_selector), self.serving.tolerations),)

    @property
    def uses_gpu_builds(self) -> bool:
        return self.model.format == "tensorrt"

    @property
    def fleet_mode(self) -> bool:
        """``engine.gpuKinds: Auto``: the GPU kinds come from the nodes Triton may land on."""
        return self.model.format == "tensorrt" and self.engine.gpu_kinds == "Auto"


# -- parsing helpers -------------------------------------------------------------------------


def _section(parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}.{key}", f"must be an object, not {type(value).__name__}")
    return value


def _string(
    parent: Mapping[str, Any], key: str, path: str, default: str = "", pattern: re.Pattern[str] | None = None
) -> str:
    value = parent.get(key)
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise SpecError(f"{path}.{key}", f"must be a string, not {type(value).__name__}")
    if pattern is not None and not matches(pattern, value):
        raise SpecError(f"{path}.{key}", f"{value!r} does not match {pattern.pattern}")
    return value


def _integer(parent: Mapping[str, Any], key: str, path: str, default: int, low: int, high: int) -> int:
    value = parent.get(key)
    if value is None:
        return default
    # bool is an int in Python, never in the user's YAML meaning.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path}.{key}", f"must be an integer, not {value!r}")
    if not low <= value <= high:
        raise SpecError(f"{path}.{key}", f"{value} is out of range {low}..{high}")
    return value


def _number(parent: Mapping[str, Any], key: str, path: str, default: float, low: float, high: float) -> float:
    value = parent.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{path}.{key}", f"must be a number, not {value!r}")
    if not low <= value <= high:
        raise SpecError(f"{path}.{key}", f"{value} is out of range {low:g}..{high:g}")
    return float(value)


def _choice(parent: Mapping[str, Any], key: str, path: str, choices: Sequence[str], default: str) -> str:
    value = _string(parent, key, path, default)
    if value not in choices:
        raise SpecError(f"{path}.{key}", f"{value!r} is not one of {', '.join(choices)}")
    return value


def _list(parent: Mapping[str, Any], key: str, path: str, max_items: int) -> Sequence[Any]:
    value = parent.get(key)
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise SpecError(f"{path}.{key}", "must be a list")
    if len(value) > max_items:
        raise SpecError(f"{path}.{key}", f"has {len(value)} items, at most {max_items} are allowed")
    return value


def _string_map(parent: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    value = _section(parent, key, path)
    if len(value) > MAX_SELECTOR_ENTRIES:
        raise SpecError(
            f"{path}.{key}", f"has {len(value)} entries, at most {MAX_SELECTOR_ENTRIES} are allowed"
        )
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise SpecError(f"{path}.{key}", f"entry {k!r}: keys and values must be strings")
    return dict(value)


def _tolerations(parent: Mapping[str, Any], key: str, path: str) -> tuple[Mapping[str, Any], ...]:
    items = _list(parent, key, path, MAX_TOLERATIONS)
    result = []
    for index, item in enumerate(items):
        where = f"{path}.{key}[{index}]"
        if not isinstance(item, Mapping):
            raise SpecError(where, "must be an object")
        unknown = set(item) - {"key", "operator", "value", "effect", "tolerationSeconds"}
        if unknown:
            raise SpecError(where, f"unknown fields {', '.join(sorted(unknown))}")
        _choice(item, "operator", where, TOLERATION_OPERATORS, "Equal")
        if item.get("effect"):
            _choice(item, "effect", where, TOLERATION_EFFECTS, "")
        _string(item, "key", where)
        _string(item, "value", where)
        if item.get("tolerationSeconds") is not None:
            _integer(item, "tolerationSeconds", where, 0, -(2**63), 2**63 - 1)
        result.append(copy.deepcopy(dict(item)))
    return tuple(result)


def _quantities(parent: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    value = _section(parent, key, path)
    result = {}
    for name, quantity in value.items():
        # YAML gives `nvidia.com/gpu: 1` as an int; Kubernetes accepts both.
        if isinstance(quantity, bool) or not isinstance(quantity, (int, float, str)):
            raise SpecError(f"{path}.{key}.{name}", f"must be a quantity, not {quantity!r}")
        text = str(quantity)
        if not matches(QUANTITY_RE, text):
            raise SpecError(f"{path}.{key}.{name}", f"{text!r} is not a quantity like 500m, 4Gi or 1")
        result[str(name)] = text
    return result


def target_name_for(node_selector: Mapping[str, str]) -> str:
    """The name of an unnamed target: stable for its nodeSelector, independent of list order."""
    return f"gpu-{names.digest(dict(node_selector))[:8]}"


# -- sections -------------------------------------------------------------------------------


def _external_data(section: Mapping[str, Any], path: str) -> dict[str, str]:
    """``externalData``: a list keyed by location (the CRD's list-map), read as location -> sha256."""
    pins: dict[str, str] = {}
    for index, item in enumerate(_list(section, "externalData", path, MAX_EXTERNAL_DATA)):
        where = f"{path}.externalData[{index}]"
        if not isinstance(item, Mapping):
            raise SpecError(where, "must be an object")
        unknown = set(item) - {"location", "sha256"}
        if unknown:
            raise SpecError(where, f"unknown fields {', '.join(sorted(unknown))}")
        location = _string(item, "location", where, pattern=SUB_PATH_RE)
        digest = _string(item, "sha256", where, pattern=REQUIRED_SHA256_RE)
        if not location or not digest:
            raise SpecError(f"{where}.{'sha256' if location else 'location'}", "is required")
        if len(location) > MAX_EXTERNAL_LOCATION:
            raise SpecError(f"{where}.location", f"is longer than {MAX_EXTERNAL_LOCATION} characters")
        if location in pins:
            raise SpecError(f"{where}.location", f"{location!r} is pinned twice")
        pins[location] = digest
    return pins


def _source(spec: Mapping[str, Any]) -> SourceSpec:
    path = "spec.source"
    if "source" not in spec or spec.get("source") is None:
        raise SpecError(path, "is required")
    section = _section(spec, "source", "spec")
    uri = _string(section, "uri", path, pattern=SOURCE_URI_RE)
    if not uri:
        raise SpecError(f"{path}.uri", "is required: s3://bucket/key or an absolute path")
    return SourceSpec(
        uri=uri,
        sha256=_string(section, "sha256", path, pattern=SHA256_RE),
        endpoint=_string(section, "endpoint", path, pattern=ENDPOINT_RE),
        region=_string(section, "region", path, pattern=REGION_RE),
        credentials_secret=_string(section, "credentialsSecret", path, pattern=SECRET_NAME_RE),
        external_data=_external_data(section, path),
    )


def _model(spec: Mapping[str, Any], metadata_name: str) -> ModelSpec:
    path = "spec.model"
    section = _section(spec, "model", "spec")
    name = _string(section, "name", path, pattern=MODEL_NAME_RE)
    if not name:
        if not matches(MODEL_NAME_RE, metadata_name):
            raise SpecError(
                f"{path}.name",
                f"defaults to metadata.name, but {metadata_name!r} is not a valid Triton model name "
                f"({MODEL_NAME_RE.pattern}); set spec.model.name",
            )
        name = metadata_name
    model_format = _choice(section, "format", path, FORMATS, "tensorrt")
    return ModelSpec(name=name, format="onnx" if model_format == "onnx" else "tensorrt")


def _target(item: Any, where: str) -> Target:
    if not isinstance(item, Mapping):
        raise SpecError(where, "must be an object")
    selector = _string_map(item, "nodeSelector", where)
    return Target(
        name=_string(item, "name", where, pattern=TARGET_NAME_RE) or target_name_for(selector),
        node_selector=selector,
        tolerations=_tolerations(item, "tolerations", where),
    )


def _targets(section: Mapping[str, Any], path: str) -> tuple[Target, ...]:
    items = _list(section, "targets", path, MAX_TARGETS)
    targets = tuple(_target(item, f"{path}.targets[{i}]") for i, item in enumerate(items))
    seen: set[str] = set()
    for index, target in enumerate(targets):
        if target.name in seen:
            raise SpecError(f"{path}.targets[{index}].name", f"{target.name!r} is used by another target")
        seen.add(target.name)
    return targets


def _precision(section: Mapping[str, Any], path: str) -> Precision:
    value = _choice(section, "precision", path, PRECISIONS, "fp16")
    if value == "int8":
        raise SpecError(
            f"{path}.precision",
            "int8 needs a calibration data set, which tritonresnet does not take yet; use fp16, bf16 or fp8",
        )
    return next(p for p in PRECISIONS if p == value)


def _accuracy(engine: Mapping[str, Any], path: str) -> AccuracyTolerance:
    where = f"{path}.accuracy"
    section = _section(engine, "accuracy", path)
    defaults = AccuracyTolerance()
    return AccuracyTolerance(
        min_top5_agreement_percent=_integer(
            section, "minTop5AgreementPercent", where, defaults.min_top5_agreement_percent, 0, 100
        ),
        max_abs_difference=_number(section, "maxAbsDifference", where, defaults.max_abs_difference, 0, 1e6),
    )


def _engine(spec: Mapping[str, Any], model: ModelSpec) -> EngineSpec:
    path = "spec.engine"
    section = _section(spec, "engine", "spec")
    # 0 is the tutorial's layout: no batch dimension in requests, the model run at batch 1.
    max_batch = _integer(section, "maxBatchSize", path, 8, 0, MAX_BATCH)
    opt_batch = _integer(section, "optBatchSize", path, 0, 0, MAX_BATCH)
    if opt_batch > max_batch:
        detail = (
            " (with maxBatchSize 0 the plan is built for batch 1 only; leave it 0)" if not max_batch else ""
        )
        raise SpecError(
            f"{path}.optBatchSize", f"{opt_batch} is larger than maxBatchSize {max_batch}{detail}"
        )
    targets = _targets(section, path)
    if targets and model.format != "tensorrt":
        raise SpecError(
            f"{path}.targets", "only applies to format tensorrt; an onnx model is prepared once, on CPU"
        )
    gpu_kinds: GpuKinds = (
        "Auto" if _choice(section, "gpuKinds", path, GPU_KINDS, "Listed") == "Auto" else "Listed"
    )
    if gpu_kinds == "Auto" and model.format != "tensorrt":
        raise SpecError(
            f"{path}.gpuKinds", "Auto only applies to format tensorrt; an onnx model is prepared once, on CPU"
        )
    level = _choice(section, "hardwareCompatibility", path, tuple(HARDWARE_COMPATIBILITY), "None")
    if level != "None" and model.format != "tensorrt":
        raise SpecError(f"{path}.hardwareCompatibility", "only applies to format tensorrt")
    return EngineSpec(
        precision=_precision(section, path),
        max_batch_size=max_batch,
        opt_batch_size=opt_batch,
        workspace_mib=_integer(section, "workspaceMiB", path, 4096, 256, 262144),
        targets=targets,
        build_timeout_seconds=_integer(section, "buildTimeoutSeconds", path, 3600, 60, 86400),
        accuracy=_accuracy(section, path),
        gpu_kinds=gpu_kinds,
        hardware_compatibility="ampere_plus" if level == "AmperePlus" else "none",
    )


def _dynamic_batching(serving: Mapping[str, Any], path: str, max_batch: int) -> DynamicBatching:
    where = f"{path}.dynamicBatching"
    section = _section(serving, "dynamicBatching", path)
    preferred = _list(section, "preferredBatchSizes", where, MAX_PREFERRED_BATCH_SIZES)
    if preferred and max_batch == 0:
        raise SpecError(
            f"{where}.preferredBatchSizes",
            "must be empty with engine.maxBatchSize 0, which serves without batching",
        )
    sizes = []
    for index, size in enumerate(preferred):
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= max_batch:
            raise SpecError(
                f"{where}.preferredBatchSizes[{index}]",
                f"{size!r} must be an integer from 1 to maxBatchSize ({max_batch})",
            )
        sizes.append(size)
    return DynamicBatching(
        max_queue_delay_us=_integer(section, "maxQueueDelayMicroseconds", where, 100, 0, 10_000_000),
        preferred_batch_sizes=tuple(sizes),
    )


def _metric(section: Mapping[str, Any], path: str) -> AutoscalingMetric:
    where = f"{path}.metric"
    metric = _section(section, "metric", path)
    kind = _choice(metric, "type", where, METRIC_TYPES, "cpu")
    if kind == "cpu":
        if metric.get("targetQueueTimeMicroseconds") is not None:
            raise SpecError(f"{where}.targetQueueTimeMicroseconds", "only applies to type queueTime")
        percent = _integer(metric, "targetAverageUtilization", where, DEFAULT_CPU_UTILIZATION, 1, 1000)
        return AutoscalingMetric("cpu", target_average_utilization=percent)
    if metric.get("targetAverageUtilization") is not None:
        raise SpecError(f"{where}.targetAverageUtilization", "only applies to type cpu")
    micros = _integer(metric, "targetQueueTimeMicroseconds", where, DEFAULT_QUEUE_TIME_US, 1, 60_000_000)
    return AutoscalingMetric("queueTime", target_queue_time_us=micros)


def _autoscaling(
    serving: Mapping[str, Any], path: str, resources: Mapping[str, Mapping[str, str]]
) -> Autoscaling | None:
    if serving.get("autoscaling") is None:
        return None
    where = f"{path}.autoscaling"
    section = _section(serving, "autoscaling", path)
    if section.get("maxReplicas") is None:
        raise SpecError(f"{where}.maxReplicas", "is required")
    max_replicas = _integer(section, "maxReplicas", where, 1, 1, MAX_REPLICAS)
    min_replicas = _integer(section, "minReplicas", where, 1, 1, MAX_REPLICAS)
    if min_replicas > max_replicas:
        raise SpecError(f"{where}.minReplicas", f"{min_replicas} is larger than maxReplicas {max_replicas}")
    metric = _metric(section, where)
    if metric.type == "cpu" and "cpu" not in resources.get("requests", {}):
        # The HPA computes utilization against the request; without one it never scales.
        raise SpecError(f"{path}.resources.requests.cpu", "is required when autoscaling on cpu")
    return Autoscaling(max_replicas=max_replicas, min_replicas=min_replicas, metric=metric)


def _resources(serving: Mapping[str, Any], path: str) -> Mapping[str, Mapping[str, str]]:
    if serving.get("resources") is None:
        return copy.deepcopy(DEFAULT_SERVING_RESOURCES)
    where = f"{path}.resources"
    section = _section(serving, "resources", path)
    unknown = set(section) - {"limits", "requests"}
    if unknown:
        raise SpecError(where, f"unknown fields {', '.join(sorted(unknown))}; use limits and requests")
    return {key: _quantities(section, key, where) for key in ("limits", "requests") if key in section}


def _serving(spec: Mapping[str, Any], engine: EngineSpec) -> ServingSpec:
    path = "spec.serving"
    section = _section(spec, "serving", "spec")
    resources = _resources(section, path)
    return ServingSpec(
        release=_string(section, "release", path, pattern=RELEASE_RE),
        replicas=_integer(section, "replicas", path, 1, 0, MAX_REPLICAS),
        resources=resources,
        node_selector=_string_map(section, "nodeSelector", path),
        tolerations=_tolerations(section, "tolerations", path),
        dynamic_batching=_dynamic_batching(section, path, engine.max_batch_size),
        instance_count=_integer(section, "instanceCount", path, 1, 1, 16),
        autoscaling=_autoscaling(section, path, resources),
    )


def _repository_create(section: Mapping[str, Any], path: str) -> RepositoryCreate:
    where = f"{path}.create"
    create = _section(section, "create", path)
    modes = _list(create, "accessModes", where, len(ACCESS_MODES))
    for index, mode in enumerate(modes):
        if mode not in ACCESS_MODES:
            raise SpecError(
                f"{where}.accessModes[{index}]", f"{mode!r} is not one of {', '.join(ACCESS_MODES)}"
            )
    return RepositoryCreate(
        size=_string(create, "size", where, "20Gi", pattern=QUANTITY_RE),
        storage_class_name=_string(create, "storageClassName", where, pattern=CLAIM_NAME_RE) or None,
        access_modes=tuple(modes) or ("ReadWriteMany",),
    )


def _repository(spec: Mapping[str, Any]) -> RepositorySpec:
    path = "spec.repository"
    if spec.get("repository") is None:
        raise SpecError(path, "is required: claimName of an existing PVC, or create")
    section = _section(spec, "repository", "spec")
    claim = _string(section, "claimName", path, pattern=CLAIM_NAME_RE)
    wants_create = section.get("create") is not None
    if bool(claim) == wants_create:
        raise SpecError(path, "set exactly one of claimName (an existing PVC) and create (a new one)")
    return RepositorySpec(
        claim_name=claim,
        create=_repository_create(section, path) if wants_create else None,
        sub_path=_string(section, "subPath", path, pattern=SUB_PATH_RE),
        retain_versions=_integer(section, "retainVersions", path, 3, 1, 100),
    )


def parse_spec(body: Mapping[str, Any]) -> TritonResNetSpec:
    """Parse a whole TritonResNet object (metadata + spec) into a :class:`TritonResNetSpec`.

    Never mutates ``body``; the result holds copies. Raises :class:`SpecError`.
    """
    metadata = body.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name", "is required")
    if not isinstance(body.get("spec"), Mapping):
        raise SpecError("spec", "is required and must be an object")
    spec: Mapping[str, Any] = body["spec"]
    model = _model(spec, name)
    engine = _engine(spec, model)
    return TritonResNetSpec(
        source=_source(spec),
        model=model,
        repository=_repository(spec),
        engine=engine,
        serving=_serving(spec, engine),
    )
