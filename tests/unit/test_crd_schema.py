"""The CRD file, checked without a cluster: structure, subresources, CEL field references, and its
agreement with spec.py (patterns, enums, ranges, defaults). A real apiserver's rejections are tested in
tests/integration.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from tritonresnet.api import names, spec
from tritonresnet.api.spec import SpecError, parse_spec
from tritonresnet_builder.contract import FORMATS, MODEL_NAME_RE, PRECISIONS

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "tritonresnet.io_tritonresnets.yaml"

Schema = dict[str, Any]


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    documents = list(yaml.safe_load_all(CRD_PATH.read_text()))
    assert len(documents) == 1
    loaded: dict[str, Any] = documents[0]
    return loaded


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (only,) = crd["spec"]["versions"]
    result: dict[str, Any] = only
    return result


@pytest.fixture(scope="module")
def root(version: dict[str, Any]) -> Schema:
    result: Schema = version["schema"]["openAPIV3Schema"]
    return result


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node with a readable path (``.spec.engine.targets[]``)."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}.*")


def node_at(root: Schema, dotted: str) -> Schema:
    """The node at ``spec.a.b``; ``b[]`` is the items of the list ``b``."""
    node = root
    for part in dotted.strip(".").split("."):
        node = node["properties"][part.removesuffix("[]")]
        if part.endswith("[]"):
            node = node["items"]
    return node


# -- identity and subresources -------------------------------------------------------------


def test_crd_names_group_version_and_kind(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{names.PLURAL}.{names.GROUP}"
    assert crd["spec"]["group"] == names.GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["kind"] == names.KIND
    assert crd["spec"]["names"]["shortNames"] == ["trn"]
    assert crd["spec"]["names"]["categories"] == ["tritonresnet"]
    assert version["name"] == names.VERSION
    assert version["served"] is True
    assert version["storage"] is True


def test_crd_has_status_and_scale_subresources(version: dict[str, Any]) -> None:
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.serving.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_scale_paths_exist_in_the_schema(root: Schema) -> None:
    assert node_at(root, "spec.serving.replicas")["type"] == "integer"
    assert node_at(root, "status.replicas")["type"] == "integer"
    assert node_at(root, "status.selector")["type"] == "string"


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns)[:3] == ["Phase", "Ready", "Version"]
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Ready"]["jsonPath"] == ".status.readyReplicas"
    assert columns["Version"]["jsonPath"] == ".status.modelVersion"
    assert columns["Reason"]["priority"] == 1
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


# -- structural schema -------------------------------------------------------------------------


def test_schema_is_structural(root: Schema) -> None:
    """Every node has a type, except int-or-string and preserve-unknown nodes (the apiserver's rule)."""
    for path, node in walk(root):
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        if node.get("x-kubernetes-preserve-unknown-fields") and "type" not in node:
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
        if node["type"] == "array":
            assert "items" in node, path


def test_every_field_of_spec_and_status_is_described(root: Schema) -> None:
    """The reference doc is generated from these descriptions."""
    for top in ("spec", "status"):
        for path, node in walk(root["properties"][top], f".{top}"):
            if path.endswith((".*", "[]")) and node.get("type") in {"string", "integer", None}:
                continue  # a map's values and scalar list items are described by their parent
            assert node.get("description", "").strip(), f"{path} has no description"


def test_rules_on_lists_and_maps_are_bounded(root: Schema) -> None:
    """CEL cost estimation rejects rules over unbounded lists; every spec list has maxItems."""
    for path, node in walk(root["properties"]["spec"], ".spec"):
        if node.get("type") == "array":
            assert "maxItems" in node, path


# -- CEL rules -------------------------------------------------------------------------------------

_PATH = re.compile(r"\b(self|oldSelf)((?:\.[A-Za-z_]\w*)+)(\s*\()?")
_COMPREHENSION = re.compile(
    r"\b(self(?:\.[A-Za-z_]\w*)*)\.(?:all|exists|exists_one|filter|map)\(\s*(\w+)\s*,"
)
_STRING = re.compile(r"'[^']*'|\"[^\"]*\"")


def rules(root: Schema) -> Iterator[tuple[str, Schema, dict[str, Any]]]:
    for path, node in walk(root):
        for rule in node.get("x-kubernetes-validations", []):
            yield path, node, rule


def resolve(node: Schema, fields: list[str], at_root: bool) -> Schema | None:
    for index, field in enumerate(fields):
        if at_root and index == 0 and field == "metadata":
            return node  # only metadata.name / generateName are visible, both strings
        properties = node.get("properties", {})
        if field not in properties:
            return None
        node = properties[field]
    return node


def check_paths(text: str, variable: str, node: Schema, at_root: bool) -> list[str]:
    problems = []
    pattern = re.compile(rf"\b{variable}((?:\.[A-Za-z_]\w*)+)(\s*\()?")
    for match in pattern.finditer(text):
        fields = match.group(1).strip(".").split(".")
        if match.group(2):  # a method call: the last name is the method
            fields = fields[:-1]
        if fields and resolve(node, fields, at_root) is None:
            problems.append(f"{variable}.{'.'.join(fields)}")
    return problems


def test_cel_rules_are_well_formed_and_name_existing_fields(root: Schema) -> None:
    seen = 0
    for path, node, rule in rules(root):
        seen += 1
        text = rule["rule"]
        assert rule.get("message", "").strip(), f"{path}: every rule has a message for the user"
        bare = _STRING.sub("''", text)
        assert bare.count("(") == bare.count(")"), f"{path}: unbalanced parentheses in {text!r}"
        assert bare.count("[") == bare.count("]"), f"{path}: unbalanced brackets in {text!r}"
        assert "'" not in _STRING.sub("", text), f"{path}: unclosed string in {text!r}"
        at_root = path == ""
        problems = check_paths(bare, "self", node, at_root) + check_paths(bare, "oldSelf", node, at_root)
        for match in _COMPREHENSION.finditer(bare):
            fields = match.group(1).split(".")[1:]
            listed = resolve(node, fields, at_root) if fields else node
            assert listed is not None and listed.get("type") == "array", (
                f"{path}: {match.group(1)} is not a list"
            )
            problems += check_paths(bare, match.group(2), listed["items"], False)
        assert not problems, f"{path}: rule {text!r} names fields that do not exist: {problems}"
        if "fieldPath" in rule:
            assert resolve(node, rule["fieldPath"].strip(".").split("."), False) is not None, path
    assert seen >= 10


def test_transition_rules_guard_the_model_name_and_the_repository(root: Schema) -> None:
    transition = [(path, r["rule"]) for path, _, r in rules(root) if "oldSelf" in r["rule"]]
    guarded = {path for path, _ in transition}
    assert "" in guarded  # the effective model name, which may default to metadata.name
    assert ".spec.repository" in guarded
    assert ".spec.repository.create" in guarded
    (root_rule,) = [text for path, text in transition if path == ""]
    assert "model.name" in root_rule and "metadata.name" in root_rule


# -- agreement with spec.py ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("spec.source.uri", spec.SOURCE_URI_RE),
        ("spec.source.sha256", spec.SHA256_RE),
        ("spec.source.endpoint", spec.ENDPOINT_RE),
        ("spec.source.region", spec.REGION_RE),
        ("spec.source.credentialsSecret", spec.SECRET_NAME_RE),
        ("spec.model.name", MODEL_NAME_RE),
        ("spec.serving.release", spec.RELEASE_RE),
        ("spec.repository.claimName", spec.CLAIM_NAME_RE),
        ("spec.repository.subPath", spec.SUB_PATH_RE),
        ("spec.repository.create.size", spec.QUANTITY_RE),
        ("spec.repository.create.storageClassName", spec.CLAIM_NAME_RE),
        ("spec.source.externalData[].location", spec.SUB_PATH_RE),
        ("spec.source.externalData[].sha256", spec.REQUIRED_SHA256_RE),
    ],
)
def test_crd_patterns_are_the_patterns_parse_spec_uses(
    root: Schema, path: str, pattern: re.Pattern[str]
) -> None:
    assert node_at(root, path)["pattern"] == pattern.pattern


