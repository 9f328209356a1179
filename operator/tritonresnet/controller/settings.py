"""Operator options: one frozen :class:`Settings`, read from the environment.

The CLI's flags override the same fields with :func:`dataclasses.replace`, so
the environment (what the Helm chart sets) and the flags (what a developer
types) cannot drift apart.

Defaults:

* ``builder_registry`` is ``ghcr.io/tritonresnet``: where the project's builder
  image is meant to be published. It is only a default; clusters that mirror
  images set ``TRITONRESNET_BUILDER_REGISTRY`` to their own registry.
* ``triton_image`` is NVIDIA's public Triton repository on NGC; the tag is
  ``<release>-py3``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from tritonresnet.api.spec import RELEASE_RE

ENV_PREFIX = "TRITONRESNET_"

DEFAULT_BUILDER_REGISTRY = "ghcr.io/tritonresnet"
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver"
DEFAULT_RELEASE = "25.01"


LogFormat = Literal["plain", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("plain", "json")


class SettingsError(ValueError):
    """An operator option with a value we cannot use; names the variable."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable
        self.message = message


@dataclass(frozen=True)
class Settings:
    #: Namespaces to watch; empty means every namespace (cluster-wide).
    namespaces: tuple[str, ...] = ()
    #: Registry (and path) holding ``tritonresnet-builder:<release>``.
    builder_registry: str = DEFAULT_BUILDER_REGISTRY
    #: Triton image repository; the tag is ``<release>-py3``.
    triton_image: str = DEFAULT_TRITON_IMAGE
    #: NGC release used when a resource does not name one.
    default_release: str = DEFAULT_RELEASE
    log_format: LogFormat = "plain"
    #: How often every resource is re-checked even without events.
    resync_seconds: float = 60.0
    #: Time allowed for verifying one Triton endpoint (health, metadata, smoke inference).
    verify_timeout_seconds: float = 30.0
    #: How long finished build and publish Jobs stay around for inspection.
    job_ttl_seconds: int = 3600
    #: imagePullSecrets added to builder and Triton pods (private mirrors).
    image_pull_secrets: tuple[str, ...] = ()

    @property
    def all_namespaces(self) -> bool:
        return not self.namespaces

    def builder_image(self, release: str) -> str:
        return f"{self.builder_registry.rstrip('/')}/tritonresnet-builder:{release}"

    def triton_server_image(self, release: str) -> str:
        return f"{self.triton_image}:{release}-py3"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read ``TRITONRESNET_*`` variables; unset or empty ones keep their default."""

        def get(name: str) -> str:
            return environ.get(ENV_PREFIX + name, "").strip()

        defaults = cls()
        return cls(
            namespaces=_namespaces(get("NAMESPACES")),
            builder_registry=get("BUILDER_REGISTRY") or defaults.builder_registry,
            triton_image=get("TRITON_IMAGE") or defaults.triton_image,
            default_release=_release(get("DEFAULT_RELEASE") or defaults.default_release),
            log_format=_log_format(get("LOG_FORMAT") or defaults.log_format),
            resync_seconds=_positive("RESYNC_SECONDS", get("RESYNC_SECONDS"), defaults.resync_seconds),
            verify_timeout_seconds=_positive(
                "VERIFY_TIMEOUT_SECONDS", get("VERIFY_TIMEOUT_SECONDS"), defaults.verify_timeout_seconds
            ),
            job_ttl_seconds=int(
                _positive("JOB_TTL_SECONDS", get("JOB_TTL_SECONDS"), defaults.job_ttl_seconds)
            ),
            image_pull_secrets=_csv(get("IMAGE_PULL_SECRETS")),
        )


def _csv(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _namespaces(text: str) -> tuple[str, ...]:
    """``""`` or ``*`` mean all namespaces; otherwise a comma-separated list."""
    items = _csv(text)
    return () if items in ((), ("*",)) else tuple(sorted(set(items)))


def _release(text: str) -> str:
    if not RELEASE_RE.match(text):
        raise SettingsError(ENV_PREFIX + "DEFAULT_RELEASE", f"{text!r} is not an NGC release like 25.01")
    return text


def _log_format(text: str) -> LogFormat:
    for known in LOG_FORMATS:
        if text == known:
            return known
    raise SettingsError(ENV_PREFIX + "LOG_FORMAT", f"{text!r} is not one of {', '.join(LOG_FORMATS)}")


def _positive(name: str, text: str, default: float) -> float:
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(ENV_PREFIX + name, f"{text!r} is not a number") from None
    if value <= 0:
        raise SettingsError(ENV_PREFIX + name, f"{text!r} must be greater than 0")
    return value
