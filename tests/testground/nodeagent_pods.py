"""Pure pieces of running a pod as local processes: images, env, paths, status.

Nothing here talks to the API server or starts a process, so each rule (which
image runs what, how ``$(VAR)`` expands, how a path under a mount is
rewritten, what a kubelet writes into ``containerStatuses``) reads on its own.
"""

from __future__ import annotations

import base64
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Waiting reason of a container whose image the test ground cannot run: what a kubelet says of an
#: image it cannot pull, so the operator sees the reason it would see on a real node (its message
#: says the test ground does not know the image).
UNKNOWN_IMAGE_REASON = "ErrImagePull"
#: Waiting reason when a referenced Secret/ConfigMap key is missing (as a kubelet says it).
CONFIG_ERROR_REASON = "CreateContainerConfigError"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
#: A kubelet keeps at most this much of a termination message.
MAX_TERMINATION_MESSAGE_BYTES = 4096
#: With FallbackToLogsOnError a kubelet takes the log's last 80 lines, at most 2 KiB of them.
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048

BUILDER_REPOSITORY = "tritonresnet-builder"
TRITON_REPOSITORY = "tritonserver"
OPERATOR_REPOSITORY = "tritonresnet-operator"

#: Environment of the agent that pod processes inherit: enough to find Python
#: and its packages, nothing that grants access (no KUBECONFIG, no AWS keys).
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "TMPDIR", "XDG_CACHE_HOME", "VIRTUAL_ENV")


class ContainerConfigError(Exception):
    """A container cannot start yet: a referenced object or key is missing."""


def image_repository(image: str) -> str:
    """``registry:5000/a/b:tag@sha256:...`` -> ``registry:5000/a/b``."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > last_slash else name


def image_kind(image: str) -> str | None:
    """Which local program stands in for an image: builder, triton, operator, or None."""
    last = image_repository(image).rsplit("/", 1)[-1]
    return {
        BUILDER_REPOSITORY: "builder",
        TRITON_REPOSITORY: "triton",
        OPERATOR_REPOSITORY: "operator",
    }.get(last)


#: What each image's ENTRYPOINT puts after the program name (operator/Dockerfile:
#: ``ENTRYPOINT ["tritonresnet", "operator"]``; builder_image/Dockerfile:
#: ``ENTRYPOINT ["tritonresnet-builder"]``). Triton pods always set ``command``.
IMAGE_ENTRYPOINT_ARGS: dict[str, tuple[str, ...]] = {"operator": ("operator",), "builder": (), "triton": ()}


def program_args(kind: str, command: Sequence[str], args: Sequence[str]) -> list[str]:
    """The arguments the image's program gets, as a container runtime would pass them.

    As in Kubernetes, ``command`` replaces the image's ENTRYPOINT (its first
    word names the program, the rest are leading arguments) and ``args``
    follow; with no ``command`` the ENTRYPOINT's own arguments come first.
    """
    lead = list(command[1:]) if command else list(IMAGE_ENTRYPOINT_ARGS[kind])
    return lead + list(args)


def unknown_image_message(image: str) -> str:
    return (
        f"image {image!r} is not known to the test ground: it runs only images whose repository ends in "
        f"{BUILDER_REPOSITORY}, {TRITON_REPOSITORY} or {OPERATOR_REPOSITORY}"
    )


def with_bind_addresses(args: Sequence[str], pod_ip: str) -> list[str]:
    """Triton listens on the pod's own IP, like a container in its network namespace."""
    out = list(args)
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        if not any(arg == flag or arg.startswith(flag + "=") for arg in args):
            out.append(f"{flag}={pod_ip}")
    return out


