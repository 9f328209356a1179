"""The node agent's kubelet rules, without a cluster: images, ``$(VAR)``, env, paths, status.

Each rule in tests/testground/nodeagent_pods.py is what a kubelet (or a
container runtime) does; these tests pin it to the documented behaviour, so
a pod that works on the test ground is a pod that works on a node.
"""

from __future__ import annotations

import base64
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from testground.nodeagent_pods import (
    CONFIG_ERROR_REASON,
    FALLBACK_LOG_BYTES,
    FALLBACK_LOG_LINES,
    MAX_TERMINATION_MESSAGE_BYTES,
    ContainerConfigError,
    PathMap,
    condition,
    container_env,
    decode_secret,
    expand,
    field_value,
    image_kind,
    image_repository,
    pod_phase,
    process_env,
    program_args,
    python_command,
    resource_field_value,
    state_dict,
    terminated_reason,
    termination_message,
    unknown_image_message,
    with_bind_addresses,
)

# -- images --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("tritonserver", "tritonserver"),
        ("tritonserver:25.01-py3", "tritonserver"),
        ("nvcr.io/nvidia/tritonserver:25.01-py3", "nvcr.io/nvidia/tritonserver"),
        ("registry:5000/ml/tritonresnet-builder", "registry:5000/ml/tritonresnet-builder"),
        ("registry:5000/ml/tritonresnet-builder:25.01", "registry:5000/ml/tritonresnet-builder"),
        ("registry:5000/a/b:tag@sha256:" + "0" * 64, "registry:5000/a/b"),
        ("a/b@sha256:" + "f" * 64, "a/b"),
    ],
)
def test_image_repository_drops_tag_and_digest_but_keeps_a_registry_port(image: str, repository: str) -> None:
    assert image_repository(image) == repository


@pytest.mark.parametrize(
    ("image", "kind"),
    [
        ("registry.internal/ml/tritonresnet-builder:25.01", "builder"),
        ("tritonresnet-builder", "builder"),
        ("nvcr.io/nvidia/tritonserver:25.01-py3", "triton"),
        ("mirror:5000/nvidia/tritonserver@sha256:" + "1" * 64, "triton"),
        ("tritonresnet/tritonresnet-operator:0.1.0", "operator"),
        ("registry.example/tritonresnet-operator", "operator"),
    ],
)
def test_image_kind_is_chosen_by_the_last_path_segment_of_the_repository(image: str, kind: str) -> None:
    assert image_kind(image) == kind


@pytest.mark.parametrize(
    "image",
    [
        "busybox:1.36",
        "registry/tritonresnet-builder-debug:1",  # a longer name is another image
        "tritonserver-sidecar",
        "tritonresnet-operator/other:1",  # the segment must be the last one
        "registry/tritonserver-py3",
    ],
)
def test_image_kind_is_none_for_images_the_test_ground_cannot_run(image: str) -> None:
    assert image_kind(image) is None
    assert image in unknown_image_message(image)


def test_python_command_runs_the_module_with_this_interpreter() -> None:
    assert python_command("tritonresnet", ["operator", "--standalone"]) == [
        sys.executable,
        "-m",
        "tritonresnet",
        "operator",
        "--standalone",
    ]


def test_operator_image_without_command_runs_its_entrypoint_then_the_pods_args() -> None:
    """The chart sets only args and relies on ENTRYPOINT ["tritonresnet", "operator"]."""
    assert program_args("operator", [], ["--all-namespaces", "--standalone"]) == [
        "operator",
        "--all-namespaces",
        "--standalone",
    ]


def test_command_replaces_the_entrypoint_and_its_first_word_names_the_program() -> None:
    assert program_args("operator", ["tritonresnet", "status"], ["r1"]) == ["status", "r1"]
    assert program_args("builder", [], ["build", "--x"]) == ["build", "--x"]
    assert program_args("triton", ["tritonserver"], ["--model-repository=/m"]) == ["--model-repository=/m"]


