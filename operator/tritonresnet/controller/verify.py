"""Prove a rolled-out model answers: tritonclient against every ready endpoint.

``Ready=True`` means more than "pods are Ready": each endpoint is live and
ready, serves the model at the expected version, reports the inputs and
outputs the builder recorded, and returns finite numbers of the right shape
for one smoke inference.

The runtime (``runtime.py``) runs the full check the first time it sees an
endpoint at a version, and again after any failure. While the endpoint keeps
answering it re-checks it periodically without the smoke inference
(``smoke=False``): health, model readiness, the pinned config and the
metadata are a few small requests, whereas an inference would cost every
server a batch every interval.

A ``format: onnx`` version comes with its build's onnxruntime answers to the
accuracy gate's fixed inputs (``Expected.reference``); the full check sends
those inputs too, one sample a request, and fails with the numbers when the
served answers are outside ``spec.engine.accuracy`` (:func:`_accuracy`). The
periodic re-check does not repeat it: the model does not change while served.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from tritonresnet_builder.contract import REFERENCE_SCHEME, Tensor

# The check's input and answer are part of the reconcile's observation.
from tritonresnet.controller.observe import EndpointCheck, Expected

__all__ = ["EndpointCheck", "Expected", "SmokeInputs", "check_endpoint", "smoke_inputs"]

log = logging.getLogger(__name__)

# A dynamic non-batch dimension gets this size in the smoke request: the
# spatial size every ResNet accepts.
_DYNAMIC_DIM_SIZE = 224


def _metadata_mismatch(
    kind: str, expected: Sequence[Tensor], got: Sequence[dict[str, object]], batched: bool
) -> str:
    want = {(t.name, t.datatype, (-1, *t.shape) if batched else t.shape) for t in expected}
    have = {(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"])) for t in got}  # type: ignore[attr-defined]
    if want == have:
        return ""
    return f"{kind} differ: expected {sorted(want)}, server reports {sorted(have)}"


#: The most the smoke request's inputs may hold together, in bytes of the arrays we build.
#: The shapes are the model's: an ONNX file may declare [3, 8192, 8192] or a fixed batch of
#: 256, and the operator checks several endpoints at once inside its own memory limit, so
#: what a check allocates cannot be left to the model. (tritonclient copies the arrays once
#: more into the request body; the bound keeps that copy small too.)
SMOKE_INPUT_LIMIT_BYTES = 16 * 1024 * 1024
#: The smoke data repeats a seeded block of this many values: deterministic, not constant,
#: and the only allocation besides the arrays themselves is this small block.
_SMOKE_BLOCK = 4096


@dataclass(frozen=True)
class SmokeInputs:
    """The arrays of one smoke request (input name -> array), or why there is none."""

    arrays: Mapping[str, npt.NDArray[Any]]
    #: Non-empty when the smoke inference is skipped, in words for the check's message.
    skipped: str = ""


def smoke_shape(tensor: Tensor, batched: bool) -> list[int]:
    """The request shape of ``tensor``: dynamic dimensions at ``_DYNAMIC_DIM_SIZE``, a batch of 1."""
    shape = [d if d > 0 else _DYNAMIC_DIM_SIZE for d in tensor.shape]
    return [1, *shape] if batched else shape


def _numpy_dtype(datatype: str) -> np.dtype[Any] | None:
    """The array type tritonclient wants for a Triton datatype; None for one without fixed-size items."""
    from tritonclient.utils import triton_to_np_dtype

    found = triton_to_np_dtype(datatype)
    if found is None:
        return None
    dtype = np.dtype(found)
    # BYTES maps to object arrays: their size is not the item count times anything we know,
    # and no ResNet takes strings, so there is no smoke input for them.
    return None if dtype.kind == "O" else dtype


def _smoke_block(dtype: np.dtype[Any], rng: np.random.Generator) -> npt.NDArray[Any]:
    if dtype.kind == "b":
        return rng.integers(0, 2, _SMOKE_BLOCK).astype(dtype)
    if dtype.kind in "iu":
        # Small non-negative values fit every integer type (pixel values, class indices).
        return rng.integers(0, 128, _SMOKE_BLOCK).astype(dtype)
    return rng.standard_normal(_SMOKE_BLOCK, dtype=np.float32).astype(dtype)


def smoke_inputs(
    inputs: Sequence[Tensor], batched: bool, limit: int = SMOKE_INPUT_LIMIT_BYTES
) -> SmokeInputs:
    """The smoke request's arrays, never more than ``limit`` bytes together.

    Sized from the declared shapes before anything is allocated. Above the bound
    the smoke inference is skipped, not failed: a model with large inputs is no
    broken model, and failing it would keep a version that serves correctly from
    ever being Ready. The check still proves health, readiness at the version, the
    pinned config and the metadata; ``skipped`` says what it did not prove.
    """
    planned: list[tuple[Tensor, list[int], np.dtype[Any]]] = []
    total = 0
    for tensor in inputs:
        dtype = _numpy_dtype(tensor.datatype)
        if dtype is None:
            return SmokeInputs({}, f"no smoke input for {tensor.name!r} of datatype {tensor.datatype}")
        shape = smoke_shape(tensor, batched)
        total += math.prod(shape) * dtype.itemsize
        planned.append((tensor, shape, dtype))
    if total > limit:
        return SmokeInputs(
            {},
            f"the smoke input would take {total / 2**20:.1f} MiB, above the {limit / 2**20:g} MiB bound",
        )
    rng = np.random.default_rng(0)
    # np.resize repeats the block up to the shape: one allocation of the array's own size.
    arrays = {t.name: np.resize(_smoke_block(dtype, rng), shape) for t, shape, dtype in planned}
    return SmokeInputs(arrays)


#: Of Triton's reason for a model it could not load, this many characters reach the status.
_REASON_CHARS = 480


def _index_entry(index: Sequence[Mapping[str, Any]], model: str, version: int) -> Mapping[str, Any] | None:
    """The index entry of ``model`` at ``version``; one without a version (a config Triton
    could not parse has none yet) or of another version stands in; None without any."""
    entries = [e for e in index if str(e.get("name")) == model]
    exact = [e for e in entries if str(e.get("version") or "") == str(version)]
    loose = [e for e in entries if not e.get("version")]
    chosen = exact or loose or entries
    return chosen[0] if chosen else None


def index_state(index: Sequence[Mapping[str, Any]], model: str, version: int) -> str:
    """Triton's state of ``model`` at ``version`` (READY, LOADING, UNAVAILABLE...); empty when
    the index does not list the model at all."""
    entry = _index_entry(index, model, version)
    return "" if entry is None else str(entry.get("state") or "UNAVAILABLE")


def index_reason(index: Sequence[Mapping[str, Any]], model: str, version: int) -> str:
    """Triton's own words for ``model`` at ``version`` from its repository index; empty if it has none.

    Prefers the entry of that version; an entry without one (a config Triton could not
    parse has no version yet) or of other versions stands in. Only the reason's first line:
    a backend's traceback follows it.
    """
    entry = _index_entry(index, model, version)
    if entry is None:
        return f"Triton's repository index has no model {model}"
    state = str(entry.get("state") or "no state")
    which = f"version {entry['version']}" if entry.get("version") else "the model"
    reason = (str(entry.get("reason") or "").strip().splitlines() or [""])[0]
    said = f"Triton says {which} is {state}" + (f": {reason}" if reason else "")
    return said if len(said) <= _REASON_CHARS else said[: _REASON_CHARS - 3] + "..."


def check_endpoint(
    endpoint: str,
    expected: Expected,
    timeout: float = 10.0,
    smoke: bool = True,
) -> EndpointCheck:
    """Check one endpoint; ``timeout`` bounds each request, ``smoke`` adds the inference.

    ``expected.control_headers`` go with the one request that may need them, the repository
    index, which a locked-down Triton answers only for the operator's credential. A check of
    an ``expected.diagnose`` endpoint (its pod not ready) runs no inference and is marked
    ``diagnostic``.
    """
    found = _check(
        endpoint, expected, timeout, smoke and not expected.diagnose, dict(expected.control_headers)
    )
    return replace(found, diagnostic=True) if expected.diagnose else found


def _check(
    endpoint: str, expected: Expected, timeout: float, smoke: bool, headers: Mapping[str, str]
) -> EndpointCheck:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    version = str(expected.version)
    try:
        triton = httpclient.InferenceServerClient(
            endpoint, connection_timeout=timeout, network_timeout=timeout
        )

        def not_ready(what: str) -> EndpointCheck:
            # "0/1 ready" says nothing a user can act on; the index says why Triton did not load
            # the model (a missing file, a bad config, an engine of another GPU). With strict
            # readiness a model that failed to load makes the whole server not ready, so both
            # cases ask. A refused or failed index request leaves only our own words.
            try:
                index = triton.get_model_repository_index(headers=dict(headers))
            except InferenceServerException:
                return EndpointCheck(endpoint, False, what)
            reason = index_reason(index, expected.model, expected.version)
            unavailable = index_state(index, expected.model, expected.version) in ("UNAVAILABLE", "")
            return EndpointCheck(endpoint, False, f"{what}: {reason}" if reason else what, unavailable)

        try:
            if not triton.is_server_live():
                return EndpointCheck(endpoint, False, "server is not live")
            if not triton.is_server_ready():
                return not_ready("server is not ready")
            if not triton.is_model_ready(expected.model, version):
                return not_ready(f"model {expected.model} version {version} is not ready")
            # Triton falls back to config.pbtxt when the pinned configs/v<N>.pbtxt is
            # missing, and would still report ready: check the policy it really loaded.
            config = triton.get_model_config(expected.model, version)
            pinned = ((config.get("version_policy") or {}).get("specific") or {}).get("versions") or []
            if [int(v) for v in pinned] != [expected.version]:
                return EndpointCheck(
                    endpoint, False, f"Triton loaded a config serving versions {pinned}, not [{version}]"
                )
            meta = triton.get_model_metadata(expected.model, version)
            problem = _metadata_mismatch(
                "inputs", expected.inputs, meta["inputs"], expected.batched
            ) or _metadata_mismatch("outputs", expected.outputs, meta["outputs"], expected.batched)
            if problem:
                return EndpointCheck(endpoint, False, problem)
            # Sized on every check, full or cheap, so both say the same words (see _answered).
            plan = smoke_inputs(expected.inputs, expected.batched)
            if plan.skipped:
                log.info("%s: smoke inference skipped: %s", endpoint, plan.skipped)
            if not smoke or plan.skipped:
                return EndpointCheck(endpoint, True, _answered(expected, plan.skipped))
            outputs = [httpclient.InferRequestedOutput(t.name) for t in expected.outputs]
            request = _infer_inputs(expected.inputs, plan.arrays)
            result = triton.infer(expected.model, request, model_version=version, outputs=outputs)
            for tensor in expected.outputs:
                out = result.as_numpy(tensor.name)
                if out is None or out.size == 0:
                    return EndpointCheck(endpoint, False, f"smoke inference returned no {tensor.name!r}")
                if out.dtype.kind == "f" and not np.isfinite(out).all():
                    return EndpointCheck(
                        endpoint, False, f"smoke inference returned non-finite {tensor.name!r}"
                    )
                want = list(tensor.shape)
                got = list(out.shape[1:] if expected.batched else out.shape)
                if len(got) != len(want) or any(w > 0 and w != g for w, g in zip(want, got, strict=True)):
                    return EndpointCheck(endpoint, False, f"{tensor.name!r} has shape {got}, expected {want}")
            off = _accuracy(triton, expected)
            if off:
                return EndpointCheck(endpoint, False, off, accuracy=True, tolerance=expected.tolerance)
        finally:
            triton.close()
    except (InferenceServerException, OSError, ValueError) as exc:
        return EndpointCheck(endpoint, False, f"{type(exc).__name__}: {exc}"[:300])
    return EndpointCheck(endpoint, True, _answered(expected))


def _infer_inputs(inputs: Sequence[Tensor], arrays: Mapping[str, npt.NDArray[Any]]) -> list[Any]:
    """tritonclient's request inputs for ``inputs``, each carrying its array from ``arrays``."""
    from tritonclient.http import InferInput

    request = []
    for tensor in inputs:
        data = arrays[tensor.name]
        item = InferInput(tensor.name, list(data.shape), tensor.datatype)
        item.set_data_from_numpy(data)
        request.append(item)
    return request


