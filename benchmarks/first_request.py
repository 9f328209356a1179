"""First request after Ready against steady state, with and without the builder's warm-up.

Publishes the test ground's ResNet-50 ONNX (random weights, dynamic batch) as
the builder does: ``configs/v1.pbtxt`` from ``triton_config.model_config``,
max batch 8, once with ``model_warmup`` (the builder's default: batch 1 and
batch 8, random data) and once without. Each is served by the real
``tritonserver`` of the test ground (onnxruntime STAND-IN backend, CPU) with
the operator's flags (explicit model control, the pinned config, strict
readiness), so the server is ready exactly when the model is.

Once the server answers ready, one client (connected beforehand, so no TCP
set-up is counted) sends, one after the other:

1. the first request at batch 1, then the first at batch 8: what a client
   that arrives right after Ready waits for;
2. ``--steady`` more requests at each size; their median is the steady state.

It also reports the time from starting the server to ready, which is what the
warm-up costs. The two configs run in ``--rounds`` interleaved rounds
(warm, cold, warm, cold ...) so that a load from elsewhere on the machine hits
both alike; each cell is the median over the rounds, and first / steady the
median of each round's own ratio.

    .venv/bin/python benchmarks/first_request.py
    .venv/bin/python benchmarks/first_request.py --rounds 5 --steady 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import tritonclient.http as httpclient  # noqa: E402
from testground.models import ensure_models  # noqa: E402
from testground.triton import start_tritonserver  # noqa: E402
from tritonresnet_builder import triton_config  # noqa: E402
from tritonresnet_builder.contract import Tensor  # noqa: E402

MODEL = "resnet50"
MAX_BATCH = 8
SIZES = (1, MAX_BATCH)
SEED = 20261201


@dataclass(frozen=True)
class Round:
    warmup: bool
    ready_seconds: float  #: server start to ready (model loaded, and warmed up if asked)
    first_ms: dict[int, float]  #: batch size -> the first request's latency
    steady_ms: dict[int, float]  #: batch size -> median of the following requests


def write_repository(folder: Path, model_file: Path, warmup: bool) -> Path:
    """``<folder>/resnet50/{1/model.onnx, configs/v1.pbtxt}``, the config through the builder's code."""
    config = triton_config.model_config(
        name=MODEL,
        fmt="onnx",
        inputs=(Tensor("input", "FP32", (3, 224, 224)),),
        outputs=(Tensor("output", "FP32", (1000,)),),
        serving=triton_config.ServingSettings(
            max_batch_size=MAX_BATCH, instance_kind="KIND_CPU", warmup=warmup
        ),
        version=1,
        default_model_filename="model.onnx",
    )
    model = folder / MODEL
    (model / "1").mkdir(parents=True)
    (model / "configs").mkdir()
    os.link(model_file, model / "1" / "model.onnx")  # a hard link: no 100 MB copy per round
    (model / "configs" / "v1.pbtxt").write_text(triton_config.render(config))
    return folder


def timed_request(client: httpclient.InferenceServerClient, batch: np.ndarray) -> float:
    request = httpclient.InferInput("input", list(batch.shape), "FP32")
    request.set_data_from_numpy(batch)
    start = time.perf_counter()
    client.infer(MODEL, [request], model_version="1")
    return (time.perf_counter() - start) * 1000.0


def one_round(model_file: Path, warmup: bool, steady: int) -> Round:
    rng = np.random.default_rng(SEED)
    batches = {n: rng.standard_normal((n, 3, 224, 224)).astype(np.float32) for n in SIZES}
    args = (
        "--model-control-mode=explicit",
        f"--load-model={MODEL}",
        "--model-config-name=v1",
        "--strict-readiness=true",
        "--exit-on-error=false",
    )
    with tempfile.TemporaryDirectory(prefix="first-request-") as scratch:
        repository = write_repository(Path(scratch), model_file, warmup)
        started = time.perf_counter()
        with start_tritonserver(repository, *args, ready_timeout=600.0) as server:
            ready = time.perf_counter() - started
            client = httpclient.InferenceServerClient(server.http_url, network_timeout=300.0)
            try:
                assert client.is_model_ready(MODEL, "1")  # the connection is open before the clock runs
                first = {n: timed_request(client, batches[n]) for n in SIZES}
                after = {
                    n: statistics.median(timed_request(client, batches[n]) for _ in range(steady))
                    for n in SIZES
                }
            finally:
                client.close()
    return Round(warmup, ready, first, after)


def median(rounds: Sequence[Round], pick: str, size: int = 0) -> float:
    values = [getattr(r, pick)[size] if size else getattr(r, pick) for r in rounds]
    return statistics.median(values)


def table(rounds: Sequence[Round]) -> str:
    lines = [
        "| config | start -> ready | first request, batch 1 | steady, batch 1 | first / steady | "
        f"first request, batch {MAX_BATCH} | steady, batch {MAX_BATCH} | first / steady |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for warmup in (True, False):
        mine = [r for r in rounds if r.warmup == warmup]
        cells = [f"{median(mine, 'ready_seconds'):.2f} s"]
        for n in SIZES:
            first, steady = median(mine, "first_ms", n), median(mine, "steady_ms", n)
            # The ratio within each round, then its median: a round's first and steady requests
            # are seconds apart, while the machine's load can change between rounds.
            ratio = statistics.median(r.first_ms[n] / r.steady_ms[n] for r in mine)
            cells += [f"{first:.0f} ms", f"{steady:.0f} ms", f"{ratio:.2f}x"]
        name = "with model_warmup (builder default)" if warmup else "without model_warmup"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per config")
    parser.add_argument("--steady", type=int, default=10, help="requests per size after the first")
    args = parser.parse_args(argv)
    model_file = ensure_models().onnx_file(MODEL)
    rounds: list[Round] = []
    for index in range(args.rounds):
        for warmup in (True, False):
            result = one_round(model_file, warmup, args.steady)
            rounds.append(result)
            print(
                f"round {index + 1} {'warm' if warmup else 'cold'}: ready {result.ready_seconds:.2f} s, "
                + ", ".join(
                    f"batch {n} first {result.first_ms[n]:.0f} ms steady {result.steady_ms[n]:.0f} ms"
                    for n in SIZES
                ),
                file=sys.stderr,
                flush=True,
            )
    print(
        f"\nResNet-50 ONNX (random weights), max batch {MAX_BATCH}, tritonserver 2.51 with the "
        f"onnxruntime stand-in on CPU ({os.cpu_count()} cores); median of {args.rounds} rounds, "
        f"steady = median of {args.steady} requests\n"
    )
    print(table(rounds))


if __name__ == "__main__":
    main()
