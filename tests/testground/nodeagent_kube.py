"""A thin dict-in, dict-out layer over the official client, for the node agent.

The agent handles every object as the JSON the API server sends: it copies
fields between objects and writes status patches, and the generated models
would only add conversions (and memory). So it calls ``ApiClient.call_api``
on resource paths and keeps list+watch loops here, robust to expired resource
versions (410) and to the API server going away and coming back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"

#: A watch ends server-side after this long; the loop then resumes from its last version.
WATCH_SECONDS = 240
#: Connect and read timeouts of ordinary requests.
REQUEST_TIMEOUT = (5, 30)

Handler = Callable[[str, dict[str, Any]], None]


class Kube:
    """Raw REST calls with the credentials of one kubeconfig."""

    def __init__(self, kubeconfig: str) -> None:
        self.api: client.ApiClient = config.new_client_from_config(config_file=kubeconfig)

    @property
    def configuration(self) -> client.Configuration:
        return self.api.configuration

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str = JSON,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> dict[str, Any]:
        response = self.api.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": JSON},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
        data = response[0].data if isinstance(response, tuple) else response.data
        return json.loads(data) if data else {}

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return self.get(path)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body=body)

    def create_or_keep(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create, or return None when it already exists."""
        try:
            return self.create(path, body)
        except ApiException as error:
            if error.status == 409:
                return None
            raise

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        return self.request("PATCH", path, body=body, content_type=content_type)

    def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", path, body=body)

    def delete(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        try:
            return self.request("DELETE", path, body=body)
        except ApiException as error:
            if error.status in (404, 409):  # gone already, or the UID precondition no longer holds
                return None
            raise

    def watch_lines(
        self, path: str, resource_version: str, seconds: int = WATCH_SECONDS, **query: Any
    ) -> Iterator[dict[str, Any]]:
        response = self.api.call_api(
            path,
            "GET",
            query_params=[
                ("watch", "true"),
                ("resourceVersion", resource_version),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", seconds),
                *query.items(),
            ],
            header_params={"Accept": JSON},
            auth_settings=["BearerToken"],
            _preload_content=False,
            # A read timeout past the server's own end of the watch: a silently
            # dead connection (apiserver killed) cannot stall the loop forever.
            _request_timeout=(5, seconds + 30),
        )
        stream = response[0] if isinstance(response, tuple) else response
        try:
            for line in iter_resp_lines(stream):
                if line:
                    yield json.loads(line)
        finally:
            stream.close()
            stream.release_conn()


class Gone(Exception):
    """The watch's resource version expired: list again."""


def list_and_watch(
    kube: Kube,
    path: str,
    handle: Handler,
    stop: threading.Event,
    query: dict[str, Any] | None = None,
    resync_seconds: int | None = None,
) -> None:
    """Call ``handle(event_type, object)`` for every object at ``path`` until ``stop``.

    After each (re)list, objects seen before but missing from the list are
    reported as DELETED, so a handler never misses a deletion during a gap.
    With ``resync_seconds`` the loop lists again that often and hands every
    object over as SYNC: a handler whose write failed once (the apiserver busy
    or restarting) gets another turn, as an informer's resync gives a real
    provisioner, instead of waiting for an event that may never come.
    """
    watch_seconds = min(WATCH_SECONDS, resync_seconds) if resync_seconds else WATCH_SECONDS
    known: dict[str, dict[str, Any]] = {}
    backoff = 0.5
    while not stop.is_set():
        try:
            listing = kube.get(path, **(query or {}))
            version = listing["metadata"]["resourceVersion"]
            current = {item["metadata"]["uid"]: item for item in listing.get("items", [])}
            for uid, item in list(known.items()):
                if uid not in current:
                    handle("DELETED", item)
            known = current
            for item in current.values():
                handle("SYNC", item)
            backoff = 0.5
            listed_at = time.monotonic()
            while not stop.is_set():
                if resync_seconds and time.monotonic() - listed_at >= resync_seconds:
                    break
                for event in kube.watch_lines(path, version, watch_seconds, **(query or {})):
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(obj.get("message", ""))
                        raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                    version = obj["metadata"]["resourceVersion"]
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        known.pop(obj["metadata"]["uid"], None)
                    else:
                        known[obj["metadata"]["uid"]] = obj
                    handle(kind, obj)
                    if stop.is_set():
                        return
        except Gone:
            log.info("watch of %s expired; listing again", path)
        except Exception as error:  # the apiserver restarting, a network error, a handler bug
            log.warning("watch of %s failed (%s); retrying in %.1f s", path, error, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)


def start_thread(name: str, target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