def test_only_the_pods_own_env_is_rewritten_so_a_checkout_under_a_mounted_folder_keeps_its_paths() -> None:
    """CI clones under /tmp and Triton pods mount /tmp: the library path of the checkout's
    venv must not become a folder of the pod's /tmp volume."""
    paths = PathMap.of({"/tmp": "/agent/volumes/tmp", "/models": "/agent/volumes/models"})
    env = process_env(
        {"PATH": "/tmp/clone/.venv/bin:/usr/bin", "HOME": "/root"},
        {"HOME": "/tmp", "REPO": "/models/resnet50", "NAME": "resnet50"},
        paths,
        {"LD_LIBRARY_PATH": "/tmp/clone/.venv/lib/nvidia_pytriton.libs"},
    )
    assert env == {
        "PATH": "/tmp/clone/.venv/bin:/usr/bin",
        "HOME": "/agent/volumes/tmp",
        "REPO": "/agent/volumes/models/resnet50",
        "NAME": "resnet50",
        "LD_LIBRARY_PATH": "/tmp/clone/.venv/lib/nvidia_pytriton.libs",
    }


def test_with_bind_addresses_adds_the_pod_ip_only_where_no_address_was_given() -> None:
    args = ["--model-repository=/models", "--grpc-address", "0.0.0.0"]
    out = with_bind_addresses(args, "127.0.1.7")
    assert out[:3] == args
    assert "--http-address=127.0.1.7" in out and "--metrics-address=127.0.1.7" in out
    assert not any(arg.startswith("--grpc-address=") for arg in out)
    assert args == ["--model-repository=/models", "--grpc-address", "0.0.0.0"]  # the input is not changed


# -- $(VAR) expansion ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$(A)", "1"),
        ("--x=$(A)/$(B_2)", "--x=1/two"),
        ("$(MISSING)", "$(MISSING)"),  # an unknown reference stays as written
        ("$$(A)", "$(A)"),  # $$ escapes the reference
        ("$$", "$"),
        ("cost: $5", "cost: $5"),
        ("$(A", "$(A"),  # not a reference
        ("$(my.var-x)", "dotted"),
        ("", ""),
    ],
)
def test_expand_follows_kubernetes_dependent_variable_rules(text: str, expanded: str) -> None:
    assert expand(text, {"A": "1", "B_2": "two", "my.var-x": "dotted"}) == expanded


def test_expand_does_not_expand_a_value_twice() -> None:
    assert expand("$(A)", {"A": "$(B)", "B": "no"}) == "$(B)"


# -- container environment -------------------------------------------------------------

POD: dict[str, Any] = {
    "metadata": {
        "name": "p",
        "namespace": "ns",
        "uid": "u-1",
        "labels": {"app": "triton"},
        "annotations": {"note": "hi"},
    },
    "spec": {"nodeName": "gpu-a10g-0", "serviceAccountName": "sa"},
    "status": {"podIP": "127.0.1.2", "hostIP": "127.0.0.1"},
}

SECRETS: dict[tuple[str, str], dict[str, str]] = {
    ("ns", "creds"): {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"},
}
CONFIG_MAPS: dict[tuple[str, str], dict[str, str]] = {
    ("ns", "opts"): {"LEVEL": "debug", "MODE": "from-map"},
}


def secrets(namespace: str, name: str) -> Mapping[str, str] | None:
    return SECRETS.get((namespace, name))


def config_maps(namespace: str, name: str) -> Mapping[str, str] | None:
    return CONFIG_MAPS.get((namespace, name))


def env_of(container: Mapping[str, Any]) -> dict[str, str]:
    return container_env(POD, container, secrets, config_maps)


def test_container_env_takes_env_from_first_and_env_overrides_it() -> None:
    env = env_of(
        {
            "envFrom": [
                {"configMapRef": {"name": "opts"}},
                {"secretRef": {"name": "creds"}, "prefix": "S3_"},
            ],
            "env": [{"name": "MODE", "value": "explicit"}],
        }
    )
    assert env == {
        "LEVEL": "debug",
        "MODE": "explicit",
        "S3_AWS_ACCESS_KEY_ID": "id",
        "S3_AWS_SECRET_ACCESS_KEY": "secret",
    }


def test_container_env_expands_only_variables_defined_before() -> None:
    env = env_of(
        {
            "env": [
                {"name": "EARLY", "value": "$(LATE)-$(LEVEL)"},
                {"name": "LATE", "value": "x"},
                {"name": "BOTH", "value": "$(LATE)$(LATE)"},
            ],
            "envFrom": [{"configMapRef": {"name": "opts"}}],
        }
    )
    assert env["EARLY"] == "$(LATE)-debug"
    assert env["BOTH"] == "xx"


def test_container_env_reads_secret_config_map_field_and_resource_references() -> None:
    env = env_of(
        {
            "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "2Gi"}},
            "env": [
                {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "AWS_ACCESS_KEY_ID"}}},
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "opts", "key": "LEVEL"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
            ],
        }
    )
    assert env == {"KEY": "id", "LEVEL": "debug", "POD_IP": "127.0.1.2", "APP": "triton", "MEM": "2Gi"}


