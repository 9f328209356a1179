"""classify at folder scale: ``tritonresnet classify DIR`` against the tutorial's loop, on one Triton.

Makes ``--images`` synthetic 1920x1080 JPEGs (seeded numpy noise and shapes,
Pillow quality 90) in a temporary folder, starts the real ``tritonserver`` of
the test ground with the test ground's ResNet-50 ONNX (random weights) in the
onnxruntime STAND-IN backend, and runs, one after the other against that
server:

a. **the tutorial's loop**: for each image, the project's exact reference
   preprocessing (``tritonresnet.client.preprocess.preprocess``, which equals
   torchvision's Resize/CenterCrop/ToTensor/Normalize bit for bit; torchvision
   itself is not installable here), one image per HTTP request, sequential.
   It asks for the top 5 (``class_count=5``) where the tutorial asks for all
   1000, which only makes the loop faster. It runs as its own process;
b. ``tritonresnet classify DIR --json`` with its defaults (a decoding process
   per core, batches of the model's max_batch_size, 4 requests in flight), as
   its own process; its time includes starting the decoding processes;
c. the same with ``--fast-decode``.

The three run in ``--rounds`` interleaved rounds (a b c a b c) and each
variant's fastest round counts, so that a load from elsewhere on the machine
hits all of them alike. It prints images/s, the speed-up over (a) and the
top-5 agreement with (a), then where the time goes: client and server CPU per
image, Triton's own inference time, and each path's preprocessing cost on one
core. On a CPU-only machine the server's inference shares the cores with the
client, so the CPU per image bounds the throughput:
``cores / (client + server CPU per image)``.

How the server uses two cores decides much of the ratio: one instance with two
onnxruntime threads (``--instances 1 --threads 2``, the default) is what serves
a sequential client best; two instances with one thread each can run two
requests at once, which only a client with requests in flight uses.

    .venv/bin/python benchmarks/classify_throughput.py
    .venv/bin/python benchmarks/classify_throughput.py --images 50 --threads 1 --instances 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from testground.models import ensure_models  # noqa: E402
from testground.triton import TritonServer, start_tritonserver  # noqa: E402
from tritonresnet.client.classify import parse_classification  # noqa: E402
from tritonresnet.client.preprocess import preprocess  # noqa: E402

MODEL = "classifier"  # the name in Triton, whichever ONNX file it serves
TOP = 5
SEED = 20261115
MAX_IMAGES = 1000  # the benchmark is bounded: the folder, the runs and their memory
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- the images -----------------------------------------------------------------------


def make_image(index: int, width: int, height: int) -> Image.Image:
    """A deterministic picture: smooth coloured noise, grain, and a dozen flat shapes."""
    rng = np.random.default_rng(SEED + index)
    coarse = rng.integers(0, 256, (max(height // 24, 2), max(width // 24, 2), 3), dtype=np.uint8)
    base = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    grain = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    image = Image.fromarray(np.clip(np.asarray(base, dtype=np.int16) + grain, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, x1 = sorted(int(v) for v in rng.integers(0, width, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
    return image


def make_images(folder: Path, count: int, width: int, height: int) -> list[Path]:
    paths = []
    for index in range(count):
        path = folder / f"image-{index:04d}.jpg"
        make_image(index, width, height).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


# -- the server -----------------------------------------------------------------------


def pooled_onnx(path: Path) -> None:
    """A model that costs the server next to nothing: channel means, then a 3 x 1000 linear layer.

    Same contract as the ResNet ([N, 3, 224, 224] in, [N, 1000] out). With it the
    server stops competing for the two cores, as a GPU server would, and what
    is left is the client: decoding, batching, HTTP.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    weights = numpy_helper.from_array(rng.normal(size=(3, 1000)).astype(np.float32), "weights")
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["means"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["means", "weights"], ["output"]),
        ],
        "pooled",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1000])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the onnxruntime of the stand-in reads
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def model_repository(folder: Path, kind: str, max_batch: int, instances: int, threads: int) -> Path:
    root = folder / "models"
    (root / MODEL / "1").mkdir(parents=True)
    if kind == "resnet50":
        shutil.copy2(ensure_models().onnx_file("resnet50"), root / MODEL / "1" / "model.onnx")
    else:
        pooled_onnx(root / MODEL / "1" / "model.onnx")
    (root / MODEL / "config.pbtxt").write_text(
        f'name: "{MODEL}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch}\n"
        'input [{ name: "input" data_type: TYPE_FP32 dims: [3, 224, 224] }]\n'
        'output [{ name: "output" data_type: TYPE_FP32 dims: [1000] }]\n'
        f"instance_group [{{ count: {instances} kind: KIND_CPU }}]\n"
        f'parameters {{ key: "intra_op_thread_count" value {{ string_value: "{threads}" }} }}\n'
    )
    return root


