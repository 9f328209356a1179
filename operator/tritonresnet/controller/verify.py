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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from tritonresnet_builder.contract import Tensor

# The check's input and answer are part of the reconcile's observation.
from tritonresnet.controller.observe import EndpointCheck, Expected

__all__ = ["EndpointCheck", "Expected", "check_endpoint"]

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


def _smoke_input(tensor: Tensor, batched: bool) -> npt.NDArray[Any]:
    from tritonclient.utils import triton_to_np_dtype

    shape = [d if d > 0 else _DYNAMIC_DIM_SIZE for d in tensor.shape]
    if batched:
        shape = [1, *shape]
    rng = np.random.default_rng(0)
    return rng.standard_normal(shape).astype(triton_to_np_dtype(tensor.datatype))


def check_endpoint(
    endpoint: str, expected: Expected, timeout: float = 10.0, smoke: bool = True
) -> EndpointCheck:
    """Check one endpoint; ``timeout`` bounds each request, ``smoke`` adds the inference."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    version = str(expected.version)
    try:
        triton = httpclient.InferenceServerClient(
            endpoint, connection_timeout=timeout, network_timeout=timeout
        )
        try:
            if not triton.is_server_live():
                return EndpointCheck(endpoint, False, "server is not live")
            if not triton.is_server_ready():
                return EndpointCheck(endpoint, False, "server is not ready")
            if not triton.is_model_ready(expected.model, version):
                return EndpointCheck(
                    endpoint, False, f"model {expected.model} version {version} is not ready"
                )
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
            if not smoke:
                return EndpointCheck(endpoint, True, _answered(expected))
            infer_inputs = []
            for tensor in expected.inputs:
                data = _smoke_input(tensor, expected.batched)
                item = httpclient.InferInput(tensor.name, list(data.shape), tensor.datatype)
                item.set_data_from_numpy(data)
                infer_inputs.append(item)
            outputs = [httpclient.InferRequestedOutput(t.name) for t in expected.outputs]
            result = triton.infer(expected.model, infer_inputs, model_version=version, outputs=outputs)
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
        finally:
            triton.close()
    except (InferenceServerException, OSError, ValueError) as exc:
        return EndpointCheck(endpoint, False, f"{type(exc).__name__}: {exc}"[:300])
    return EndpointCheck(endpoint, True, _answered(expected))


def _answered(expected: Expected) -> str:
    # The same words for a full and a cheap check: a re-check that still passes
    # changes nothing the status shows, so it wakes no reconcile pass.
    return f"model {expected.model} v{expected.version} answered"
