"""tensorrt_api.import_tensorrt: the real module typed as the facade, or TensorRTMissing (exit 6)."""

from __future__ import annotations

import sys
import types

import pytest
from tritonresnet_builder import tensorrt_api
from tritonresnet_builder.contract import ExitCode
from tritonresnet_builder.failures import BuilderError


def test_no_tensorrt_is_tensorrt_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail, as on a machine without TensorRT.
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BuilderError) as caught:
        tensorrt_api.import_tensorrt()
    assert (caught.value.exit_code, caught.value.kind) == (ExitCode.UNSUPPORTED, "TensorRTMissing")
    assert "not installed" in caught.value.message


def test_a_tensorrt_without_builder_is_tensorrt_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stubs-only package imports as a namespace with no Builder: not TensorRT."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(BuilderError) as caught:
        tensorrt_api.import_tensorrt()
    assert (caught.value.exit_code, caught.value.kind) == (ExitCode.UNSUPPORTED, "TensorRTMissing")
    assert "no Builder" in caught.value.message


def test_a_module_with_builder_is_handed_out_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in = types.ModuleType("tensorrt")
    stand_in.Builder = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in)
    assert tensorrt_api.import_tensorrt() is stand_in