def _ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def server_cpu_seconds(server_pid: int) -> float:
    """tritonserver and its python backend stubs (its children, which run onnxruntime)."""
    total = _ticks(server_pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == server_pid:
            total += _ticks(int(stat.parent.name))
    return total / CLOCK_TICKS


def client_cpu_seconds() -> float:
    """This process and its finished children (the classify process and its decoding pool)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used since boot (every core, /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def wait_for_quiet(limit: float, busy_cores: float = 0.3, window: float = 3.0) -> float:
    """Wait up to ``limit`` s until other processes use under ``busy_cores`` for ``window`` s; the wait."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = machine_busy_seconds()
        time.sleep(window)
        if (machine_busy_seconds() - before) / window < busy_cores:
            break
    return time.monotonic() - started


def triton_stats(client: Any) -> dict[str, float]:
    # Triton counts a request just after sending its response: let the last one land.
    time.sleep(0.5)
    model = client.get_inference_statistics(model_name=MODEL)["model_stats"][0]
    stats = model["inference_stats"]
    return {
        "requests": float(stats["success"]["count"]),
        "executions": float(model["execution_count"]),
        "images": float(model["inference_count"]),
        "queue_s": stats["queue"]["ns"] / 1e9,
        "infer_s": (
            stats["compute_input"]["ns"] + stats["compute_infer"]["ns"] + stats["compute_output"]["ns"]
        )
        / 1e9,
        "request_s": stats["success"]["ns"] / 1e9,
    }


# -- the runs -------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    seconds: float
    top5: list[list[int]]
    client_cpu: float
    server_cpu: float
    triton: dict[str, float]
    others_cores: float = 0.0
    failed: int = 0


@contextmanager
def measured(server: TritonServer, client: Any, quiet_wait: float) -> Iterator[dict[str, float]]:
    found: dict[str, float] = {}
    before_stats = triton_stats(client)
    found["waited"] = wait_for_quiet(quiet_wait)
    before_client, before_server = client_cpu_seconds(), server_cpu_seconds(server.pid)
    before_busy = machine_busy_seconds()
    started = time.perf_counter()
    yield found
    found["seconds"] = time.perf_counter() - started
    busy = machine_busy_seconds() - before_busy
    found["client_cpu"] = client_cpu_seconds() - before_client
    found["server_cpu"] = server_cpu_seconds(server.pid) - before_server
    # Whatever else ran on the machine meanwhile, in cores: what disturbed this run.
    found["others_cores"] = max(busy - found["client_cpu"] - found["server_cpu"], 0.0) / found["seconds"]
    after = triton_stats(client)
    for key, value in after.items():
        found[f"triton_{key}"] = value - before_stats[key]


def tutorial_script(folder: Path, url: str) -> None:
    """The tutorial's client as a script of its own (``--tutorial-loop``): one JSON top-5 list per line."""
    import tritonclient.http as http

    client = http.InferenceServerClient(url, network_timeout=600)
    for path in sorted(folder.glob("*.jpg")):
        batch = preprocess(path)[np.newaxis]
        infer_input = http.InferInput("input", list(batch.shape), "FP32")
        infer_input.set_data_from_numpy(batch, binary_data=True)
        output = http.InferRequestedOutput("output", binary_data=True, class_count=TOP)
        result = client.infer(MODEL, [infer_input], outputs=[output])
        values = result.as_numpy("output").reshape(-1)
        print(json.dumps([parse_classification(v).index for v in values]))
    client.close()


def tutorial_loop(server: TritonServer, client: Any, folder: Path, quiet_wait: float) -> Run:
    """One image per request, preprocessed by the exact reference path, nothing overlapped.

    Run as its own process, as a tutorial reader runs it and as (b) and (c) are,
    so that all three pay for starting Python.
    """
    argv = [sys.executable, __file__, "--tutorial-loop", str(folder), server.http_url]
    with measured(server, client, quiet_wait) as found:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the tutorial's loop exited {done.returncode}:\n{done.stderr}")
    return _run("a. tutorial's loop", found, [json.loads(line) for line in done.stdout.splitlines()])


def classify_dir(
    server: TritonServer, client: Any, folder: Path, extra: Sequence[str], name: str, quiet_wait: float
) -> Run:
    argv = [sys.executable, "-m", "tritonresnet", "classify", str(folder)]
    argv += ["--url", server.http_url, "--model", MODEL, "--top", str(TOP), "--json", *extra]
    with measured(server, client, quiet_wait) as found:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    records = [json.loads(line) for line in done.stdout.splitlines()]
    top5 = [[p["index"] for p in record["predictions"]] for record in records]
    run = _run(name, found, top5)
    run.failed = sum(1 for record in records if record.get("error"))
    return run


def _run(name: str, found: dict[str, float], top5: list[list[int]]) -> Run:
    triton = {key[len("triton_") :]: value for key, value in found.items() if key.startswith("triton_")}
    return Run(
        name, found["seconds"], top5, found["client_cpu"], found["server_cpu"], triton, found["others_cores"]
    )


def warm_up(client: Any, max_batch: int) -> None:
    """Triton's and onnxruntime's first requests at each batch size pay for allocation."""
    import tritonclient.http as http

    for size in (1, max_batch):
        batch = np.zeros((size, 3, 224, 224), dtype=np.float32)
        infer_input = http.InferInput("input", list(batch.shape), "FP32")
        infer_input.set_data_from_numpy(batch)
        client.infer(MODEL, [infer_input])


def preprocess_cost(paths: Sequence[Path]) -> dict[str, float]:
    """Milliseconds per image of each path on one core, and how far the fast path's tensors are."""
    exact_ms, fast_ms, mean_diff, max_diff = [], [], [], []
    for path in paths:
        started = time.perf_counter()
        exact = preprocess(path)
        exact_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        fast = preprocess(path, fast_decode=True)
        fast_ms.append((time.perf_counter() - started) * 1000)
        difference = np.abs(exact - fast)
        mean_diff.append(float(difference.mean()))
        max_diff.append(float(difference.max()))
    return {
        "exact_ms": statistics.median(exact_ms),
        "fast_ms": statistics.median(fast_ms),
        "mean_abs_diff": statistics.fmean(mean_diff),
        "max_abs_diff": max(max_diff),
    }


# -- the tables -----------------------------------------------------------------------


def agreement(run: Run, reference: Run) -> tuple[float, float]:
    """Share of images with the same top-5 set, and with the same top-1, as the reference."""
    pairs = list(zip(run.top5, reference.top5, strict=True))
    same5 = sum(1 for got, want in pairs if set(got) == set(want))
    same1 = sum(1 for got, want in pairs if got[:1] == want[:1])
    return same5 / len(pairs), same1 / len(pairs)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    return "\n".join(lines)


def report(runs: Sequence[Run], count: int, cores: int, cost: dict[str, float]) -> str:
    reference = runs[0]
    rate = [count / run.seconds for run in runs]
    main_rows = []
    for run, images_per_second in zip(runs, rate, strict=True):
        same5, same1 = agreement(run, reference)
        main_rows.append(
            [
                run.name,
                f"{images_per_second:.1f}",
                f"{images_per_second / rate[0]:.2f}x",
                f"{same5:.1%} ({same1:.1%} top-1)",
            ]
        )
    time_rows = []
    for run in runs:
        client_ms = run.client_cpu / count * 1000
        server_ms = run.server_cpu / count * 1000
        requests = run.triton["requests"]
        time_rows.append(
            [
                run.name,
                f"{run.seconds:.1f}",
                f"{client_ms:.0f}",
                f"{server_ms:.0f}",
                f"{run.triton['infer_s'] / count * 1000:.0f}",
                f"{run.triton['queue_s'] / max(requests, 1) * 1000:.0f}",
                f"{requests:.0f} / {run.triton['executions']:.0f}",
                f"{cores / ((run.client_cpu + run.server_cpu) / count):.1f}",
                f"{run.others_cores:.2f}",
            ]
        )
    return "\n\n".join(
        [
            table(["run", "images/s", "speed-up vs (a)", "top-5 agreement vs (a)"], main_rows),
            table(
                [
                    "run",
                    "wall s",
                    "client CPU ms/img",
                    "server CPU ms/img",
                    "Triton infer ms/img",
                    "queue ms/req",
                    "requests / executions",
                    f"CPU bound img/s ({cores} cores)",
                    "others' CPU, cores",
                ],
                time_rows,
            ),
            table(
                ["preprocessing on one core", "ms/image (median)"],
                [
                    ["exact (a, b)", f"{cost['exact_ms']:.1f}"],
                    ["--fast-decode (c)", f"{cost['fast_ms']:.1f}"],
                ],
            ),
            f"--fast-decode tensors against the exact ones: mean |diff| {cost['mean_abs_diff']:.4f}, "
            f"max |diff| {cost['max_abs_diff']:.3f} (normalised units; one uint8 step is about 0.017)",
        ]
    )


def _time_limit(seconds: int) -> None:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"the benchmark ran longer than --time-limit {seconds} s")

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)


