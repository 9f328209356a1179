"""The kube-apiserver's audit log on the test ground: who asked for what, read back.

``apiserver_request_total`` has no client label (verb, group, version,
resource, subresource, scope, component and code only), so the one place that
says which identity made which request is the apiserver's audit log. The
test ground's apiserver always writes one (``start_control_plane``), in the
control plane's workdir, at Metadata level (user, verb, resource, namespace,
name, response code, RBAC decision; never a body) and only for the identities
its policy names; every other request is dropped before it is serialised, so
the log stays small and cheap while nodes, controllers and tests make most of
the traffic.

By default the audited identity is the operator's own ServiceAccount
(:data:`OPERATOR_USER`): the e2e ``operator`` fixture runs the operator as it,
bound to exactly the Helm chart's default RBAC, and
``tests/e2e/test_permissions.py`` compares what it used with what the chart
grants (:func:`permissions`).

    log = AuditLog(cp.audit_log)
    used = permissions(log.by_user(OPERATOR_USER))
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

#: Where the e2e operator's identity lives. Not the chart's default namespace:
#: ``tests/e2e/test_install.py`` installs the kustomize base there and deletes it
#: afterwards, with the ServiceAccount (and its tokens) in it.
OPERATOR_NAMESPACE = "tritonresnet-e2e"
#: The Helm release the e2e identity's RBAC is rendered as (names only; the rules
#: are the chart's default, cluster-wide ones).
OPERATOR_RELEASE = "tritonresnet-e2e"
#: ``fullnameOverride`` of that release: the ServiceAccount's and the roles' name.
#: Unlike the chart's default name, it collides with no install the tests make.
OPERATOR_ACCOUNT = "tritonresnet-e2e-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
CLUSTER, NAMESPACE = "cluster", "namespace"


def policy(users: Sequence[str] = (OPERATOR_USER,)) -> dict[str, Any]:
    """An audit policy: Metadata for requests by ``users``, nothing for anybody else.

    ``RequestReceived`` is left out (a request then has one line, written when
    it completes); ``ResponseStarted`` is kept, which only long-running
    requests have: a watch is then seen when it starts, not only when it ends
    up to a minute later.
    """
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "users": list(users)}, {"level": "None"}],
    }


def apiserver_flags(policy_file: Path, log_path: Path) -> list[str]:
    return [
        f"--audit-policy-file={policy_file}",
        f"--audit-log-path={log_path}",
        "--audit-log-maxsize=0",  # never rotate: a reader wants the whole session
        "--audit-log-format=json",
    ]


@dataclass(frozen=True, order=True)
class Permission:
    """What RBAC decides a request on: (verb, API group, resource[/subresource], scope).

    ``scope`` is ``cluster`` for a request without a namespace (a cluster-scoped
    kind, or a list or watch across all namespaces) and ``namespace`` otherwise.
    """

    verb: str
    group: str
    resource: str
    scope: str

    def as_dict(self) -> dict[str, str]:
        return {"verb": self.verb, "group": self.group, "resource": self.resource, "scope": self.scope}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Permission:
        return cls(str(raw["verb"]), str(raw["group"]), str(raw["resource"]), str(raw["scope"]))

    def __str__(self) -> str:
        group = self.group or "core"
        return f"{self.verb} {group}/{self.resource} ({self.scope})"


@dataclass(frozen=True)
class AuditEvent:
    """One API request, as the audit log tells it."""

    at: float  #: epoch seconds (stageTimestamp, microseconds)
    stage: str  #: ResponseComplete, or ResponseStarted for a watch that just began
    user: str
    verb: str
    group: str  #: "" for the core group
    resource: str  #: "jobs", "tritonresnets/status", ... (resource/subresource); "" for a non-resource URL
    namespace: str
    name: str
    code: int
    decision: str  #: RBAC's word: "allow" or "forbid"
    uri: str
    user_agent: str
    audit_id: str

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS

    @property
    def is_resource(self) -> bool:
        """An API object request (not discovery, /version, /healthz ...)."""
        return bool(self.resource)

    @property
    def permission(self) -> Permission:
        return Permission(self.verb, self.group, self.resource, NAMESPACE if self.namespace else CLUSTER)


def _epoch(stamp: str) -> float:
    # "2026-01-02T03:04:05.123456Z"
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def parse_audit_line(line: str) -> AuditEvent | None:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError:
        return None  # a line being written right now
    ref = raw.get("objectRef") or {}
    resource = ref.get("resource") or ""
    if resource and ref.get("subresource"):
        resource = f"{resource}/{ref['subresource']}"
    annotations = raw.get("annotations") or {}
    return AuditEvent(
        at=_epoch(raw.get("stageTimestamp") or raw["requestReceivedTimestamp"]),
        stage=raw.get("stage", ""),
        user=(raw.get("user") or {}).get("username", ""),
        verb=raw.get("verb", ""),
        group=ref.get("apiGroup") or "",
        resource=resource,
        namespace=ref.get("namespace") or "",
        name=ref.get("name") or "",
        code=int((raw.get("responseStatus") or {}).get("code") or 0),
        decision=annotations.get("authorization.k8s.io/decision", ""),
        uri=raw.get("requestURI", ""),
        user_agent=raw.get("userAgent", ""),
        audit_id=raw.get("auditID", ""),
    )


class AuditLog:
    """Reads an audit log incrementally (the apiserver keeps appending to it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.events: list[AuditEvent] = []

    def refresh(self) -> list[AuditEvent]:
        """Read what was appended since the last call; returns the new events."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1  # keep a half-written last line for next time
        self._offset += end
        lines = data[:end].decode(errors="replace").splitlines()
        new = [event for event in map(parse_audit_line, lines) if event is not None]
        self.events.extend(new)
        return new

    def by_user(self, user: str, since: float = 0.0, until: float = float("inf")) -> list[AuditEvent]:
        self.refresh()
        return [e for e in self.events if e.user == user and since <= e.at <= until]


def permissions(events: Iterable[AuditEvent]) -> set[Permission]:
    """The permissions RBAC was asked for by these requests (discovery and other non-resource
    URLs left out: every authenticated user has those from the cluster's default roles)."""
    return {event.permission for event in events if event.is_resource}


def count_by(events: Iterable[AuditEvent], key: Callable[[AuditEvent], Any]) -> Counter[Any]:
    return Counter(key(e) for e in events)


def verb_resource(event: AuditEvent) -> str:
    return f"{event.verb} {event.resource}"


# -- what RBAC grants, and what the e2e suite was seen to use ------------------------------

Grant = tuple[str, str, str]  #: (verb, API group, resource[/subresource]): a rule's cell, any scope

RBAC_KINDS = ("ClusterRole", "Role")


def rbac_grants(objects: Iterable[Mapping[str, Any]]) -> set[Grant]:
    """Every (verb, group, resource) the Roles and ClusterRoles among ``objects`` grant."""
    return {
        (verb, group, resource)
        for obj in objects
        if obj.get("kind") in RBAC_KINDS
        for rule in obj.get("rules") or ()
        for group in rule.get("apiGroups") or ()
        for resource in rule.get("resources") or ()
        for verb in rule.get("verbs") or ()
    }


def grant_of(permission: Permission) -> Grant:
    """A permission modulo scope: what a rule names (a ClusterRole grants it in every
    namespace and cluster-wide, a Role in its namespace)."""
    return permission.verb, permission.group, permission.resource


@dataclass(frozen=True)
class ObservedRbac:
    """``tests/e2e/rbac_observed.json``: what the operator's identity used across the e2e suite.

    ``requests`` are read from the audit log. ``admission`` are rights an admission
    plugin checks inside another request (no audit line of their own); each has a
    ``why`` and an e2e test that shows the request fails without it.
    """

    requests: frozenset[Permission]
    admission: frozenset[Permission]
    why: Mapping[Permission, str]

    @property
    def grants(self) -> set[Grant]:
        return {grant_of(p) for p in self.requests | self.admission}

    @classmethod
    def load(cls, path: Path) -> ObservedRbac:
        raw = json.loads(path.read_text())
        admission = {Permission.from_dict(item): str(item["why"]) for item in raw["admission"]}
        return cls(frozenset(map(Permission.from_dict, raw["requests"])), frozenset(admission), admission)

    def dump(self, path: Path, about: str) -> None:
        """Write the file: one permission a line, sorted, so a change reads as a one-line diff."""

        def entries(items: Iterable[Mapping[str, str]]) -> str:
            return ",\n".join(f"    {json.dumps(dict(item))}" for item in items)

        requests = entries(p.as_dict() for p in sorted(self.requests))
        admission = entries(p.as_dict() | {"why": self.why[p]} for p in sorted(self.admission))
        path.write_text(
            "{\n"
            f'  "about": {json.dumps(about)},\n'
            f'  "identity": {json.dumps(OPERATOR_USER)},\n'
            f'  "requests": [\n{requests}\n  ],\n'
            f'  "admission": [\n{admission}\n  ]\n'
            "}\n"
        )
