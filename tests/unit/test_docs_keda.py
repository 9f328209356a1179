"""The KEDA recipe the README and docs/autoscaling.md show is the file the e2e test applies.

tests/e2e/test_keda.py applies ``docs/keda/scaledobject.yaml`` unchanged; both
documents must show that file
verbatim between their ``keda-scaledobject`` markers, so the recipe a reader copies
is the tested one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from tritonresnet.api import names

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "docs" / "keda" / "scaledobject.yaml"
BLOCK_RE = re.compile(
    r"<!-- keda-scaledobject:start -->\n(?:<!--.*?-->\n)?```yaml\n(?P<body>.*?)```\n"
    r"<!-- keda-scaledobject:end -->",
    re.DOTALL,
)


@pytest.mark.parametrize("document", ["README.md", "docs/autoscaling.md"])
def test_document_shows_the_tested_scaledobject_verbatim(document: str) -> None:
    blocks = BLOCK_RE.findall((REPO / document).read_text())
    assert blocks == [RECIPE.read_text()]


def test_scaledobject_targets_the_tritonresnet_scale_subresource() -> None:
    recipe = yaml.safe_load(RECIPE.read_text())
    target = recipe["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (names.API_VERSION, names.KIND)
    (trigger,) = recipe["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "nv_inference_queue_duration_us" in trigger["metadata"]["query"]