def main() -> None:
    if sys.argv[1:2] == ["--tutorial-loop"]:  # the child process of run (a)
        tutorial_script(Path(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=200, help=f"JPEGs to make and classify (at most {MAX_IMAGES})"
    )
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument(
        "--model",
        choices=("resnet50", "pooled"),
        default="resnet50",
        help="the ONNX served: the test ground's ResNet-50, or a near-free model that leaves the cores "
        "to the client (what a GPU server does)",
    )
    parser.add_argument("--max-batch", type=int, default=8, help="the model's max_batch_size")
    parser.add_argument("--instances", type=int, default=1, help="model instances in Triton")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads per instance")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of (a, b, c); each variant's best counts"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each run, wait up to this many seconds for other processes to leave the cores idle",
    )
    parser.add_argument("--time-limit", type=int, default=1800, help="seconds before the run gives up")
    args = parser.parse_args()
    if not 1 <= args.images <= MAX_IMAGES:
        parser.error(f"--images must be 1..{MAX_IMAGES}")
    if not 1 <= args.rounds <= 5:
        parser.error("--rounds must be 1..5")
    _time_limit(args.time_limit)
    cores = len(os.sched_getaffinity(0))

    import tritonclient.http as http

    with tempfile.TemporaryDirectory(prefix="classify-throughput-") as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        started = time.perf_counter()
        paths = make_images(folder, args.images, args.width, args.height)
        size = statistics.fmean(p.stat().st_size for p in paths) / 1024
        print(
            f"made {len(paths)} JPEGs of {args.width}x{args.height} ({size:.0f} KiB on average) "
            f"in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        cost = preprocess_cost(paths[:20])
        repository = model_repository(Path(scratch), args.model, args.max_batch, args.instances, args.threads)
        with start_tritonserver(repository) as server:
            client = http.InferenceServerClient(server.http_url, network_timeout=600)
            try:
                warm_up(client, args.max_batch)
                rounds: list[list[Run]] = []
                for round_index in range(args.rounds):
                    # Interleaved (a b c a b c ...): a load from outside hits every variant alike.
                    wait = args.quiet_wait
                    done = [
                        tutorial_loop(server, client, folder, wait),
                        classify_dir(server, client, folder, [], "b. classify DIR", wait),
                        classify_dir(
                            server, client, folder, ["--fast-decode"], "c. classify DIR --fast-decode", wait
                        ),
                    ]
                    rounds.append(done)
                    times = ", ".join(
                        f"{run.name} {run.seconds:.1f} s ({run.others_cores:.2f})" for run in done
                    )
                    print(f"round {round_index + 1}: {times}", file=sys.stderr)
            finally:
                client.close()
    # Each variant's fastest round: the one least disturbed by anything else on the machine.
    runs = [min(variant, key=lambda run: run.seconds) for variant in zip(*rounds, strict=True)]
    failed = sum(run.failed for run in runs)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"{args.images} JPEGs {args.width}x{args.height}, "
        f"{'ResNet-50' if args.model == 'resnet50' else 'pooled (near-free)'} ONNX (onnxruntime stand-in), "
        f"max_batch_size {args.max_batch}, {args.instances} instance(s) x {args.threads} thread(s), "
        f"HTTP, {cores} cores, best of {args.rounds} rounds, load average at the end {load}"
        f"{f', {failed} images failed' if failed else ''}\n"
    )
    print(report(runs, args.images, cores, cost))
    spread = "; ".join(
        f"{variant[0].name.split('.')[0]} " + " / ".join(f"{run.seconds:.1f}" for run in variant)
        for variant in zip(*rounds, strict=True)
    )
    print(f"\nwall seconds per round: {spread}")
    others = "; ".join(
        f"{variant[0].name.split('.')[0]} " + " / ".join(f"{run.others_cores:.2f}" for run in variant)
        for variant in zip(*rounds, strict=True)
    )
    print(f"other processes' CPU during each round, in cores: {others}")


if __name__ == "__main__":
    main()