def _accuracy(triton: Any, expected: Expected) -> str:
    """The accuracy gate's words when the served model's first output on the fixed inputs is
    outside ``expected.tolerance`` of the build's reference answers; empty when it is inside,
    or when there is nothing to compare (no reference, a scheme this operator does not know,
    inputs above the smoke bound: logged, the gate proves nothing then, it blocks nothing)."""
    reference = expected.reference
    if reference is None or not expected.outputs:
        return ""
    if reference.scheme != REFERENCE_SCHEME:
        log.info("accuracy gate skipped: reference answers of unknown scheme %r", reference.scheme)
        return ""
    # The builder's module, lazily: it is the gate's one home (the build's inputs, the comparison
    # and its words), and only this IO layer of the operator may pull in numpy.
    from tritonclient.http import InferRequestedOutput
    from tritonresnet_builder import accuracy
    from tritonresnet_builder.failures import BuilderError

    # The gate's inputs have the build's shapes (a dynamic dimension at 1), all samples at once:
    # held to the smoke bound like the smoke request.
    dtypes = [_numpy_dtype(t.datatype) for t in expected.inputs]
    if any(d is None for d in dtypes):
        log.info("accuracy gate skipped: an input without fixed-size items")
        return ""
    size = reference.samples * sum(
        math.prod(max(d, 1) for d in t.shape) * d.itemsize
        for t, d in zip(expected.inputs, dtypes, strict=True)
        if d is not None
    )
    if size > SMOKE_INPUT_LIMIT_BYTES:
        log.info("accuracy gate skipped: its inputs would take %.1f MiB", size / 2**20)
        return ""
    try:
        feed = accuracy.fixed_inputs(expected.inputs, reference.samples, reference.seed)
    except BuilderError as exc:  # inputs the gate cannot make (the build made none either)
        log.info("accuracy gate skipped: %s", exc)
        return ""
    first = expected.outputs[0]
    answers = []
    for n in range(reference.samples):
        sample = {name: data[n : n + 1] if expected.batched else data[n] for name, data in feed.items()}
        request = _infer_inputs(expected.inputs, sample)
        result = triton.infer(
            expected.model,
            request,
            model_version=str(expected.version),
            outputs=[InferRequestedOutput(first.name)],
        )
        out = result.as_numpy(first.name)
        if out is None:
            return f"the accuracy gate's inference returned no {first.name!r}"
        answers.append(out.reshape(1, -1))
    agreement = accuracy.compare_with_reference(reference, np.concatenate(answers))
    if not accuracy.outside(agreement, expected.tolerance):
        return ""
    # The reference is onnxruntime on CPU in the build Job; Triton's backend (another onnxruntime,
    # a GPU execution provider) is what answered otherwise.
    return accuracy.disagreement(agreement, expected.tolerance, "the served model") + (
        f"; the reference is version {expected.version}'s build, onnxruntime on CPU: widen"
        " spec.engine.accuracy if Triton's backend may answer this differently"
    )


def _answered(expected: Expected, skipped: str = "") -> str:
    # The same words for a full and a cheap check: a re-check that still passes
    # changes nothing the status shows, so it wakes no reconcile pass.
    answered = f"model {expected.model} v{expected.version} answered"
    return f"{answered} (smoke inference skipped: {skipped})" if skipped else answered