def test_crd_enums_are_the_contracts(root: Schema) -> None:
    assert tuple(node_at(root, "spec.model.format")["enum"]) == FORMATS
    assert tuple(node_at(root, "spec.engine.precision")["enum"]) == PRECISIONS
    assert tuple(node_at(root, "spec.engine.gpuKinds")["enum"]) == spec.GPU_KINDS
    assert tuple(node_at(root, "spec.engine.hardwareCompatibility")["enum"]) == tuple(
        spec.HARDWARE_COMPATIBILITY
    )
    assert tuple(node_at(root, "spec.serving.autoscaling.metric.type")["enum"]) == spec.METRIC_TYPES
    modes = node_at(root, "spec.repository.create.accessModes")["items"]["enum"]
    assert tuple(modes) == spec.ACCESS_MODES
    toleration = node_at(root, "spec.serving.tolerations")["items"]["properties"]
    assert tuple(toleration["operator"]["enum"]) == spec.TOLERATION_OPERATORS
    assert tuple(toleration["effect"]["enum"]) == spec.TOLERATION_EFFECTS
    assert (
        node_at(root, "spec.engine.targets")["items"]["properties"]["name"]["pattern"]
        == spec.TARGET_NAME_RE.pattern
    )


MINIMAL: dict[str, Any] = {
    "apiVersion": "tritonresnet.io/v1alpha1",
    "kind": "TritonResNet",
    "metadata": {"name": "resnet50", "namespace": "vision"},
    "spec": {"source": {"uri": "s3://models/r50/model.onnx"}, "repository": {"claimName": "models"}},
}


