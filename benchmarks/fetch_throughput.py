"""Fetch throughput: the builder's fetch vs boto3's download_file, defaults and tuned, on one moto server.

Every client fetches the same object from the same local moto server (started
here, through the test ground's ``start_s3``) into the same temporary folder,
and every time includes the object's sha256 (the builder needs it for the
pin; for boto3 it is a read of the file after the download). Each is run
``--repeat`` times and the best time counts. Columns:

* ``boto3 default``: ``download_file`` with a default ``TransferConfig``
  (8 MiB parts, 10 threads), what ``aws s3 cp`` does;
* ``boto3 16x8``: ``download_file`` with 16 MiB parts and 8 threads;
* ``tritonresnet fetch``: ``fetch.fetch_s3`` with the builder's defaults (the
  same transfer manager; one part per thread, 16..128 MiB; hashing as it goes);
* ``CRT``: s3transfer's CRT transfer manager, with the builder's part size,
  only where ``awscrt`` imports (the builder image does not install it).

    .venv/bin/python benchmarks/fetch_throughput.py                  # 100 and 512 MiB
    .venv/bin/python benchmarks/fetch_throughput.py --sizes 100,1024
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from boto3.s3.transfer import TransferConfig
from testground.s3 import REGION, S3Server, start_s3
from tritonresnet_builder.contract import Source
from tritonresnet_builder.fetch import FetchSettings, S3Location, fetch_s3, file_sha256, s3_client

MiB = 1 << 20
Action = Callable[[], None]


def make_object(server: S3Server, folder: Path, size: int) -> tuple[str, str]:
    path = folder / f"object-{size}"
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        for _ in range(size // (8 * MiB)):
            block = os.urandom(8 * MiB)
            digest.update(block)
            handle.write(block)
    key = f"bench/{path.name}"
    server.client(direct=True).upload_file(str(path), server.bucket, key, Config=TransferConfig())
    path.unlink()
    return key, digest.hexdigest()


def best_of(repeat: int, action: Action) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def crt_download(server: S3Server, part: int) -> Callable[[str, Path], None] | None:
    """A download through s3transfer's CRT manager, or None without awscrt.

    boto3's own CRT path speaks only TLS to AWS (no endpoint URL), so this
    builds the manager from s3transfer's pieces, pointed at moto over HTTP.
    """
    try:
        import botocore.session
        from s3transfer.crt import (
            BotocoreCRTCredentialsWrapper,
            BotocoreCRTRequestSerializer,
            CRTTransferManager,
            create_s3_crt_client,
        )
    except ImportError:
        return None
    session = botocore.session.Session()
    credentials = BotocoreCRTCredentialsWrapper(session.get_credentials())
    crt_client = create_s3_crt_client(
        REGION, credentials.to_crt_credentials_provider(), use_ssl=False, part_size=part
    )
    serializer = BotocoreCRTRequestSerializer(
        session,
        {"region_name": REGION, "endpoint_url": server.direct_endpoint},
    )
    config = TransferConfig(multipart_chunksize=part, preferred_transfer_client="crt")

    def download(key: str, target: Path) -> None:
        with CRTTransferManager(crt_client, serializer, config=config) as manager:
            manager.download(server.bucket, key, str(target)).result()

    return download


def measure(server: S3Server, folder: Path, size: int, repeat: int) -> dict[str, float]:
    """Best seconds of each client for one object of ``size`` bytes."""
    key, digest = make_object(server, folder, size)
    target = folder / "download"
    baseline: Any = server.client(direct=True)
    settings = FetchSettings()
    ours_client = s3_client(
        Source(uri=f"s3://{server.bucket}/{key}", endpoint=server.direct_endpoint), settings
    )

    def boto3_with(config: TransferConfig) -> Action:
        def run() -> None:
            baseline.download_file(server.bucket, key, str(target), Config=config)
            assert file_sha256(target) == digest, "digest mismatch"

        return run

    def ours() -> None:
        fetched = fetch_s3(ours_client, S3Location(server.bucket, key), target, settings)
        assert fetched.sha256 == digest, "digest mismatch"

    actions: dict[str, Action] = {
        "boto3 default": boto3_with(TransferConfig()),
        "boto3 16x8": boto3_with(
            TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=8)
        ),
        "tritonresnet fetch": ours,
    }
    crt = crt_download(server, settings.part_size(size))
    if crt is not None:

        def with_crt() -> None:
            crt(key, target)
            assert file_sha256(target) == digest, "digest mismatch"

        actions["CRT"] = with_crt
    try:
        return {name: best_of(repeat, action) for name, action in actions.items()}
    finally:
        target.unlink(missing_ok=True)
        baseline.delete_object(Bucket=server.bucket, Key=key)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,512", help="object sizes in MiB, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(mib) * MiB for mib in args.sizes.split(",")]

    rows: list[tuple[int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="fetch-bench-") as tmp:
        folder = Path(tmp)
        with start_s3(folder / "s3") as server:
            os.environ.update(server.env)
            for size in sizes:
                rows.append((size, measure(server, folder, size, args.repeat)))

    names = list(rows[0][1])
    width = 22
    print(f"| {'object':>8} | " + " | ".join(f"{name:>{width}}" for name in names) + " |")
    print(f"|{'-' * 9}:|" + "|".join("-" * (width + 1) + ":" for _ in names) + "|")
    for size, seconds in rows:
        cells = [f"{seconds[n]:6.2f} s {size / MiB / seconds[n]:7.1f} MiB/s" for n in names]
        print(f"| {size // MiB:>4} MiB | " + " | ".join(f"{c:>{width}}" for c in cells) + " |")
    parts = ", ".join(f"{size // MiB} MiB: {FetchSettings().part_size(size) // MiB} MiB" for size, _ in rows)
    print(
        f"(best of {args.repeat}, each including the sha256; tritonresnet fetch: "
        f"{FetchSettings().concurrency} threads, parts {parts})"
    )


if __name__ == "__main__":
    main()
