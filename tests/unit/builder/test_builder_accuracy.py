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
    Result,
    Source,
    Tensor,
    parse_args,
    parse_result,
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


# -- the reference an onnx build carries for the operator's verification ----------------------


def logits(samples: int = 8, classes: int = 1000, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((samples, classes)).astype(np.float32)


def test_reference_answers_keep_top_five_and_their_values_and_fit_the_result_message() -> None:
    out = logits()
    reference = accuracy.reference_answers(out)
    assert reference.samples == 8 and reference.seed == accuracy.SEED
    assert reference.top5[0] == tuple(int(i) for i in np.argsort(-out[0])[:5])
    assert reference.values[0][0] == pytest.approx(float(out[0].max()), rel=1e-6)
    result = Result(ok=True, phase="build", format="onnx", reference=reference)
    text = result.to_json()
    assert len(text.encode()) < 1500, "a small part of the 4 KiB termination message"
    assert parse_result(text).reference == reference


def test_the_served_model_agrees_with_its_own_reference_and_a_different_one_does_not() -> None:
    out = logits()
    reference = accuracy.reference_answers(out)
    same = accuracy.compare_with_reference(reference, out)
    assert same.top5_agreement_percent == 100.0 and same.max_abs_difference < 1e-6
    assert not accuracy.outside(same, AccuracyTolerance())
    other = accuracy.compare_with_reference(reference, logits(seed=4))
    assert other.top5_agreement_percent < 50.0 and other.max_abs_difference > 1.0
    assert accuracy.outside(other, AccuracyTolerance())
    message = accuracy.disagreement(other, AccuracyTolerance(), "the served model")
    assert "the served model and onnxruntime disagree on 8 fixed inputs" in message
    assert f"top-5 agreement {other.top5_agreement_percent:.1f}%" in message


def test_compare_with_reference_refuses_answers_for_another_number_of_samples() -> None:
    reference = accuracy.reference_answers(logits())
    with pytest.raises(ValueError, match="7 answers for 8 reference samples"):
        accuracy.compare_with_reference(reference, logits(samples=7))


def test_a_result_without_a_reference_parses_as_none() -> None:
    assert parse_result(Result(ok=True, phase="build").to_json()).reference is None
