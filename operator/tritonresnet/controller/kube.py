"""The operator's one door to the Kubernetes API: server-side apply, delete, status, events.

Every write the operator makes goes through :class:`Kube`, which keeps two
promises that GitOps tools and a quiet control plane depend on:

* a child is created (never applied) when the operator has not seen it, so
  an object of that name that someone else made is refused, not taken over;
* children are written with server-side apply under one field manager, and
  only when the rendered object differs from what was last applied (the
  reconcile decides that with ``children.is_current``);
* a TritonResNet is only ever written through its ``status`` subresource;
  ``spec`` and ``metadata`` stay the user's (and Git's).
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from tritonresnet.api.names import API_VERSION, GROUP, KIND, PLURAL, VERSION

log = logging.getLogger(__name__)

FIELD_MANAGER = "tritonresnet-operator"

# Plural resource names of the kinds the operator owns.
_PLURALS = {
    "Job": "jobs",
    "Deployment": "deployments",
    "Service": "services",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "NetworkPolicy": "networkpolicies",
    "Secret": "secrets",
}


def object_path(api_version: str, kind: str, namespace: str, name: str = "") -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{_PLURALS[kind]}"
    return f"{path}/{name}" if name else path


def _status_body(exc: ApiException) -> dict[str, Any]:
    """The API server's ``Status`` object in a refusal's body; empty when the body is not one."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def api_error_message(exc: ApiException) -> str:
    """The API server's own words for a refused request (its Status ``message``), else the HTTP reason."""
    return f"{exc.status}: {_status_body(exc).get('message') or exc.reason}"


def namespace_terminating(exc: BaseException) -> bool:
    """The namespace is being deleted: nothing can be created in it any more, and retrying is noise."""
    if not isinstance(exc, ApiException) or exc.status != 403:
        return False
    details = _status_body(exc).get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    return any(isinstance(c, dict) and c.get("reason") == "NamespaceTerminating" for c in causes or ())


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """Synchronous API adapter; the kopf layer calls it from worker threads."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        return self.api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            response_types_map={200: "object", 201: "object", 202: "object"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=True,
        )

    def apply(self, obj: Mapping[str, Any]) -> Any:
        """Server-side apply ``obj`` (already carrying its applied-hash annotation)."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        log.info("apply %s %s/%s", obj["kind"], meta["namespace"], meta["name"])
        return self._call(
            "PATCH",
            path,
            body=obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def create(self, obj: Mapping[str, Any]) -> Any:
        """Create ``obj``; the API server answers 409 when an object of that name exists.

        The first write of a child is a create, never an apply: a forced apply
        onto an object someone else made would take it over (and its owner
        reference would let the garbage collector delete it with the resource).
        """
        meta = obj["metadata"]
        log.info("create %s %s/%s", obj["kind"], meta["namespace"], meta["name"])
        return self._call(
            "POST",
            object_path(obj["apiVersion"], obj["kind"], meta["namespace"]),
            body=obj,
            query=[("fieldManager", FIELD_MANAGER)],
        )

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as stored; None when there is none."""
        try:
            found: dict[str, Any] = self._call("GET", object_path(api_version, kind, namespace, name))
            return found
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        log.info("delete %s %s/%s", kind, namespace, name)
        try:
            self._call(
                "DELETE",
                object_path(api_version, kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource; lists (conditions, targets) are replaced whole."""
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status)}
        )

    def post_event(self, resource: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = resource["metadata"]
        now = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:  # an event is best effort; never fail a reconcile for it
            if namespace_terminating(exc):
                return  # nobody will read it; the namespace is going away
            log.warning(
                "could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc.reason
            )
