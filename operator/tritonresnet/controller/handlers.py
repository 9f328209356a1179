"""kopf wiring: watches feed the runtime's cache; the runtime (``runtime.py``) does the rest.

Only raw-event handlers (``kopf.on.event``) are used. They keep no state on
the objects: kopf writes no annotations, no finalizers and no progress into a
TritonResNet, so Git stays the only owner of ``spec`` and ``metadata`` and
GitOps tools see no drift. The cluster is the state: every pass recomputes
the plan from the cached objects (see ``reconcile.py``), and a periodic
resync catches what no event announces. A pass that changes nothing writes
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
from kubernetes import client, config

from tritonresnet.api import names
from tritonresnet.controller import metrics
from tritonresnet.controller.kube import Kube
from tritonresnet.controller.runtime import Runtime
from tritonresnet.controller.settings import Settings

# Kinds the operator owns, watched so the cache knows what exists.
CHILD_RESOURCES: tuple[tuple[str, str, str, str], ...] = (
    ("batch", "v1", "jobs", "Job"),
    ("", "v1", "pods", "Pod"),
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "services", "Service"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    # Not Secrets: the operator creates each resource's Triton control Secret but may never
    # read Secrets (render.CREATE_ONLY_KINDS), so it neither lists nor watches them.
)
_MANAGED = {names.LABEL_MANAGED_BY: names.MANAGER}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # We post our own events (with reasons a human can grep) and keep no
    # kopf state on the objects; a stalled watch is restarted after a minute.
    settings.posting.enabled = False
    # One line per watch event ("Handler 'watch-pods' succeeded") drowns what matters.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    # The Settings given to run(); read from the environment when kopf runs this module itself.
    options: Settings = memo.get("settings") or Settings.from_env(os.environ)
    memo["runtime"] = runtime = Runtime(Kube(_api_client()), options)
    if options.metrics_address:
        metrics.serve(runtime.metrics, options.metrics_address)
        logging.getLogger(__name__).info("serving metrics at http://%s/metrics", options.metrics_address)
    runtime.start()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.stop()


# The event handlers are coroutines on purpose: the runtime's cache and queue
# belong to the event loop (kopf would run a plain function in a thread).
@kopf.on.event(names.GROUP, names.VERSION, names.PLURAL)
async def resource_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo["runtime"].observe_resource(event.get("type"), body)


def _register_child_watches(resources: Sequence[tuple[str, str, str, str]]) -> None:
    for group, version, plural, kind in resources:

        async def child_event(
            event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, kind: str = kind, **_: Any
        ) -> None:
            memo["runtime"].observe_child(event.get("type"), kind, body)

        kopf.on.event(group, version, plural, labels=_MANAGED, id=f"watch-{plural}")(child_event)


_register_child_watches(CHILD_RESOURCES)


# gpuKinds Auto reads the GPU kinds from the Nodes. Nodes are cluster-scoped, so kopf watches
# them cluster-wide even when it serves a list of namespaces (RBAC: list and watch on nodes,
# in a ClusterRole in both install modes). One watch feeds one shared view (runtime.nodes).
@kopf.on.event("", "v1", "nodes", id="watch-nodes")
async def node_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo["runtime"].observe_node(event.get("type"), body)


def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


def run(settings: Settings) -> None:
    """Run the operator until interrupted (the CLI's ``tritonresnet operator``)."""
    kopf.configure(
        verbose=settings.verbose,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    asyncio.run(
        kopf.operator(
            standalone=settings.standalone,
            peering_name=settings.peering or None,
            namespaces=list(settings.namespaces),
            clusterwide=settings.all_namespaces,
            liveness_endpoint=settings.liveness_endpoint or None,
            memo=kopf.Memo(settings=settings),
        )
    )
