"""Fetch throughput: the builder's parallel ranged download vs boto3's defaults, on one moto server.

boto3's ``download_file`` with a default ``TransferConfig`` is what ``aws s3 cp``
does. Both fetch the same object from the same local moto server (started here,
through the test ground's ``start_s3``) into the same temporary folder; each is
run ``--repeat`` times and the best time counts.

    .venv/bin/python benchmarks/fetch_throughput.py            # 100 MiB
    .venv/bin/python benchmarks/fetch_throughput.py --large    # also 1 GiB
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from boto3.s3.transfer import TransferConfig
from testground.s3 import S3Server, start_s3
from tritonresnet_builder.contract import Source
from tritonresnet_builder.fetch import FetchSettings, S3Location, fetch_s3, s3_client

MiB = 1 << 20


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


def best_of(repeat: int, action: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(server: S3Server, folder: Path, size: int, repeat: int) -> tuple[float, float]:
    """Best seconds of boto3's default download and of ours, for one object of ``size`` bytes."""
    key, digest = make_object(server, folder, size)
    target = folder / "download"
    baseline = server.client(direct=True)
    settings = FetchSettings()
    ours_client = s3_client(
        Source(uri=f"s3://{server.bucket}/{key}", endpoint=server.direct_endpoint), settings
    )

    def boto3_default() -> None:
        baseline.download_file(server.bucket, key, str(target), Config=TransferConfig())

    def ours() -> None:
        fetched = fetch_s3(ours_client, S3Location(server.bucket, key), target, settings)
        assert fetched.sha256 == digest, "digest mismatch"

    try:
        # ours includes hashing the file for the sha256 pin
        return best_of(repeat, boto3_default), best_of(repeat, ours)
    finally:
        target.unlink(missing_ok=True)
        baseline.delete_object(Bucket=server.bucket, Key=key)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--large", action="store_true", help="also fetch a 1 GiB object")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [100 * MiB] + ([1024 * MiB] if args.large else [])

    rows = []
    with tempfile.TemporaryDirectory(prefix="fetch-bench-") as tmp:
        folder = Path(tmp)
        with start_s3(folder / "s3") as server:
            os.environ.update(server.env)
            for size in sizes:
                rows.append((size, *measure(server, folder, size, args.repeat)))

    print(
        f"{'object':>8} | {'boto3 download_file (default)':>30} | {'tritonresnet fetch':>22} | {'ratio':>6}"
    )
    print(f"{'-' * 8}-+-{'-' * 30}-+-{'-' * 22}-+-{'-' * 6}")
    for size, base_s, ours_s in rows:
        base = f"{base_s:6.2f} s {size / MiB / base_s:7.1f} MiB/s"
        mine = f"{ours_s:6.2f} s {size / MiB / ours_s:7.1f} MiB/s"
        print(f"{size // MiB:>4} MiB | {base:>30} | {mine:>22} | {base_s / ours_s:5.2f}x")
    print(
        f"(best of {args.repeat}; part {FetchSettings().part_bytes // MiB} MiB, "
        f"{FetchSettings().concurrency} threads; ours includes the sha256 of the file)"
    )


if __name__ == "__main__":
    main()
