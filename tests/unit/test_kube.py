"""How the operator reads the API server's refusals (no cluster: bodies shaped as it sends them)."""

from __future__ import annotations

import json

from kubernetes.client.rest import ApiException
from tritonresnet.controller.kube import api_error_message, namespace_terminating


def refusal(status: int, reason: str, body: dict[str, object] | str) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = body if isinstance(body, str) else json.dumps(body)
    return exc


TERMINATING = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": 'jobs.batch "r-build-1" is forbidden: unable to create new content in namespace bench '
    "because it is being terminated",
    "reason": "Forbidden",
    "details": {
        "name": "r-build-1",
        "group": "batch",
        "kind": "jobs",
        "causes": [
            {
                "reason": "NamespaceTerminating",
                "message": "namespace bench is being terminated",
                "field": "metadata.namespace",
            }
        ],
    },
    "code": 403,
}


def test_namespace_being_deleted_is_recognised_from_the_status_cause() -> None:
    assert namespace_terminating(refusal(403, "Forbidden", TERMINATING))


def test_other_refusals_are_not_taken_for_a_namespace_being_deleted() -> None:
    rbac = {
        **TERMINATING,
        "details": {"kind": "jobs"},
        "message": 'jobs.batch is forbidden: User "x" cannot create',
    }
    assert not namespace_terminating(refusal(403, "Forbidden", rbac))
    assert not namespace_terminating(refusal(500, "Internal Server Error", TERMINATING | {"code": 500}))
    assert not namespace_terminating(refusal(403, "Forbidden", "<html>proxy says no</html>"))
    assert not namespace_terminating(ValueError("not an API error"))


def test_error_message_is_the_api_servers_words_else_the_http_reason() -> None:
    full = {
        "kind": "Status",
        "message": 'failed to allocate a serviceIP for Service "r0419": range is full',
        "code": 500,
    }
    assert api_error_message(refusal(500, "Internal Server Error", full)) == (
        '500: failed to allocate a serviceIP for Service "r0419": range is full'
    )
    assert api_error_message(refusal(502, "Bad Gateway", "<html></html>")) == "502: Bad Gateway"
