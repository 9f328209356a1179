"""The accuracy gate's numbers: top-5 agreement and max abs difference between two outputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from tritonresnet_builder import accuracy
from tritonresnet_builder.contract import (
    AccuracyTolerance,
    BuildArgs,
    EngineSettings,
    Source,
    Tensor,
    parse_args,
)
from tritonresnet_builder.failures import BuilderError


def test_identical_outputs_agree_fully() -> None:
    out = np.random.default_rng(0).standard_normal((8, 1000)).astype(np.float32)
    agreement = accuracy.compare(out, out.copy())
    assert (agreement.samples, agreement.top5_agreement_percent, agreement.max_abs_difference) == (
        8,
        100.0,
        0.0,
    )


def test_a_swap_inside_the_top_five_keeps_agreement_and_one_across_its_edge_does_not() -> None:
    """Agreement is of the top-5 set: an order change inside it is fp16's usual drift."""
    reference = np.tile(np.arange(10, dtype=np.float32), (2, 1))  # top 5: classes 5..9
    candidate = reference.copy()
    candidate[0, [9, 8]] = candidate[0, [8, 9]]  # inside the top five
    candidate[1, [5, 4]] = candidate[1, [4, 5]]  # class 4 enters, class 5 leaves
    agreement = accuracy.compare(reference, candidate)
    assert agreement.top5_agreement_percent == 50.0
    assert agreement.max_abs_difference == 1.0


def test_require_names_both_numbers_and_the_tolerance() -> None:
    agreement = accuracy.Agreement(samples=8, top5_agreement_percent=75.0, max_abs_difference=0.25)
    accuracy.require(agreement, AccuracyTolerance(75, 0.25), "fp16")  # at the limits: passes
    with pytest.raises(BuilderError) as error:
        accuracy.require(agreement, AccuracyTolerance(90, 1.0), "fp16")
    assert error.value.kind == "AccuracyCheckFailed"
    assert "top-5 agreement 75.0% (at least 90% wanted), max abs difference 0.25 (at most 1 wanted)" in (
        error.value.message
    )
    with pytest.raises(BuilderError, match=re.escape("max abs difference 0.25 (at most 0.1 wanted)")):
        accuracy.require(agreement, AccuracyTolerance(50, 0.1), "fp16")


def test_fixed_inputs_are_the_same_on_every_build_and_shaped_as_the_model() -> None:
    inputs = (Tensor("input", "FP32", (3, 224, 224)),)
    first, again = accuracy.fixed_inputs(inputs), accuracy.fixed_inputs(inputs)
    assert first["input"].shape == (accuracy.SAMPLES, 3, 224, 224) and first["input"].dtype == np.float32
    assert np.array_equal(first["input"], again["input"])


def test_the_tolerance_reaches_the_builder_through_the_argv_for_tensorrt_only() -> None:
    engine = EngineSettings(format="tensorrt", accuracy=AccuracyTolerance(80, 0.125))
    args = BuildArgs(repository="/m", engine_key="k", source=Source(uri="/m.onnx"), engine=engine)
    parsed = parse_args(args.to_argv())
    assert isinstance(parsed, BuildArgs) and parsed.engine.accuracy == AccuracyTolerance(80, 0.125)
    onnx = BuildArgs(
        repository="/m", engine_key="k", source=Source(uri="/m.onnx"), engine=EngineSettings("onnx")
    )
    assert not [a for a in onnx.to_argv() if "agreement" in a or "difference" in a]
