"""Operator options: one frozen :class:`Settings`, from the environment and the command line.

Every option is one :class:`Option` in :data:`OPTIONS`: a field of
:class:`Settings` (which holds its default), a ``TRITONRESNET_<FIELD>``
environment variable (what the Helm chart sets), flags of ``tritonresnet
operator`` (what a developer types) and one parser for its text. Both
:func:`settings_from` and :func:`add_arguments` walk that table, so the
variables, the flags and ``--help`` cannot drift apart; a flag given on the
command line wins over its variable.

Defaults:

* ``builder_registry`` is ``ghcr.io/tritonresnet``: where the project's builder
  image is meant to be published. It is only a default; clusters that mirror
  images set ``TRITONRESNET_BUILDER_REGISTRY`` to their own registry.
* ``triton_image`` is NVIDIA's public Triton repository on NGC; the tag is
  ``<release>-py3``.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from tritonresnet.api.spec import RELEASE_RE, TritonResNetSpec

ENV_PREFIX = "TRITONRESNET_"

DEFAULT_BUILDER_REGISTRY = "ghcr.io/tritonresnet"
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver"
DEFAULT_RELEASE = "25.01"
#: The label Kubernetes puts on every namespace, naming the usual monitoring namespace.
DEFAULT_METRICS_NAMESPACE_LABEL = "kubernetes.io/metadata.name=monitoring"
#: Shorter keys are refused: every credential is only as strong as the key behind it.
MIN_CONTROL_KEY_LENGTH = 32


LogFormat = Literal["plain", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("plain", "json")
#: How the operator reaches each resource's Service to verify it as a client would:
#: ``dns`` by ``<service>.<namespace>.svc`` (an operator inside the cluster), ``cluster-ip``
#: by its ClusterIP (an operator on a node, or outside the cluster's DNS), ``off`` not at all
#: (an operator that reaches pods but no Service: only the pods are verified).
ServiceCheck = Literal["dns", "cluster-ip", "off"]
SERVICE_CHECKS: tuple[ServiceCheck, ...] = ("dns", "cluster-ip", "off")


class SettingsError(ValueError):
    """An operator option with a value we cannot use; names the variable or flag."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable
        self.message = message