def python_command(module: str, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", module, *args]


_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: unknown references stay, ``$$`` escapes."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_RE.sub(replace, text)


Lookup = Callable[[str, str], "Mapping[str, str] | None"]  # (namespace, name) -> data or None


def _key_from(kind: str, ref: Mapping[str, Any], namespace: str, lookup: Lookup) -> str | None:
    data = lookup(namespace, ref["name"])
    optional = bool(ref.get("optional"))
    if data is None or ref["key"] not in data:
        if optional:
            return None
        raise ContainerConfigError(f'{kind} "{ref["name"]}" key "{ref["key"]}" not found')
    return data[ref["key"]]


def field_value(pod: Mapping[str, Any], field_path: str) -> str:
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": status.get("podIP", ""),
        "status.hostIP": status.get("hostIP", ""),
    }
    if field_path in simple:
        return str(simple[field_path])
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", field_path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ContainerConfigError(f"fieldRef {field_path!r} is not supported by the test ground")


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    secrets: Lookup,
    config_maps: Lookup,
) -> dict[str, str]:
    """The container's environment as a kubelet computes it (envFrom first, then env)."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, lookup in (("secretRef", secrets), ("configMapRef", config_maps)):
            if kind in source:
                ref = source[kind]
                data = lookup(namespace, ref["name"])
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise ContainerConfigError(f'{kind[:-3]} "{ref["name"]}" not found')
                env |= {prefix + key: value for key, value in data.items()}
    for item in container.get("env") or []:
        if "valueFrom" not in item:
            env[item["name"]] = expand(item.get("value", ""), env)
            continue
        source = item["valueFrom"]
        value: str | None
        if "secretKeyRef" in source:
            value = _key_from("secret", source["secretKeyRef"], namespace, secrets)
        elif "configMapKeyRef" in source:
            value = _key_from("configmap", source["configMapKeyRef"], namespace, config_maps)
        elif "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"])
        else:
            value = resource_field_value(container, source.get("resourceFieldRef", {}))
        if value is not None:
            env[item["name"]] = value
    return env


def resource_field_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """resourceFieldRef, roughly: the raw quantity (the divisor is not applied)."""
    kind, _, name = str(ref.get("resource", "")).partition(".")
    return str(((container.get("resources") or {}).get(kind) or {}).get(name, "0"))


def decode_secret(data: Mapping[str, str] | None) -> dict[str, str]:
    return {key: base64.b64decode(value).decode("utf-8", "replace") for key, value in (data or {}).items()}


@dataclass(frozen=True)
class PathMap:
    """Container paths -> local folders; the longest matching prefix wins."""

    mounts: tuple[tuple[str, str], ...]  #: (container path, local path), longest first

    @classmethod
    def of(cls, pairs: Mapping[str, str]) -> PathMap:
        cleaned = {container.rstrip("/") or "/": local for container, local in pairs.items()}
        return cls(tuple(sorted(cleaned.items(), key=lambda pair: len(pair[0]), reverse=True)))

    def local(self, path: str) -> str | None:
        for container, local in self.mounts:
            if path == container or path.startswith(container.rstrip("/") + "/"):
                return local + path[len(container) :]
        return None

    def rewrite(self, value: str) -> str:
        """Rewrite ``/mount/x`` and ``--flag=/mount/x``; leave anything else alone."""
        direct = self.local(value)
        if direct is not None:
            return direct
        if value.startswith("-") and "=" in value:
            flag, _, rest = value.partition("=")
            mapped = self.local(rest)
            if mapped is not None:
                return f"{flag}={mapped}"
        return value


def process_env(
    inherited: Mapping[str, str], pod_env: Mapping[str, str], paths: PathMap, host_env: Mapping[str, str]
) -> dict[str, str]:
    """The local process's environment: this machine's inherited variables, the pod's own
    (container paths rewritten to local folders, once), then what the test ground adds.

    Only the pod's values are container paths: a checkout under a folder that a
    pod mounts (``/tmp``, say) must keep its interpreter and library paths.
    """
    return dict(inherited) | {key: paths.rewrite(value) for key, value in pod_env.items()} | dict(host_env)


def termination_message(
    message_file: Path,
    log_file: Path,
    log_offset: int,
    policy: str,
    exit_code: int,
) -> str:
    """What a kubelet puts in ``state.terminated.message``."""
    try:
        message = message_file.read_bytes()
    except OSError:
        message = b""
    if not message.strip() and exit_code != 0 and policy == "FallbackToLogsOnError":
        try:
            with log_file.open("rb") as handle:
                handle.seek(log_offset)
                tail = b"\n".join(handle.read().splitlines()[-FALLBACK_LOG_LINES:])
        except OSError:
            tail = b""
        return tail[-FALLBACK_LOG_BYTES:].decode("utf-8", "replace")
    return message[:MAX_TERMINATION_MESSAGE_BYTES].decode("utf-8", "replace")


def terminated_reason(exit_code: int, oom: bool = False) -> str:
    if oom:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"


def condition(kind: str, ok: bool, since: str, reason: str = "") -> dict[str, Any]:
    cond: dict[str, Any] = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": since}
    if reason and not ok:
        cond["reason"] = reason
    return cond


def state_dict(state: Mapping[str, Any] | None) -> dict[str, Any]:
    """A container state with the other two keys explicitly null.

    Status goes out as a strategic merge patch, where a state key left out
    would survive from the previous write (``waiting`` next to ``running``).
    """
    out: dict[str, Any] = {"waiting": None, "running": None, "terminated": None}
    for key, value in (state or {}).items():
        out[key] = value
    return out


def pod_phase(restart_policy: str, states: Sequence[str], exit_codes: Sequence[int | None]) -> str:
    """Phase from the containers' states (``waiting``/``running``/``terminated``)."""
    if not states:
        return "Pending"
    if all(state == "terminated" for state in states):
        if all(code == 0 for code in exit_codes):
            return "Succeeded" if restart_policy != "Always" else "Running"
        if restart_policy == "Never":
            return "Failed"
    if any(state == "running" for state in states):
        return "Running"
    if all(state == "terminated" for state in states):
        return "Running"  # about to be restarted
    return "Pending"
