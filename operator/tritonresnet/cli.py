"""``tritonresnet``: one command for the operator and for the people using it.

Subcommands:

* ``classify IMAGE_OR_DIR... --url HOST:PORT --model NAME``: top-k with ImageNet
  labels from a Triton server (HTTP, or gRPC with ``--grpc``); folders stream.
* ``status NAME [-n NAMESPACE]``: what the operator knows about a TritonResNet.
* ``operator``: run the operator (kopf); what the Deployment's container runs.
* ``build -f TRITONRESNET.yaml --repository DIR``: on a workstation with the
  builder's dependencies, build and publish what that manifest would, into a
  local model repository.
* ``inspect MODEL.onnx``: what the builder sees in an ONNX file.

Heavy imports (kopf, the kubernetes client, tritonclient, the builder) happen
inside each subcommand, so ``tritonresnet classify`` starts without the
operator's dependencies and ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

# Light (no kopf, no kubernetes): every command's parser needs the option table.
from tritonresnet.controller.settings import (
    OPTIONS_BY_FIELD,
    Settings,
    SettingsError,
    add_arguments,
    settings_from,
)

if TYPE_CHECKING:
    from tritonresnet.client.classify import ImageResult

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _fail(message: str, stream: TextIO | None = None) -> int:
    print(f"error: {message}", file=stream or sys.stderr)
    return EXIT_ERROR


# -- classify -----------------------------------------------------------------------


def format_result(result: ImageResult) -> str:
    """``image`` then ``  1. 0.8123  (index 207) golden retriever`` per prediction."""
    lines = [str(result.image)]
    for rank, p in enumerate(result.predictions, start=1):
        lines.append(f"{rank:>3}. {p.score:.4f}  (index {p.index}) {p.label}".rstrip())
    return "\n".join(lines) + "\n"


def result_json(result: ImageResult) -> str:
    """One JSON Lines record: ``image``, ``predictions`` (empty for a failed image) and ``error`` if any."""
    record: dict[str, Any] = {
        "image": str(result.image),
        "predictions": [
            {"rank": rank, "score": p.score, "index": p.index, "label": p.label}
            for rank, p in enumerate(result.predictions, start=1)
        ],
    }
    if result.error:
        record["error"] = result.error
    return json.dumps(record)


class Progress:
    """``  120/200 images  45.3/s  1 failed`` on one terminal line, redrawn at most every 0.2 s.

    Only for a terminal: a log file would fill with carriage returns. Call
    :meth:`clear` before anything else is written to the same terminal.
    """

    INTERVAL = 0.2

    def __init__(self, total: int, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.stream, self.clock = total, stream, clock
        self.started = clock()
        self._drawn_at: float | None = None  # None: the line is not on the screen

    def _line(self, done: int, failed: int) -> str:
        elapsed = self.clock() - self.started
        rate = f"  {done / elapsed:.1f}/s" if elapsed > 0 and done else ""
        errors = f"  {failed} failed" if failed else ""
        return f"{done:>{len(str(self.total))}}/{self.total} images{rate}{errors}"

    def show(self, done: int, failed: int) -> None:
        now = self.clock()
        if self._drawn_at is not None and now - self._drawn_at < self.INTERVAL:
            return
        self.stream.write("\r" + self._line(done, failed) + "\x1b[K")
        self.stream.flush()
        self._drawn_at = now

    def clear(self) -> None:
        if self._drawn_at is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn_at = None

    def finish(self, done: int, failed: int) -> None:
        self.clear()
        elapsed = self.clock() - self.started
        rate = f" ({done / elapsed:.1f} images/s)" if elapsed > 0 else ""
        errors = f", {failed} failed" if failed else ""
        self.stream.write(f"classified {done} of {self.total} images in {elapsed:.1f} s{rate}{errors}\n")
        self.stream.flush()


def _classify(args: argparse.Namespace) -> int:
    from tritonresnet.client.classify import ClassifyError, classify_stream, collect_images

    try:
        images = collect_images(args.images)
    except ClassifyError as error:
        return _fail(str(error))
    progress = Progress(len(images), sys.stderr) if sys.stderr.isatty() else None
    # Results on the same terminal as the progress line must not be drawn over it.
    shared_terminal = progress is not None and sys.stdout.isatty()
    stream = classify_stream(
        images,
        url=args.url,
        model=args.model,
        protocol="grpc" if args.grpc else "http",
        top=args.top,
        batch=args.batch,
        version=args.model_version,
        timeout=args.timeout,
        workers=args.workers,
        in_flight=args.in_flight,
        fast_decode=args.fast_decode,
    )
    done = failed = 0
    try:
        for result in stream:
            done += 1
            if progress is not None and (shared_terminal or result.error):
                progress.clear()
            if result.error:
                failed += 1
                print(f"error: {result.error}", file=sys.stderr)
            if args.json:
                sys.stdout.write(result_json(result) + "\n")
            elif result.ok:
                sys.stdout.write(format_result(result))
            # Flushed per image: a pipe reader (jq, a log shipper) sees results as they come.
            sys.stdout.flush()
            if progress is not None:
                progress.show(done, failed)
    except ClassifyError as error:
        if progress is not None:
            progress.clear()
        return _fail(str(error))
    finally:
        stream.close()  # on an error or Ctrl-C: stop the decoding processes and senders now
    if progress is not None:
        progress.finish(done, failed)
    if failed:
        return _fail(f"{failed} of {len(images)} images could not be read")
    return EXIT_OK


# -- status -------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    import urllib3
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    from tritonresnet.api import names
    from tritonresnet.client.status_text import describe

    try:
        api_client = _api_client(args.kubeconfig)
        namespace = args.namespace or _current_namespace(args.kubeconfig)
    except (ConfigException, OSError) as error:
        return _fail(f"cannot load a Kubernetes configuration: {error}")

    with api_client:
        api = client.CustomObjectsApi(api_client)
        try:
            trn = api.get_namespaced_custom_object(
                names.GROUP, names.VERSION, namespace, names.PLURAL, args.name
            )
        except ApiException as error:
            if error.status == 404:
                return _fail(f"TritonResNet {namespace}/{args.name} not found (or its CRD is not installed)")
            return _fail(f"cannot read TritonResNet {namespace}/{args.name}: {error.status} {error.reason}")
        except (OSError, urllib3.exceptions.HTTPError) as error:  # refused, DNS, TLS: after urllib3's retries
            return _fail(f"cannot reach the Kubernetes API at {api_client.configuration.host}: {error}")
    print(describe(trn), end="")
    return EXIT_OK


def _api_client(kubeconfig: str | None) -> Any:
    """An ApiClient from ``kubeconfig`` (or the default kubeconfig, else in-cluster).

    A client of its own rather than ``load_kube_config``, which would change
    the process-wide default configuration.
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        return config.new_client_from_config(config_file=kubeconfig)
    except ConfigException:
        if kubeconfig:
            raise
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def _current_namespace(kubeconfig: str | None) -> str:
    """The kubeconfig context's namespace, as kubectl uses it; "default" when it has none."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (ConfigException, OSError):
        in_cluster = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        return in_cluster.read_text().strip() if in_cluster.is_file() else "default"
    return str((active or {}).get("context", {}).get("namespace") or "default")


# -- operator -----------------------------------------------------------------------


def _operator(args: argparse.Namespace) -> int:
    # Before kopf is imported: a bad value stops here, naming its variable or flag.
    try:
        settings = settings_from(os.environ, args)
    except SettingsError as error:
        print(f"tritonresnet operator: error: {error}", file=sys.stderr)
        return EXIT_USAGE

    from tritonresnet.controller import handlers

    handlers.run(settings)
    return EXIT_OK


# -- build / inspect (the builder on a workstation) ---------------------------------


def _load_manifest(path: Path) -> dict[str, Any]:
    """The first TritonResNet in a YAML file (``-`` reads stdin)."""
    import yaml

    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    for document in yaml.safe_load_all(text):
        if isinstance(document, dict) and document.get("kind") == "TritonResNet":
            return document
    raise ValueError(f"{path} holds no TritonResNet")


def workstation_plan(
    manifest: dict[str, Any], repository: Path, settings: Settings, result_dir: Path
) -> list[list[str]]:
    """Builder argv for building and publishing ``manifest`` into a local ``repository``.

    The keys are the operator's (names.engine_key / version_key), so a
    repository built here holds the same engine folder names a cluster would.
    A tensorrt build targets the workstation's own GPU, whatever the
    manifest's targets say: a plan only runs on the GPU kind it was built on.
    The release is the one a cluster with these ``settings`` would use.
    """
    from tritonresnet.api import names
    from tritonresnet.api.spec import Target, parse_spec
    from tritonresnet.controller import render

    spec = parse_spec(manifest)
    target = spec.build_targets()[0] if spec.model.format == "onnx" else Target(name="local")
    engine_key = names.engine_key(spec, target, settings.release_for(spec))
    version_key = names.version_key(spec, [engine_key])
    build = dataclasses.replace(
        render.build_args(spec, engine_key),
        repository=str(repository),
        result_file=str(result_dir / "build.json"),
    )
    publish = dataclasses.replace(
        render.publish_args(spec, [engine_key], version_key, ()),
        repository=str(repository),
        result_file=str(result_dir / "publish.json"),
    )
    return [build.to_argv(), publish.to_argv()]


def _build(args: argparse.Namespace) -> int:
    from tritonresnet_builder import cli as builder_cli

    from tritonresnet.api.spec import SpecError

    # The same release rule as the operator's, so the keys match a cluster's.
    try:
        settings = settings_from(os.environ)
        if args.release:
            release = OPTIONS_BY_FIELD["default_release"].read("--release", args.release)
            settings = dataclasses.replace(settings, default_release=release)
    except SettingsError as error:
        return _fail(str(error))
    try:
        manifest = _load_manifest(args.filename)
    except (OSError, ValueError) as error:
        return _fail(str(error))
    args.repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tritonresnet-build-") as results:
        try:
            steps = workstation_plan(manifest, args.repository.resolve(), settings, Path(results))
        except SpecError as error:
            return _fail(f"{args.filename}: {error}")
        for argv in steps:
            code = builder_cli.main(argv)
            if code != EXIT_OK:
                return int(code)
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    from tritonresnet_builder import cli as builder_cli
    from tritonresnet_builder.failures import BuilderError

    try:
        print(builder_cli.inspect_report(args.model), end="")
    except BuilderError as error:
        return _fail(error.message)
    except OSError as error:
        return _fail(f"cannot read {args.model}: {error}")
    return EXIT_OK


# -- argument parsing ---------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tritonresnet", description="A Kubernetes operator serving ONNX ResNets with NVIDIA Triton."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classify = sub.add_parser(
        "classify",
        help="classify images with a model served by Triton",
        description="Classify image files, or every image in folders (recursively, sorted), with a model "
        "served by Triton. Results come in input order as they are answered; an image that cannot be "
        "read is reported and skipped, and the exit code is then 1.",
    )
    classify.add_argument(
        "images", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="image files and folders of images"
    )
    classify.add_argument("--url", required=True, help="Triton's HOST:PORT (HTTP port, or gRPC with --grpc)")
    classify.add_argument("--model", required=True, help="model name in Triton")
    classify.add_argument("--model-version", default="", help="model version (default: Triton's choice)")
    classify.add_argument("--grpc", action="store_true", help="talk gRPC instead of HTTP")
    classify.add_argument("--top", type=_positive, default=5, help="predictions per image (default 5)")
    classify.add_argument("--batch", type=_positive, help="images per request (default: the model's limit)")
    classify.add_argument(
        "--json", action="store_true", help="print JSON Lines: one {image, predictions[, error]} per line"
    )
    classify.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    classify.add_argument(
        "--workers", type=_not_negative, help="decoding processes (default: one per core; 0: none)"
    )
    classify.add_argument(
        "--in-flight", type=_positive, default=4, help="requests on the wire at once (default 4)"
    )
    classify.add_argument(
        "--fast-decode",
        action="store_true",
        help="decode JPEGs at reduced size (Pillow draft mode): faster, pixels differ slightly from "
        "the tutorial's preprocessing",
    )
    classify.set_defaults(handler=_classify)

    status = sub.add_parser("status", help="what the operator knows about a TritonResNet, in words")
    status.add_argument("name")
    status.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
    status.add_argument("--kubeconfig", help="default: KUBECONFIG or ~/.kube/config, else in-cluster")
    status.set_defaults(handler=_status)

    operator = sub.add_parser(
        "operator",
        help="run the operator",
        description="Run the operator. Every option is also a TRITONRESNET_* variable; "
        "a flag wins over its variable, and an empty variable keeps the default.",
    )
    add_arguments(operator)
    operator.set_defaults(handler=_operator)

    build = sub.add_parser("build", help="build and publish a TritonResNet's model into a local repository")
    build.add_argument("-f", "--filename", type=Path, required=True, help="TritonResNet YAML ('-': stdin)")
    build.add_argument("--repository", type=Path, required=True, help="local model repository folder")
    build.add_argument(
        "--release",
        default="",
        metavar="YY.MM",
        help="release when the manifest sets no spec.serving.release, as the operator's "
        "--default-release (default: TRITONRESNET_DEFAULT_RELEASE, else the operator's default)",
    )
    build.set_defaults(handler=_build)

    inspect = sub.add_parser("inspect", help="show what the builder sees in an ONNX model")
    inspect.add_argument("model", type=Path, metavar="MODEL.onnx")
    inspect.set_defaults(handler=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = argument_parser().parse_args(list(argv) if argv is not None else None)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
