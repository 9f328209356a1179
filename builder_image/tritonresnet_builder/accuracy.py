"""The accuracy gate: a built plan must answer as onnxruntime does before it is installed.

A TensorRT plan at fp16 (or bf16, fp8) computes with fewer bits than the ONNX
model it came from; for most ResNets the drift is small, for some it changes
the ranking. The build runs the plan and onnxruntime on the same fixed inputs
(random values from a fixed seed, the model's own shapes) and compares the
first output: the share of inputs whose top-5 classes are the same set, and
the largest absolute difference of any value. Outside the spec's tolerance
(``spec.engine.accuracy``) the build fails with ``AccuracyCheckFailed`` and
the numbers, before the engine folder exists, so nothing is published.

How the plan runs is the caller's (:data:`Runner`): on a GPU node it is
tensorrt_engine's runner; tests give a stand-in.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tritonresnet_builder.contract import AccuracyTolerance, ReferenceAnswers, Tensor
from tritonresnet_builder.failures import bad_input, unsupported

ACCURACY_FIELD = "spec.engine.accuracy"
#: How many inputs the gate compares, and the seed that makes them the same on every build.
SAMPLES = 8
SEED = 20261202
TOP = 5

Array = npt.NDArray[Any]
#: Runs a model file on named inputs (each with its batch dimension) and returns its first output.
Runner = Callable[[Path, Mapping[str, Array]], Array]

#: Triton datatype -> numpy dtype, for the inputs the gate makes.
_DTYPES: dict[str, type[np.generic]] = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "BOOL": np.bool_,
}


@dataclass(frozen=True)
class Agreement:
    samples: int
    top5_agreement_percent: float  #: inputs whose top-5 classes are the same set, in percent
    max_abs_difference: float


def fixed_inputs(inputs: tuple[Tensor, ...], batch: int = SAMPLES, seed: int = SEED) -> dict[str, Array]:
    """The same inputs on every build: standard-normal floats (what a normalised image is
    like), small integers for integer inputs; every shape is without its batch dimension.
    (The operator makes them again from a build's :class:`ReferenceAnswers` to verify an
    onnx version: numpy's generator gives the same values for the same seed.)"""
    rng = np.random.default_rng(seed)
    out: dict[str, Array] = {}
    for tensor in inputs:
        dtype = _DTYPES.get(tensor.datatype)
        if dtype is None:
            raise bad_input(
                "UnsupportedModel",
                f"the accuracy check cannot make inputs of type {tensor.datatype} ({tensor.name!r})",
                ACCURACY_FIELD,
            )
        shape = (batch, *(max(d, 1) for d in tensor.shape))
        if np.issubdtype(dtype, np.floating):
            out[tensor.name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[tensor.name] = rng.integers(0, 2, shape).astype(dtype)
    return out


def compare(reference: Array, candidate: Array) -> Agreement:
    """How far ``candidate`` (the plan's output) is from ``reference`` (onnxruntime's)."""
    if reference.shape != candidate.shape:
        raise bad_input(
            "AccuracyCheckFailed",
            f"the plan's output has shape {candidate.shape}, onnxruntime's {reference.shape}",
            ACCURACY_FIELD,
        )
    ref = reference.reshape(reference.shape[0], -1).astype(np.float64)
    got = candidate.reshape(candidate.shape[0], -1).astype(np.float64)
    same = [set(r) == set(g) for r, g in zip(top_classes(ref), top_classes(got), strict=True)]
    return Agreement(
        samples=len(same),
        top5_agreement_percent=100.0 * sum(same) / max(len(same), 1),
        max_abs_difference=float(np.max(np.abs(ref - got))) if ref.size else 0.0,
    )


def top_classes(rows: Array) -> list[list[int]]:
    """Per row, the indices of its ``TOP`` largest values, best first (ties: the lower index)."""
    flat = rows.reshape(rows.shape[0], -1)
    top = min(TOP, flat.shape[1])
    return [[int(i) for i in np.argsort(-row, kind="stable")[:top]] for row in flat]


def reference_answers(reference: Array, seed: int = SEED) -> ReferenceAnswers:
    """What an onnx build reports of onnxruntime's output on the fixed inputs: per sample its
    top-5 classes and its values there (rounded to 7 significant digits: float32's)."""
    flat = reference.reshape(reference.shape[0], -1).astype(np.float64)
    top = top_classes(flat)
    return ReferenceAnswers(
        seed=seed,
        samples=int(flat.shape[0]),
        top5=tuple(tuple(row) for row in top),
        values=tuple(tuple(float(f"{flat[n, i]:.7g}") for i in row) for n, row in enumerate(top)),
    )


def compare_with_reference(reference: ReferenceAnswers, candidate: Array) -> Agreement:
    """How far ``candidate`` (the served model's first output on the fixed inputs) is from a
    build's :class:`ReferenceAnswers`: top-5 sets as :func:`compare`; the max abs difference
    over the reference's top-5 positions (all it keeps)."""
    got = candidate.reshape(candidate.shape[0], -1).astype(np.float64)
    if got.shape[0] != reference.samples:
        raise ValueError(f"{got.shape[0]} answers for {reference.samples} reference samples")
    same = [set(row) == set(want) for row, want in zip(top_classes(got), reference.top5, strict=True)]
    differences = [
        abs(got[n, index] - value)
        for n, (indexes, values) in enumerate(zip(reference.top5, reference.values, strict=True))
        for index, value in zip(indexes, values, strict=True)
    ]
    return Agreement(
        samples=len(same),
        top5_agreement_percent=100.0 * sum(same) / max(len(same), 1),
        max_abs_difference=max(differences, default=0.0),
    )


def outside(agreement: Agreement, tolerance: AccuracyTolerance) -> bool:
    low = agreement.top5_agreement_percent < tolerance.min_top5_agreement_percent
    return low or agreement.max_abs_difference > tolerance.max_abs_difference


def disagreement(agreement: Agreement, tolerance: AccuracyTolerance, what: str) -> str:
    """The numbers of an agreement outside ``tolerance``, for ``what`` (the fp16 plan, the served model)."""
    return (
        f"{what} and onnxruntime disagree on {agreement.samples} fixed inputs: top-5 "
        f"agreement {agreement.top5_agreement_percent:.1f}% (at least "
        f"{tolerance.min_top5_agreement_percent}% wanted), max abs difference "
        f"{agreement.max_abs_difference:.4g} (at most {tolerance.max_abs_difference:.4g} wanted)"
    )


def require(agreement: Agreement, tolerance: AccuracyTolerance, precision: str) -> None:
    """AccuracyCheckFailed with the numbers when ``agreement`` is outside ``tolerance``."""
    if not outside(agreement, tolerance):
        return
    raise bad_input(
        "AccuracyCheckFailed",
        disagreement(agreement, tolerance, f"the {precision} plan")
        + "; build at a wider precision (fp32) or widen spec.engine.accuracy",
        ACCURACY_FIELD,
    )


def onnxruntime_runner(model: Path, inputs: Mapping[str, Array]) -> Array:
    """The reference: onnxruntime on CPU (external data is read from the model's folder)."""
    try:
        ort: Any = importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise unsupported(
            "OnnxRuntimeMissing", "the accuracy check needs onnxruntime, which this image lacks"
        ) from exc
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    first: Array = session.run(None, dict(inputs))[0]
    return first


def _in_batches(run: Runner, path: Path, feed: Mapping[str, Array], largest: int) -> Array:
    """``run`` on ``feed`` in batches of at most ``largest`` (the plan's profile ends there,
    and a model exported with batch 1 takes one input at a time)."""
    total = len(next(iter(feed.values())))
    parts = [
        run(path, {name: value[start : start + largest] for name, value in feed.items()})
        for start in range(0, total, largest)
    ]
    return np.concatenate(parts)


def reference(model: Path, inputs: tuple[Tensor, ...], largest_batch: int) -> ReferenceAnswers:
    """onnxruntime's answers to the fixed inputs, for an onnx version's verification."""
    feed = fixed_inputs(inputs)
    return reference_answers(_in_batches(onnxruntime_runner, model, feed, largest_batch))


def check(
    model: Path,
    plan: Path,
    inputs: tuple[Tensor, ...],
    tolerance: AccuracyTolerance,
    precision: str,
    run_plan: Runner,
    largest_batch: int,
) -> Agreement:
    """Run both on the fixed inputs, compare, and refuse a plan outside the tolerance."""
    feed = fixed_inputs(inputs)
    reference = _in_batches(onnxruntime_runner, model, feed, largest_batch)
    agreement = compare(reference, _in_batches(run_plan, plan, feed, largest_batch))
    require(agreement, tolerance, precision)
    return agreement