@pytest.mark.parametrize(
    ("container", "message"),
    [
        (
            {"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]},
            'secret "nope" key "k" not found',
        ),
        (
            {"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}]},
            'secret "creds" key "k" not found',
        ),
        (
            {"env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "opts", "key": "k"}}}]},
            'configmap "opts" key "k" not found',
        ),
        ({"envFrom": [{"secretRef": {"name": "nope"}}]}, 'secret "nope" not found'),
        ({"envFrom": [{"configMapRef": {"name": "nope"}}]}, 'configMap "nope" not found'),
    ],
)
def test_container_env_refuses_a_missing_required_reference(container: dict[str, Any], message: str) -> None:
    with pytest.raises(ContainerConfigError, match=message):
        env_of(container)
    assert CONFIG_ERROR_REASON == "CreateContainerConfigError"  # the reason the pod then waits with


def test_container_env_skips_missing_optional_references() -> None:
    env = env_of(
        {
            "envFrom": [{"secretRef": {"name": "nope", "optional": True}}],
            "env": [
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
                {
                    "name": "B",
                    "valueFrom": {"configMapKeyRef": {"name": "opts", "key": "k", "optional": True}},
                },
                {"name": "C", "value": "kept"},
            ],
        }
    )
    assert env == {"C": "kept"}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("metadata.name", "p"),
        ("metadata.namespace", "ns"),
        ("metadata.uid", "u-1"),
        ("spec.nodeName", "gpu-a10g-0"),
        ("spec.serviceAccountName", "sa"),
        ("status.hostIP", "127.0.0.1"),
        ("metadata.annotations['note']", "hi"),
        ("metadata.labels['absent']", ""),
    ],
)
def test_field_value_reads_the_downward_api_fields(path: str, value: str) -> None:
    assert field_value(POD, path) == value


def test_field_value_refuses_a_field_it_does_not_know() -> None:
    with pytest.raises(ContainerConfigError, match=re.escape("spec.priority")):
        field_value(POD, "spec.priority")


def test_resource_field_value_is_the_raw_quantity_or_zero() -> None:
    container = {"resources": {"requests": {"cpu": "100m"}}}
    assert resource_field_value(container, {"resource": "requests.cpu"}) == "100m"
    assert resource_field_value(container, {"resource": "limits.cpu"}) == "0"
    assert resource_field_value({}, {"resource": "requests.memory"}) == "0"


def test_decode_secret_decodes_base64_values() -> None:
    encoded = {"k": base64.b64encode(b"v\xc3\xa9").decode()}
    assert decode_secret(encoded) == {"k": "vé"}
    assert decode_secret(None) == {}


# -- paths under volume mounts -------------------------------------------------------

MOUNTS = PathMap.of(
    {"/models": "/local/vol-a", "/models/cache/": "/local/vol-b", "/dev/termination-log": "/local/msg"}
)


@pytest.mark.parametrize(
    ("value", "rewritten"),
    [
        ("/models", "/local/vol-a"),
        ("/models/resnet50/1", "/local/vol-a/resnet50/1"),
        ("/models/cache", "/local/vol-b"),  # the longest mount wins
        ("/models/cache/x.plan", "/local/vol-b/x.plan"),
        ("/models-old/x", "/models-old/x"),  # a sibling with the same prefix is not under the mount
        ("--model-repository=/models", "--model-repository=/local/vol-a"),
        ("--result-file=/dev/termination-log", "--result-file=/local/msg"),
        ("--flag=relative/models", "--flag=relative/models"),
        ("models", "models"),
        ("s3://bucket/models", "s3://bucket/models"),
        ("key=/models", "key=/models"),  # only flags (leading '-') are split at '='
    ],
)
def test_path_map_rewrites_paths_under_a_mount_and_leaves_the_rest(value: str, rewritten: str) -> None:
    assert MOUNTS.rewrite(value) == rewritten


def test_path_map_local_is_none_outside_every_mount() -> None:
    assert MOUNTS.local("/etc/passwd") is None
    assert MOUNTS.local("/models/a") == "/local/vol-a/a"


# -- what the kubelet reports ----------------------------------------------------------


def test_termination_message_prefers_the_message_file(tmp_path: Path) -> None:
    message, log = tmp_path / "msg", tmp_path / "log"
    message.write_text('{"ok": true}')
    log.write_text("log line\n")
    assert termination_message(message, log, 0, "FallbackToLogsOnError", 1) == '{"ok": true}'


def test_termination_message_is_cut_at_the_kubelet_limit(tmp_path: Path) -> None:
    message = tmp_path / "msg"
    message.write_bytes(b"x" * (MAX_TERMINATION_MESSAGE_BYTES + 100))
    out = termination_message(message, tmp_path / "no-log", 0, "File", 0)
    assert len(out) == MAX_TERMINATION_MESSAGE_BYTES


def test_termination_message_falls_back_to_the_log_tail_of_this_run_only_on_error(tmp_path: Path) -> None:
    message, log = tmp_path / "msg", tmp_path / "log"
    message.write_text("  \n")  # blank counts as empty
    earlier = b"previous run\n"
    lines = [f"line {i}" for i in range(FALLBACK_LOG_LINES + 20)]
    log.write_bytes(earlier + "\n".join(lines).encode() + b"\n")
    out = termination_message(message, log, len(earlier), "FallbackToLogsOnError", 3)
    assert out.splitlines() == lines[-FALLBACK_LOG_LINES:]
    assert "previous run" not in out
    # Exit 0 or the File policy: no fallback.
    assert termination_message(message, log, len(earlier), "FallbackToLogsOnError", 0).strip() == ""
    assert termination_message(message, log, len(earlier), "File", 3).strip() == ""


def test_termination_message_fallback_keeps_at_most_the_last_2_kib(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("\n".join("y" * 100 + str(i) for i in range(50)))
    out = termination_message(tmp_path / "no-message", log, 0, "FallbackToLogsOnError", 1)
    assert len(out.encode()) == FALLBACK_LOG_BYTES
    assert out.endswith("y" * 100 + "49")


@pytest.mark.parametrize(
    ("exit_code", "oom", "reason"),
    [(0, False, "Completed"), (1, False, "Error"), (137, True, "OOMKilled"), (0, True, "OOMKilled")],
)
def test_terminated_reason(exit_code: int, oom: bool, reason: str) -> None:
    assert terminated_reason(exit_code, oom) == reason


def test_condition_carries_a_reason_only_when_false() -> None:
    since = "2026-01-01T00:00:00Z"
    assert condition("Ready", True, since, "ContainersNotReady") == {
        "type": "Ready",
        "status": "True",
        "lastTransitionTime": since,
    }
    assert condition("Ready", False, since, "ContainersNotReady") == {
        "type": "Ready",
        "status": "False",
        "lastTransitionTime": since,
        "reason": "ContainersNotReady",
    }


def test_state_dict_nulls_the_other_states_so_a_merge_patch_removes_them() -> None:
    assert state_dict({"running": {"startedAt": "t"}}) == {
        "waiting": None,
        "running": {"startedAt": "t"},
        "terminated": None,
    }
    assert state_dict(None) == {"waiting": None, "running": None, "terminated": None}


@pytest.mark.parametrize(
    ("policy", "states", "codes", "phase"),
    [
        ("Always", [], [], "Pending"),
        ("Always", ["waiting"], [None], "Pending"),
        ("Always", ["waiting", "running"], [None, None], "Running"),
        ("Never", ["terminated"], [0], "Succeeded"),
        ("OnFailure", ["terminated", "terminated"], [0, 0], "Succeeded"),
        ("Always", ["terminated"], [0], "Running"),  # a kubelet restarts it: the pod never completes
        ("Never", ["terminated", "terminated"], [0, 1], "Failed"),
        ("OnFailure", ["terminated"], [1], "Running"),  # about to be restarted
        ("Always", ["terminated"], [137], "Running"),
        ("Never", ["running", "terminated"], [None, 1], "Running"),  # Failed only once all have stopped
        ("Never", ["waiting", "terminated"], [None, 0], "Pending"),
    ],
)
def test_pod_phase_follows_the_restart_policy(
    policy: str, states: list[str], codes: list[int | None], phase: str
) -> None:
    assert pod_phase(policy, states, codes) == phase
