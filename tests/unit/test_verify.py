"""verify: the parts of an endpoint check that need no server (the smoke request's inputs)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from tritonresnet.controller import verify
from tritonresnet.controller.verify import SMOKE_INPUT_LIMIT_BYTES, smoke_inputs, smoke_shape
from tritonresnet_builder.contract import Tensor

IMAGE = Tensor("input", "FP32", (3, 224, 224))
MIB = 2**20


def test_a_resnet_input_gets_one_seeded_image_of_its_datatype() -> None:
    plan = smoke_inputs([IMAGE], batched=True)
    assert plan.skipped == ""
    (array,) = plan.arrays.values()
    assert array.shape == (1, 3, 224, 224)
    assert array.dtype == np.float32
    assert np.isfinite(array).all() and array.std() > 0.5  # not constant: a seeded normal block
    np.testing.assert_array_equal(array, smoke_inputs([IMAGE], batched=True).arrays["input"])


def test_dynamic_dimensions_are_224_and_unbatched_shapes_stay_as_declared() -> None:
    assert smoke_shape(Tensor("x", "FP32", (3, -1, -1)), batched=True) == [1, 3, 224, 224]
    assert smoke_shape(Tensor("x", "FP32", (1, 3, 224, 224)), batched=False) == [1, 3, 224, 224]


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [("FP16", np.float16), ("UINT8", np.uint8), ("INT64", np.int64), ("BOOL", np.bool_)],
)
def test_each_fixed_size_datatype_gets_an_array_of_its_own_type(datatype: str, dtype: type) -> None:
    array = smoke_inputs([Tensor("x", datatype, (4, 4))], batched=False).arrays["x"]
    assert array.shape == (4, 4)
    assert array.dtype == dtype


def test_bytes_inputs_skip_the_smoke_inference_saying_why() -> None:
    plan = smoke_inputs([Tensor("jpeg", "BYTES", (1,))], batched=True)
    assert plan.arrays == {}
    assert "BYTES" in plan.skipped and "'jpeg'" in plan.skipped


def test_inputs_are_counted_together_in_bytes_of_their_datatype_against_the_bound() -> None:
    # 2 x FP16 [1, 2048, 2048] = 16 MiB exactly: allowed; a third byte over is not.
    half = Tensor("a", "FP16", (2048, 2048))
    assert smoke_inputs([half, Tensor("b", "FP16", (2048, 2048))], batched=True).skipped == ""
    over = smoke_inputs([half, Tensor("b", "FP16", (2048, 2048)), Tensor("c", "UINT8", (1,))], batched=True)
    assert over.arrays == {}
    assert over.skipped == "the smoke input would take 16.0 MiB, above the 16 MiB bound"


def test_dynamic_dimensions_count_after_substitution() -> None:
    # [1, 3, -1, -1] of FP64 looks small; at 224 x 224 it is 1.15 MiB, above a 1 MiB bound.
    plan = smoke_inputs([Tensor("x", "FP64", (3, -1, -1))], batched=True, limit=MIB)
    assert plan.arrays == {} and "1.1 MiB, above the 1 MiB bound" in plan.skipped


def test_a_huge_declared_input_allocates_nothing_and_one_at_the_bound_little_more_than_itself() -> None:
    huge = Tensor("input", "FP32", (3, 65536, 65536))  # 48 GiB if built
    at_bound = Tensor("input", "FP32", (4, 1024, 1024))  # 16 MiB with the batch of 1
    tracemalloc.start()
    try:
        skipped = smoke_inputs([huge], batched=True)
        _, peak_skipped = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        built = smoke_inputs([at_bound], batched=True)
        _, peak_built = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert skipped.arrays == {} and "49152.0 MiB" in skipped.skipped
    assert peak_skipped < MIB
    assert built.arrays["input"].nbytes == SMOKE_INPUT_LIMIT_BYTES
    assert peak_built < SMOKE_INPUT_LIMIT_BYTES + MIB


def test_a_skipped_smoke_is_said_in_the_passing_checks_message() -> None:
    expected = verify.Expected("resnet", 2, (IMAGE,), ())
    assert verify._answered(expected) == "model resnet v2 answered"
    assert (
        verify._answered(expected, "too big") == "model resnet v2 answered (smoke inference skipped: too big)"
    )


# -- Triton's own reasons, from its repository index ---------------------------------------------

TRACEBACK = (
    "Internal: NoSuchFile: model.onnx failed. File doesn't exist\n\nAt:\n  backend/model.py(61): initialize\n"
)


def test_the_index_entry_of_the_expected_version_gives_its_state_and_the_first_line_of_its_reason() -> None:
    index = [
        {"name": "other", "version": "2", "state": "UNAVAILABLE", "reason": "not this one"},
        {"name": "resnet", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
        {"name": "resnet", "version": "2", "state": "UNAVAILABLE", "reason": TRACEBACK},
    ]
    assert verify.index_reason(index, "resnet", 2) == (
        "Triton says version 2 is UNAVAILABLE: Internal: NoSuchFile: model.onnx failed. File doesn't exist"
    )


def test_an_entry_without_version_or_reason_still_says_what_triton_knows() -> None:
    parse_error = [{"name": "resnet", "state": "UNAVAILABLE", "reason": "failed to parse configs/v2.pbtxt"}]
    assert verify.index_reason(parse_error, "resnet", 2) == (
        "Triton says the model is UNAVAILABLE: failed to parse configs/v2.pbtxt"
    )
    assert verify.index_reason([{"name": "resnet", "version": "2", "state": "LOADING"}], "resnet", 2) == (
        "Triton says version 2 is LOADING"
    )
    assert verify.index_reason([], "resnet", 2) == "Triton's repository index has no model resnet"


def test_a_long_reason_is_cut_to_what_a_status_message_can_carry() -> None:
    index = [{"name": "resnet", "version": "2", "state": "UNAVAILABLE", "reason": "x" * 5000}]
    said = verify.index_reason(index, "resnet", 2)
    assert len(said) == 480 and said.endswith("...")