@dataclass(frozen=True)
class Settings:
    #: Namespaces to watch; empty means every namespace (cluster-wide).
    namespaces: tuple[str, ...] = ()
    #: kopf peering object coordinating several replicas; empty: standalone (one replica).
    peering: str = ""
    #: URL where kopf serves its liveness probe; empty: none.
    liveness_endpoint: str = ""
    #: ``host:port`` where the operator serves its Prometheus metrics (``/metrics``); empty: none.
    metrics_address: str = ""
    log_format: LogFormat = "plain"
    #: kopf's debug logging.
    verbose: bool = False
    #: Registry (and path) holding ``tritonresnet-builder:<release>``.
    builder_registry: str = DEFAULT_BUILDER_REGISTRY
    #: Triton image repository; the tag is ``<release>-py3``.
    triton_image: str = DEFAULT_TRITON_IMAGE
    #: NGC release used when a resource does not name one (see :meth:`release_for`).
    default_release: str = DEFAULT_RELEASE
    #: imagePullSecrets added to builder and Triton pods (private mirrors).
    image_pull_secrets: tuple[str, ...] = ()
    #: How often every resource is re-checked even without events.
    resync_seconds: float = 60.0
    #: How often an endpoint already verified is checked again while it is served.
    verify_interval_seconds: float = 60.0
    #: Time allowed for verifying one Triton endpoint (health, metadata, smoke inference).
    verify_timeout_seconds: float = 30.0
    #: Besides every pod, the resource's Service is verified, reached this way.
    verify_service: ServiceCheck = "dns"
    #: How long finished build and publish Jobs stay around for inspection.
    job_ttl_seconds: int = 3600
    #: Reconcile threads; a pass mostly waits on the API server, so more than
    #: the cores shortens the queue when many resources change at once.
    workers: int = 8
    #: The key each resource's Triton control credential is derived from
    #: (``render.triton_control_token``); empty: Triton's control APIs are left open.
    #: Never shown: it is left out of the repr, so a logged Settings does not carry it.
    triton_control_key: str = field(default="", repr=False)
    #: Namespaces (besides each resource's own) whose pods may call Triton's HTTP and
    #: gRPC ports; ``*``: every namespace. The chart adds the operator's own namespace.
    triton_clients: tuple[str, ...] = ("*",)
    #: ``key=value``: namespaces with this label may scrape Triton's metrics port.
    metrics_namespace_label: str = DEFAULT_METRICS_NAMESPACE_LABEL

    @property
    def all_namespaces(self) -> bool:
        return not self.namespaces

    @property
    def standalone(self) -> bool:
        return not self.peering

    def release_for(self, spec: TritonResNetSpec) -> str:
        """The NGC release of ``spec``'s builder and Triton images and engine keys.

        The only place that applies the default, so the images a resource
        runs and the keys its engines are stored under cannot disagree.
        """
        return spec.serving.release or self.default_release

    def builder_image(self, release: str) -> str:
        return f"{self.builder_registry.rstrip('/')}/tritonresnet-builder:{release}"

    def triton_server_image(self, release: str) -> str:
        return f"{self.triton_image}:{release}-py3"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read ``TRITONRESNET_*`` variables; unset or empty ones keep their default."""
        return settings_from(environ)


DEFAULTS = Settings()


# -- parsers of one value's text; a ValueError says what is wrong ------------------------------

# RFC 1123 names, as the API server checks them: a namespace is a label, a
# Secret or a peering object a subdomain. Checked here so a typo stops the
# operator at start-up instead of surfacing as refused applies later.
_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _text(text: str) -> str:
    if any(character.isspace() for character in text):
        raise ValueError("must not contain spaces")
    return text


def _namespace(text: str) -> str:
    if text != "*" and not _LABEL_RE.match(text):
        raise ValueError("is not a namespace name (lower-case letters, digits and '-')")
    return text


def _object_name(text: str) -> str:
    if not _SUBDOMAIN_RE.match(text):
        raise ValueError("is not a Kubernetes object name (lower-case letters, digits, '-' and '.')")
    return text


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("is not an http URL like http://0.0.0.0:8080/healthz")
    return text


def _address(text: str) -> str:
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise ValueError("is not an address like 0.0.0.0:8081")
    return text


def _release(text: str) -> str:
    if not RELEASE_RE.match(text):
        raise ValueError("is not an NGC release like 25.01")
    return text


_Choice = TypeVar("_Choice", bound=str)


def _one_of(choices: tuple[_Choice, ...]) -> Callable[[str], _Choice]:
    """A parser of one of ``choices`` (a Literal's values), typed as that Literal."""

    def parse(text: str) -> _Choice:
        for known in choices:
            if text == known:
                return known
        raise ValueError(f"is not one of {', '.join(choices)}")

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    # inf would pass "greater than 0" and then put a loop to sleep forever.
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a number greater than 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("is not a whole number") from None
    if value < 1:
        raise ValueError("must be at least 1")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _switch(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"is not one of {', '.join(_TRUE + _FALSE)}")


def _control_key(text: str) -> str:
    if len(text) < MIN_CONTROL_KEY_LENGTH or any(character.isspace() for character in text):
        raise ValueError(f"must be at least {MIN_CONTROL_KEY_LENGTH} characters without spaces")
    return text


_LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _label(text: str) -> str:
    key, equals, value = text.partition("=")
    if not equals or not _LABEL_KEY_RE.match(key) or not _LABEL_VALUE_RE.match(value):
        raise ValueError("is not a label like kubernetes.io/metadata.name=monitoring")
    return text


def _clients(items: tuple[str, ...]) -> tuple[str, ...]:
    """``*`` anywhere means every namespace; otherwise the names, once each."""
    return ("*",) if "*" in items else _unique(items)


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _namespaces(items: tuple[str, ...]) -> tuple[str, ...]:
    """``*`` anywhere means every namespace, as an empty list does."""
    return () if "*" in items else _unique(items)


# -- the table -------------------------------------------------------------------------------

#: ``value``: one flag argument; ``list``: a repeatable flag, or a comma-separated
#: variable; ``switch``: a flag without argument, or a yes/no variable.
Kind = Literal["value", "list", "switch"]


@dataclass(frozen=True)
class Option:
    field: str
    flags: tuple[str, ...]
    help: str
    #: One value's text (one item of a list) to the field's value; raises ValueError saying why not.
    parse: Callable[[str], Any] = _text
    kind: Kind = "value"
    metavar: str = ""
    #: Flags that set the option back to its default, whatever the environment says.
    unset_flags: tuple[str, ...] = ()
    unset_help: str = ""
    #: How ``--help`` and the README show the default, when the value itself says little.
    default_text: str = ""
    #: A list's items, parsed, to the field's value.
    collect: Callable[[tuple[str, ...]], tuple[str, ...]] = _unique
    #: The value is a secret: an error about it never repeats it.
    secret: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()

    @property
    def flag(self) -> str:
        """The flag error messages name: the long one."""
        return next((f for f in self.flags if f.startswith("--")), self.flags[0])

    @property
    def default(self) -> Any:
        return getattr(DEFAULTS, self.field)

    def shown_default(self) -> str:
        if self.default_text:
            return self.default_text
        value = self.default
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    def read(self, source: str, raw: str | bool | Sequence[str]) -> Any:
        """The field's value from a variable's text or a flag's argument(s); ``source`` names either.

        Empty text keeps the default, so a chart can set a variable to "" for
        "the operator's choice".
        """
        if isinstance(raw, bool):  # a switch's flag was given
            return raw
        if self.kind == "list":
            # Commas separate items in a flag's argument too: `-n a,b` is `-n a -n b`.
            texts = [part for text in ([raw] if isinstance(raw, str) else raw) for part in text.split(",")]
            items = tuple(text.strip() for text in texts if text.strip())
            return self.collect(tuple(self._parse(source, item) for item in items)) if items else self.default
        if not isinstance(raw, str):
            raise TypeError(f"{source}: one value expected, not {raw!r}")
        text = raw.strip()
        return self._parse(source, text) if text else self.default

    def _parse(self, source: str, text: str) -> Any:
        try:
            return self.parse(text)
        except ValueError as error:
            raise SettingsError(source, f"{'the value' if self.secret else repr(text)} {error}") from None


OPTIONS: tuple[Option, ...] = (
    Option(
        "namespaces",
        ("-n", "--namespace"),
        "watch this namespace; repeatable",
        _namespace,
        kind="list",
        metavar="NS",
        unset_flags=("-A", "--all-namespaces"),
        unset_help="watch every namespace",
        default_text="all namespaces",
        collect=_namespaces,
    ),
    Option(
        "peering",
        ("--peering",),
        "coordinate replicas through this kopf peering object",
        _object_name,
        metavar="NAME",
        unset_flags=("--standalone",),
        unset_help="no peering: a single replica",
        default_text="standalone",
    ),
    Option(
        "liveness_endpoint",
        ("--liveness",),
        "serve kopf's liveness probe at this URL, e.g. http://0.0.0.0:8080/healthz",
        _url,
        metavar="URL",
        default_text="off",
    ),
    Option(
        "metrics_address",
        ("--metrics-address",),
        "serve the operator's Prometheus metrics at http://HOST:PORT/metrics, e.g. 0.0.0.0:8081",
        _address,
        metavar="HOST:PORT",
        default_text="off",
    ),
    Option(
        "log_format",
        ("--log-format",),
        "log lines as plain text or JSON",
        _one_of(LOG_FORMATS),
        metavar="plain|json",
    ),
    Option("verbose", ("--verbose",), "debug logging", _switch, kind="switch"),
    Option(
        "builder_registry",
        ("--builder-registry",),
        "registry and path of tritonresnet-builder:<release>",
        metavar="REGISTRY",
    ),
    Option(
        "triton_image",
        ("--triton-image",),
        "Triton image repository; the tag is <release>-py3",
        metavar="IMAGE",
    ),
    Option(
        "default_release",
        ("--default-release",),
        "NGC release for resources without spec.serving.release",
        _release,
        metavar="YY.MM",
    ),
    Option(
        "image_pull_secrets",
        ("--image-pull-secret",),
        "pull Secret added to builder and Triton pods; repeatable, comma-separated in the variable",
        _object_name,
        kind="list",
        metavar="NAME",
        default_text="none",
    ),
    Option(
        "resync_seconds",
        ("--resync-seconds",),
        "how often every resource is re-checked without events",
        _seconds,
        metavar="S",
    ),
    Option(
        "verify_interval_seconds",
        ("--verify-interval-seconds",),
        "how often a served endpoint is verified again",
        _seconds,
        metavar="S",
    ),
    Option(
        "verify_timeout_seconds",
        ("--verify-timeout-seconds",),
        "time for verifying one Triton endpoint",
        _seconds,
        metavar="S",
    ),
    Option(
        "verify_service",
        ("--verify-service",),
        "how the Service is reached when it is verified: by its DNS name, its ClusterIP, or off",
        _one_of(SERVICE_CHECKS),
        metavar="|".join(SERVICE_CHECKS),
    ),
    Option(
        "job_ttl_seconds",
        ("--job-ttl-seconds",),
        "how long finished build and publish Jobs stay for inspection",
        _count,
        metavar="S",
    ),
    Option("workers", ("--workers",), "reconcile threads", _count, metavar="N"),
    Option(
        "triton_control_key",
        ("--triton-control-key",),
        "key Triton's control credentials are derived from (set the variable: a flag shows in ps)",
        _control_key,
        metavar="KEY",
        default_text="none: Triton's control APIs open",
        secret=True,
    ),
    Option(
        "triton_clients",
        ("--triton-client",),
        "namespace whose pods may call Triton, besides the resource's own; repeatable, * for all",
        _namespace,
        kind="list",
        metavar="NS",
        default_text="*",
        collect=_clients,
    ),
    Option(
        "metrics_namespace_label",
        ("--metrics-namespace-label",),
        "namespaces with this label may scrape Triton's metrics port",
        _label,
        metavar="KEY=VALUE",
    ),
)

OPTIONS_BY_FIELD: Mapping[str, Option] = {option.field: option for option in OPTIONS}


def settings_from(environ: Mapping[str, str], flags: argparse.Namespace | None = None) -> Settings:
    """Settings from ``TRITONRESNET_*`` variables, overridden by the flags given in ``flags``.

    ``flags`` is what a parser set up by :func:`add_arguments` returns: an
    option's attribute is there only when one of its flags was given.
    Raises :class:`SettingsError` naming the first variable or flag with a bad value.
    """
    values: dict[str, Any] = {}
    for option in OPTIONS:
        given = getattr(flags, option.field, None)
        if given is not None:
            values[option.field] = option.read(option.flag, given)
        else:
            values[option.field] = option.read(option.env, environ.get(option.env, ""))
    return Settings(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag (and its opposite, if any) per option; values stay text until :func:`settings_from`.

    Every default is ``SUPPRESS``, so an absent flag leaves no attribute and
    the variable applies; the defaults shown in ``--help`` come from :class:`Settings`.
    """
    for option in OPTIONS:
        where: Any = parser.add_mutually_exclusive_group() if option.unset_flags else parser
        help_text = f"{option.help} [default: {option.shown_default()}; env {option.env}]".replace("%", "%%")
        common: dict[str, Any] = {"dest": option.field, "default": argparse.SUPPRESS, "help": help_text}
        if option.kind == "switch":
            where.add_argument(*option.flags, action="store_true", **common)
        else:
            action = "append" if option.kind == "list" else "store"
            where.add_argument(*option.flags, action=action, metavar=option.metavar or None, **common)
        if option.unset_flags:
            # The empty input is the default, for a value ("") as for a list ([]).
            where.add_argument(
                *option.unset_flags,
                action="store_const",
                const=[] if option.kind == "list" else "",
                dest=option.field,
                default=argparse.SUPPRESS,
                help=f"{option.unset_help}, whatever {option.env} says",
            )