def apply_defaults(value: Any, schema: Schema) -> Any:
    """Structural defaulting as the apiserver does it: missing fields get their default, recursively."""
    if isinstance(value, dict) and schema.get("type") == "object":
        result = dict(value)
        for name, child in schema.get("properties", {}).items():
            if name not in result and "default" in child:
                result[name] = copy.deepcopy(child["default"])
            if name in result:
                result[name] = apply_defaults(result[name], child)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"serving": {"autoscaling": {"maxReplicas": 3, "metric": {"type": "queueTime"}}}},
        {"repository": {"create": {}}},
        {"engine": {"targets": [{"nodeSelector": {"a": "b"}}]}},
    ],
)
def test_crd_defaults_equal_parse_spec_defaults(root: Schema, extra: dict[str, Any]) -> None:
    """The operator applies the CRD's defaults itself (an older CRD may not have); both must agree."""
    body = copy.deepcopy(MINIMAL)
    body["spec"].update(extra)
    defaulted = apply_defaults(body, root)
    assert defaulted != body or not extra  # defaulting did something
    assert parse_spec(defaulted) == parse_spec(body)


def test_crd_defaults_satisfy_their_own_schema(root: Schema) -> None:
    for path, node in walk(root):
        if "default" in node:
            jsonschema.validate(node["default"], openapi_to_jsonschema(node))
            assert path


