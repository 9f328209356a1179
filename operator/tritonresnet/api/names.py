"""Names, labels and content keys of everything the operator creates.

Every name is a deterministic function of the resource's name and content,
so a restarted operator finds its children again and a repeated build is a
no-op (the Job already exists). Every name and label value is a valid DNS
label: long resource names are cut and get a hash of the full name appended.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

from tritonresnet_builder.contract import CONTRACT, AccuracyTolerance

if TYPE_CHECKING:  # spec imports digest from here
    from tritonresnet.api.spec import Target, TritonResNetSpec

GROUP = "tritonresnet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TritonResNet"
PLURAL = "tritonresnets"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_ENGINE_KEY = f"{GROUP}/engine-key"
LABEL_VERSION_KEY = f"{GROUP}/version-key"
LABEL_TARGET = f"{GROUP}/target"
LABEL_MODEL_VERSION = f"{GROUP}/model-version"

APP_NAME = "tritonresnet"
MANAGER = "tritonresnet-operator"

Component = Literal["build", "publish", "triton", "repository"]

#: Length of every content key (hex of a sha256).
KEY_LENGTH = 16
#: Characters of a key that appear in a child's name.
NAME_KEY_LENGTH = 10

DNS_LABEL_MAX = 63
_HASH_SUFFIX = 8
_INVALID_LABEL_CHARS = re.compile(r"[^a-z0-9-]+")


def digest(value: Any) -> str:
    """sha256 (hex) of ``value`` as canonical JSON: the one content hash of names, keys and children."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# -- content keys ----------------------------------------------------------------------


def engine_key(spec: TritonResNetSpec, target: Target, release: str) -> str:
    """The identity of one built artifact; equal keys mean the same bytes would be built.

    Includes what changes the artifact: the contract, the model's bytes as
    far as the spec names them (its pinned ``source.sha256``, else its
    location: an unpinned object overwritten in place keeps its key, so it is
    not rebuilt; pin the digest to have every new object rebuilt; and the pins
    of its external-data files, so a new pin is a new build), the
    engine settings, the builder release and the GPU kind (the target's
    nodeSelector; not its name, so renaming a target rebuilds nothing). An
    onnx artifact is the validated model itself, so precision, workspace and
    GPU kind do not enter its key.
    """
    settings = spec.engine_settings()
    source = spec.source
    origin: dict[str, Any] = (
        {"sha256": source.sha256} if source.sha256 else {"uri": source.uri, "endpoint": source.endpoint}
    )
    if source.external_data:
        # Only when set, so the keys of every resource without such pins stay as they were.
        origin["externalData"] = dict(source.external_data)
    content: dict[str, Any] = {
        "contract": CONTRACT,
        "source": origin,
        "format": settings.format,
        "maxBatchSize": settings.max_batch_size,
        "release": release,
    }
    if settings.format == "tensorrt":
        content |= {
            "precision": settings.precision,
            "optBatchSize": settings.optimum_batch(),
            "workspaceMiB": settings.workspace_mib,
            "gpu": dict(target.node_selector),
        }
        if settings.accuracy != AccuracyTolerance():
            # A tighter gate must check again, not reuse a plan a looser one let through; only
            # when changed, so the keys of resources that leave the defaults stay as they were.
            content["accuracy"] = asdict(settings.accuracy)
        if settings.hardware_compatibility != "none":  # absent by default: older keys unchanged
            content["hardwareCompatibility"] = settings.hardware_compatibility
    return digest(content)[:KEY_LENGTH]


def version_key(spec: TritonResNetSpec, engine_keys: Iterable[str]) -> str:
    """The identity of one published model version: its engines plus the serving config it is published
    with."""
    serving = spec.serving
    content = {
        "contract": CONTRACT,
        "engineKeys": sorted(set(engine_keys)),
        "model": spec.model.name,
        "format": spec.model.format,
        "maxBatchSize": spec.engine.max_batch_size,
        "maxQueueDelayMicroseconds": serving.dynamic_batching.max_queue_delay_us,
        "preferredBatchSizes": sorted(serving.dynamic_batching.preferred_batch_sizes),
        "instanceCount": serving.instance_count,
    }
    return digest(content)[:KEY_LENGTH]


# -- names -------------------------------------------------------------------------------


def dns_label(base: str, suffix: str = "") -> str:
    """``base + suffix`` as a DNS label (RFC 1123, at most 63 characters).

    When ``base`` has to be changed (too long, dots or capitals), it is cut and
    a hash of the original appended, so two different bases never collide.
    """
    cleaned = _INVALID_LABEL_CHARS.sub("-", base.lower()).strip("-")
    if cleaned == base and len(base) + len(suffix) <= DNS_LABEL_MAX:
        return base + suffix
    room = DNS_LABEL_MAX - len(suffix) - _HASH_SUFFIX - 1
    head = cleaned[:room].rstrip("-")
    tail = digest(base)[:_HASH_SUFFIX]
    return f"{head}-{tail}{suffix}" if head else f"{tail}{suffix}"


def dns1035_label(base: str, suffix: str = "") -> str:
    """A DNS label that also starts with a letter, as Service names must."""
    label = dns_label(base, suffix)
    return label if label[0].isalpha() else dns_label(f"trn-{base}", suffix)


def build_job_name(cr_name: str, key: str) -> str:
    return dns_label(cr_name, f"-build-{key[:NAME_KEY_LENGTH]}")


def publish_job_name(cr_name: str, key: str) -> str:
    return dns_label(cr_name, f"-publish-{key[:NAME_KEY_LENGTH]}")


def deployment_name(cr_name: str) -> str:
    return dns_label(cr_name, "-triton")


def service_name(cr_name: str) -> str:
    return dns1035_label(cr_name)


def pdb_name(cr_name: str) -> str:
    return dns_label(cr_name, "-triton")


def hpa_name(cr_name: str) -> str:
    return dns_label(cr_name)


def pvc_name(cr_name: str) -> str:
    return dns_label(cr_name, "-models")


# -- labels -------------------------------------------------------------------------------


def label_value(value: str) -> str:
    """A label value (at most 63 characters); long names get the same cut-and-hash as child names."""
    return value if len(value) <= DNS_LABEL_MAX else dns_label(value)


def selector_labels(cr_name: str, component: Component) -> dict[str, str]:
    """The labels that select a component's pods; stable for the resource's life (Deployment selectors are
    immutable)."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: label_value(cr_name),
        LABEL_COMPONENT: component,
    }


def labels(cr_name: str, component: Component, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return selector_labels(cr_name, component) | {LABEL_MANAGED_BY: MANAGER} | dict(extra or {})


def selector(cr_name: str) -> str:
    """``status.selector`` for the scale subresource: a label selector string for the Triton pods."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(cr_name, "triton").items()))
