"""Operator options: one table feeds the environment, the flags, ``--help`` and the README.

Pure: no kopf, no cluster. The flags are parsed by the real ``tritonresnet
operator`` parser, so what is tested here is what the container's entry point does.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any

import pytest
from testground.chart import CHART_DIR, REPO_ROOT
from tritonresnet import cli
from tritonresnet.api.spec import parse_spec
from tritonresnet.controller.settings import (
    DEFAULTS,
    OPTIONS,
    Settings,
    SettingsError,
    settings_from,
)

README = REPO_ROOT / "README.md"


def flags(*argv: str) -> argparse.Namespace:
    parsed: argparse.Namespace = cli.argument_parser().parse_args(["operator", *argv])
    return parsed


def build(environ: dict[str, str] | None = None, *argv: str) -> Settings:
    return settings_from(environ or {}, flags(*argv))


# -- the table -----------------------------------------------------------------------------


def test_every_settings_field_is_exactly_one_option() -> None:
    assert [o.field for o in OPTIONS] == [f.name for f in dataclasses.fields(Settings)]


def test_variables_are_named_after_their_fields_and_flags_are_unique() -> None:
    for option in OPTIONS:
        assert option.env == "TRITONRESNET_" + option.field.upper()
    every_flag = [flag for o in OPTIONS for flag in (*o.flags, *o.unset_flags)]
    assert len(every_flag) == len(set(every_flag))


def test_nothing_given_is_the_dataclass_defaults() -> None:
    assert build() == DEFAULTS == Settings()
    assert settings_from({}) == Settings()
    assert DEFAULTS.all_namespaces and DEFAULTS.standalone


# -- environment -----------------------------------------------------------------------------

ENVIRON = {
    "TRITONRESNET_NAMESPACES": "vision, audio,vision",
    "TRITONRESNET_PEERING": "trn-peers",
    "TRITONRESNET_LIVENESS_ENDPOINT": "http://0.0.0.0:8080/healthz",
    "TRITONRESNET_METRICS_ADDRESS": "0.0.0.0:8081",
    "TRITONRESNET_LOG_FORMAT": "json",
    "TRITONRESNET_VERBOSE": "true",
    "TRITONRESNET_BUILDER_REGISTRY": "registry.internal/ml",
    "TRITONRESNET_TRITON_IMAGE": "registry.internal/tritonserver",
    "TRITONRESNET_DEFAULT_RELEASE": "24.12",
    "TRITONRESNET_IMAGE_PULL_SECRETS": "pull-a,pull-b",
    "TRITONRESNET_RESYNC_SECONDS": "20",
    "TRITONRESNET_VERIFY_INTERVAL_SECONDS": "90.5",
    "TRITONRESNET_VERIFY_TIMEOUT_SECONDS": "5",
    "TRITONRESNET_VERIFY_SERVICE": "cluster-ip",
    "TRITONRESNET_JOB_TTL_SECONDS": "600",
    "TRITONRESNET_WORKERS": "4",
    "TRITONRESNET_TRITON_CONTROL_KEY": "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
    "TRITONRESNET_TRITON_CLIENTS": "tritonresnet-system,shop",
    "TRITONRESNET_METRICS_NAMESPACE_LABEL": "team/monitoring=yes",
}

FROM_ENVIRON = Settings(
    namespaces=("vision", "audio"),
    peering="trn-peers",
    liveness_endpoint="http://0.0.0.0:8080/healthz",
    metrics_address="0.0.0.0:8081",
    log_format="json",
    verbose=True,
    builder_registry="registry.internal/ml",
    triton_image="registry.internal/tritonserver",
    default_release="24.12",
    image_pull_secrets=("pull-a", "pull-b"),
    resync_seconds=20.0,
    verify_interval_seconds=90.5,
    verify_timeout_seconds=5.0,
    verify_service="cluster-ip",
    job_ttl_seconds=600,
    workers=4,
    triton_control_key="kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
    triton_clients=("tritonresnet-system", "shop"),
    metrics_namespace_label="team/monitoring=yes",
)


def test_every_option_reads_its_variable() -> None:
    assert set(ENVIRON) == {o.env for o in OPTIONS}
    assert settings_from(ENVIRON) == FROM_ENVIRON == Settings.from_env(ENVIRON)
    assert not FROM_ENVIRON.all_namespaces and not FROM_ENVIRON.standalone


def test_empty_or_blank_variables_keep_their_defaults() -> None:
    assert settings_from({o.env: "  " for o in OPTIONS}) == Settings()


@pytest.mark.parametrize("text", ["*", "vision,*"])
def test_a_star_namespace_means_every_namespace(text: str) -> None:
    assert settings_from({"TRITONRESNET_NAMESPACES": text}).namespaces == ()


@pytest.mark.parametrize(("text", "value"), [("1", True), ("YES", True), ("off", False), ("false", False)])
def test_switch_variables_take_the_usual_words(text: str, value: bool) -> None:
    assert settings_from({"TRITONRESNET_VERBOSE": text}).verbose is value


BAD_VARIABLES = [
    ("TRITONRESNET_NAMESPACES", "vision,Not_A_Namespace", "'Not_A_Namespace' is not a namespace name"),
    ("TRITONRESNET_PEERING", "Peers!", "'Peers!' is not a Kubernetes object name"),
    ("TRITONRESNET_LIVENESS_ENDPOINT", "0.0.0.0:8080", "is not an http URL"),
    ("TRITONRESNET_METRICS_ADDRESS", "http://0.0.0.0:8081/metrics", "is not an address like 0.0.0.0:8081"),
    ("TRITONRESNET_LOG_FORMAT", "xml", "'xml' is not one of plain, json"),
    ("TRITONRESNET_VERBOSE", "maybe", "'maybe' is not one of 1, true"),
    ("TRITONRESNET_BUILDER_REGISTRY", "registry internal", "must not contain spaces"),
    ("TRITONRESNET_TRITON_IMAGE", "nvcr.io/nvidia/triton server", "must not contain spaces"),
    ("TRITONRESNET_DEFAULT_RELEASE", "25.1", "'25.1' is not an NGC release like 25.01"),
    ("TRITONRESNET_IMAGE_PULL_SECRETS", "ok,Bad_Name", "'Bad_Name' is not a Kubernetes object name"),
    ("TRITONRESNET_RESYNC_SECONDS", "soon", "'soon' is not a number"),
    ("TRITONRESNET_VERIFY_INTERVAL_SECONDS", "0", "'0' must be a number greater than 0"),
    ("TRITONRESNET_VERIFY_TIMEOUT_SECONDS", "inf", "'inf' must be a number greater than 0"),
    ("TRITONRESNET_VERIFY_SERVICE", "ip", "'ip' is not one of dns, cluster-ip, off"),
    ("TRITONRESNET_JOB_TTL_SECONDS", "1.5", "'1.5' is not a whole number"),
    ("TRITONRESNET_WORKERS", "0", "'0' must be at least 1"),
    ("TRITONRESNET_TRITON_CONTROL_KEY", "short", "the value must be at least 32 characters"),
    ("TRITONRESNET_TRITON_CLIENTS", "shop,Shop", "'Shop' is not a namespace name"),
    ("TRITONRESNET_METRICS_NAMESPACE_LABEL", "monitoring", "'monitoring' is not a label like"),
]


@pytest.mark.parametrize(("variable", "text", "message"), BAD_VARIABLES)
def test_a_bad_variable_is_an_error_naming_it(variable: str, text: str, message: str) -> None:
    with pytest.raises(SettingsError) as error:
        settings_from({variable: text})
    assert error.value.variable == variable
    assert str(error.value).startswith(f"{variable}: ")
    assert message in str(error.value)


def test_a_bad_control_key_is_never_repeated_in_the_error() -> None:
    with pytest.raises(SettingsError) as error:
        settings_from({"TRITONRESNET_TRITON_CONTROL_KEY": "a secret of 31 characters, short"})
    assert "secret" not in str(error.value)
    assert "k" * 40 not in repr(FROM_ENVIRON)  # nor shown by a logged Settings


@pytest.mark.parametrize(("text", "value"), [("", ("*",)), ("a,*", ("*",)), ("b,a,b", ("b", "a"))])
def test_triton_clients_are_every_namespace_unless_named(text: str, value: tuple[str, ...]) -> None:
    assert settings_from({"TRITONRESNET_TRITON_CLIENTS": text}).triton_clients == value


def test_every_option_has_a_bad_value_case() -> None:
    # Keeps the cases above complete when an option is added.
    assert {variable for variable, _, _ in BAD_VARIABLES} == {o.env for o in OPTIONS}


# -- flags -------------------------------------------------------------------------------------

ARGV = [
    "-n",
    "vision",
    "--namespace",
    "audio",
    "--peering",
    "trn-peers",
    "--liveness",
    "http://0.0.0.0:8080/healthz",
    "--metrics-address",
    "0.0.0.0:8081",
    "--log-format",
    "json",
    "--verbose",
    "--builder-registry",
    "registry.internal/ml",
    "--triton-image",
    "registry.internal/tritonserver",
    "--default-release",
    "24.12",
    "--image-pull-secret",
    "pull-a",
    "--image-pull-secret",
    "pull-b",
    "--resync-seconds",
    "20",
    "--verify-interval-seconds",
    "90.5",
    "--verify-timeout-seconds",
    "5",
    "--verify-service",
    "cluster-ip",
    "--job-ttl-seconds",
    "600",
    "--workers",
    "4",
    "--triton-control-key",
    "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
    "--triton-client",
    "tritonresnet-system",
    "--triton-client",
    "shop",
    "--metrics-namespace-label",
    "team/monitoring=yes",
]


def test_every_option_has_a_flag_with_the_same_effect_as_its_variable() -> None:
    assert build({}, *ARGV) == FROM_ENVIRON
    assert set(vars(flags(*ARGV))) - {"command", "handler"} == {o.field for o in OPTIONS}


def test_flags_win_over_variables_and_absent_flags_leave_them() -> None:
    result = build(ENVIRON, "--workers", "2", "-n", "team-a", "--default-release", "25.02")
    assert result == dataclasses.replace(
        FROM_ENVIRON, workers=2, namespaces=("team-a",), default_release="25.02"
    )


def test_list_flags_take_commas_too() -> None:
    assert build({}, "-n", "a,b", "-n", "c").namespaces == ("a", "b", "c")


def test_all_namespaces_and_standalone_override_the_environment() -> None:
    result = build(ENVIRON, "-A", "--standalone")
    assert result.namespaces == () and result.all_namespaces
    assert result.peering == "" and result.standalone
    assert (
        dataclasses.replace(result, namespaces=FROM_ENVIRON.namespaces, peering="trn-peers") == FROM_ENVIRON
    )


@pytest.mark.parametrize(
    ("argv", "flag", "message"),
    [
        (["--workers", "many"], "--workers", "'many' is not a whole number"),
        (["--namespace", "Vision"], "--namespace", "'Vision' is not a namespace name"),
        (["--log-format", "xml"], "--log-format", "'xml' is not one of plain, json"),
        (["--verify-interval-seconds", "-1"], "--verify-interval-seconds", "must be a number greater than 0"),
    ],
)
def test_a_bad_flag_is_an_error_naming_the_flag(argv: list[str], flag: str, message: str) -> None:
    with pytest.raises(SettingsError) as error:
        build({}, *argv)
    assert error.value.variable == flag and message in str(error.value)


def test_a_flag_is_checked_even_when_the_variable_is_good() -> None:
    with pytest.raises(SettingsError, match="--job-ttl-seconds"):
        build({"TRITONRESNET_JOB_TTL_SECONDS": "60"}, "--job-ttl-seconds", "0")


@pytest.mark.parametrize("argv", [["-n", "a", "-A"], ["--standalone", "--peering", "p"]])
def test_contradicting_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        flags(*argv)


def test_a_hand_built_namespace_holds_only_the_flags_given() -> None:
    # What the parser returns for flags not given: no attribute at all, so the variable applies.
    namespace = flags("--workers", "3")
    assert not hasattr(namespace, "resync_seconds")
    assert settings_from({}, argparse.Namespace(workers="3")) == Settings(workers=3)


# -- --help ------------------------------------------------------------------------------------


def test_help_lists_every_option_with_its_default_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["operator", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    for option in OPTIONS:
        for flag in (*option.flags, *option.unset_flags):
            assert flag in text, flag
        assert f"[default: {option.shown_default()}; env {option.env}]" in text, option.field


def test_shown_defaults_are_readable() -> None:
    shown = {o.field: o.shown_default() for o in OPTIONS}
    assert shown["resync_seconds"] == "60" and shown["workers"] == "8" and shown["verbose"] == "off"
    assert shown["namespaces"] == "all namespaces" and shown["peering"] == "standalone"


# -- the release a resource runs -------------------------------------------------------------


def spec(release: str = "") -> Any:
    serving = {"release": release} if release else {}
    return parse_spec(
        {
            "metadata": {"name": "resnet", "namespace": "vision"},
            "spec": {
                "source": {"uri": "s3://models/resnet50.onnx"},
                "repository": {"claimName": "models"},
                "serving": serving,
            },
        }
    )


def test_release_for_is_the_specs_release_else_the_default() -> None:
    settings = Settings(default_release="24.12")
    assert settings.release_for(spec()) == "24.12"
    assert settings.release_for(spec("25.02")) == "25.02"


# -- the README's table --------------------------------------------------------------------------


def readme_rows() -> list[list[str]]:
    text = README.read_text()
    section = text.split("## Operator options\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    # A cell may hold an escaped pipe (plain\|json).
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_readme_table_lists_exactly_the_options_with_their_flags_and_defaults() -> None:
    rows = readme_rows()
    by_env = {}
    for row in rows:
        (env,) = re.findall(r"`(TRITONRESNET_[A-Z_]+)`", row[1])
        by_env[env] = row
    assert list(by_env) == [o.env for o in OPTIONS], "README rows must follow settings.OPTIONS"
    for option in OPTIONS:
        flag_cell, _, default_cell, what, _ = by_env[option.env]
        written = {token.split()[0] for token in re.findall(r"`(-[^`]+)`", flag_cell)}
        assert written == {*option.flags, *option.unset_flags}, option.env
        assert default_cell.strip("`") == option.shown_default(), option.env
        assert what, option.env


def test_readme_chart_values_are_the_ones_the_chart_maps_to_each_variable() -> None:
    template = (CHART_DIR / "templates" / "deployment.yaml").read_text()
    mapped = dict(
        re.findall(
            r"with \.Values\.operator\.(\w+) \}\}\s*\{\{- \$env = append \$env \(dict \"name\" \"(\w+)\"",
            template,
        )
    )
    assert mapped, "the chart maps no value to a variable"
    chart_cells = {}
    for row in readme_rows():
        (env,) = re.findall(r"`(TRITONRESNET_[A-Z_]+)`", row[1])
        chart_cells[env] = row[4]
    for value, env in mapped.items():
        assert f"`operator.{value}`" in chart_cells[env], env
    # A value the chart passes as a flag (logFormat) is named with the option's flag instead.
    flag_of = {o.env: o.flag for o in OPTIONS}
    for env, cell in chart_cells.items():
        for value in re.findall(r"`operator\.(\w+)`", cell):
            as_flag = f"{flag_of[env]}={{{{ .Values.operator.{value} }}}}" in template
            assert value == "extraEnv" or mapped.get(value) == env or as_flag, (env, value)


def test_the_verify_interval_is_a_chart_value() -> None:
    assert "verifyIntervalSeconds" in (CHART_DIR / "values.yaml").read_text()