def openapi_to_jsonschema(schema: Schema) -> Schema:
    """OpenAPI v3 schema to JSON Schema: the keywords we use mean the same; x-kubernetes-* are dropped."""
    if isinstance(schema, dict):
        return {k: openapi_to_jsonschema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if isinstance(schema, list):
        return [openapi_to_jsonschema(v) for v in schema]  # type: ignore[return-value]
    return schema


def schema_errors(root: Schema, body: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(openapi_to_jsonschema(root))
    return [
        ".".join(str(p) for p in e.absolute_path) for e in validator.iter_errors(apply_defaults(body, root))
    ]


def test_the_issue_sample_is_valid(root: Schema) -> None:
    sample = copy.deepcopy(MINIMAL)
    sample["spec"] = {
        "source": {
            "uri": "s3://models/resnet50/model.onnx",
            "sha256": "",
            "endpoint": "",
            "region": "",
            "credentialsSecret": "",
        },
        "model": {"name": "resnet50", "format": "tensorrt"},
        "engine": {
            "precision": "fp16",
            "maxBatchSize": 8,
            "targets": [{"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A10G"}}],
        },
        "serving": {
            "release": "25.01",
            "replicas": 2,
            "resources": {"limits": {"nvidia.com/gpu": 1}},
            "nodeSelector": {},
            "tolerations": [],
            "dynamicBatching": {"maxQueueDelayMicroseconds": 100},
        },
        "repository": {"claimName": "models"},
    }
    # The sample writes optional strings out empty; both the schema and parse_spec accept that.
    assert schema_errors(root, sample) == []
    parse_spec(sample)


@pytest.mark.parametrize(
    ("field", "value", "error_path"),
    [
        ("source.uri", "ftp://host/model.onnx", "spec.source.uri"),
        ("source.sha256", "ABC", "spec.source.sha256"),
        ("model.format", "pytorch", "spec.model.format"),
        ("model.name", "a/b", "spec.model.name"),
        ("engine.maxBatchSize", -1, "spec.engine.maxBatchSize"),
        ("engine.maxBatchSize", "8", "spec.engine.maxBatchSize"),
        ("engine.gpuKinds", "All", "spec.engine.gpuKinds"),
        ("engine.hardwareCompatibility", "AMPERE_PLUS", "spec.engine.hardwareCompatibility"),
        ("serving.release", "2501", "spec.serving.release"),
        ("serving.replicas", -1, "spec.serving.replicas"),
        ("serving.resources.limits", {"memory": "lots"}, "spec.serving.resources.limits.memory"),
        ("repository.subPath", "../up", "spec.repository.subPath"),
    ],
)
def test_schema_rejects_what_parse_spec_rejects(
    root: Schema, field: str, value: Any, error_path: str
) -> None:
    body = copy.deepcopy(MINIMAL)
    node = body["spec"]
    *parents, leaf = field.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    assert error_path in schema_errors(root, body)
    with pytest.raises(SpecError) as error:
        parse_spec(body)
    assert error.value.field.startswith(error_path)


@pytest.mark.parametrize(
    ("item", "schema_path", "spec_field"),
    [
        ({"location": "../model.onnx.data", "sha256": "a" * 64}, "0.location", "[0].location"),
        ({"location": "./model.onnx.data", "sha256": "a" * 64}, "0.location", "[0].location"),
        ({"location": "model.onnx.data"}, "0", "[0].sha256"),
        ({"location": "model.onnx.data", "sha256": "A" * 64}, "0.sha256", "[0].sha256"),
        ({"location": "model.onnx.data", "sha256": ""}, "0.sha256", "[0].sha256"),
    ],
)
def test_schema_rejects_the_external_data_pins_parse_spec_rejects(
    root: Schema, item: dict[str, str], schema_path: str, spec_field: str
) -> None:
    """The schema's error paths number list items with dots, SpecError's with brackets."""
    body = copy.deepcopy(MINIMAL)
    body["spec"]["source"]["externalData"] = [item]
    assert f"spec.source.externalData.{schema_path}" in schema_errors(root, body)
    with pytest.raises(SpecError) as error:
        parse_spec(body)
    assert error.value.field == f"spec.source.externalData{spec_field}"


def test_schema_and_parse_spec_accept_external_data_pins(root: Schema) -> None:
    body = copy.deepcopy(MINIMAL)
    body["spec"]["source"]["externalData"] = [
        {"location": "model.onnx.data", "sha256": "a" * 64},
        {"location": "weights/layer1.0.conv1.weight", "sha256": "b" * 64},
    ]
    assert schema_errors(root, body) == []
    assert len(parse_spec(body).source.external_data) == 2
    items = node_at(root, "spec.source.externalData")
    assert items["maxItems"] == spec.MAX_EXTERNAL_DATA
    assert items["x-kubernetes-list-map-keys"] == ["location"]
    assert node_at(root, "spec.source.externalData[].location")["maxLength"] == spec.MAX_EXTERNAL_LOCATION


def integer_fields(root: Schema) -> Iterator[tuple[str, int, int]]:
    for path, node in walk(root["properties"]["spec"], "spec"):
        if node.get("type") == "integer" and "[]" not in path and "minimum" in node and "maximum" in node:
            yield path, node["minimum"], node["maximum"]


def body_with(path: str, value: int) -> dict[str, Any]:
    body = copy.deepcopy(MINIMAL)
    # Context in which every integer's full range is otherwise valid.
    body["spec"]["engine"] = {"maxBatchSize": 256}
    body["spec"]["serving"] = {"resources": {"requests": {"cpu": "1"}}, "autoscaling": {"maxReplicas": 1000}}
    if path.endswith("targetQueueTimeMicroseconds"):
        body["spec"]["serving"]["autoscaling"]["metric"] = {"type": "queueTime"}
    node = body
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return body


def test_integer_ranges_agree_between_crd_and_parse_spec(root: Schema) -> None:
    checked = 0
    for path, low, high in integer_fields(root):
        for good in (low, high):
            body = body_with(path, good)
            if path.endswith("maxReplicas"):
                body["spec"]["serving"]["autoscaling"]["minReplicas"] = 1
            parse_spec(body)
        for bad in (low - 1, high + 1):
            with pytest.raises(SpecError) as error:
                parse_spec(body_with(path, bad))
            assert error.value.field == path, (path, bad)
        checked += 1
    assert checked >= 12


def test_max_batch_zero_is_valid_for_the_schema_and_parse_spec(root: Schema) -> None:
    """The tutorial's layout (no batching) passes the schema's ranges and parse_spec, with the
    batcher's other settings left at their defaults."""
    body = copy.deepcopy(MINIMAL)
    body["spec"]["engine"] = {"maxBatchSize": 0}
    body["spec"]["serving"] = {
        "dynamicBatching": {"maxQueueDelayMicroseconds": 100, "preferredBatchSizes": []}
    }
    assert schema_errors(root, body) == []
    assert parse_spec(body).engine.max_batch_size == 0


def test_rules_on_max_batch_size_speak_of_zero(root: Schema) -> None:
    """Every CEL rule that reads maxBatchSize was written with 0 in mind: the optBatchSize rule says
    what 0 allows, and preferredBatchSizes with 0 has a rule (and a message) of its own."""
    texts = [(r["rule"], r["message"]) for _, _, r in rules(root) if "maxBatchSize" in r["rule"]]
    assert len(texts) == 3
    assert any("0 when maxBatchSize is 0" in message for _, message in texts)
    (zero,) = [message for rule, message in texts if "maxBatchSize != 0" in rule]
    assert "must be empty with engine.maxBatchSize 0" in zero
    (bound,) = [rule for rule, message in texts if "at most engine.maxBatchSize" in message]
    assert "maxBatchSize == 0" in bound  # left to the rule above, so one mistake gives one message
