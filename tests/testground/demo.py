"""The local demo: from nothing to a classified image through the real operator.

    make demo                 # set up, run, print the top 5, tear down
    make demo DEMO_ARGS=--keep  # leave the cluster up and print how to reach it

Runs on a machine with no cluster and no GPU. What is real and what is
emulated is printed up front; see tests/README.md for the details.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testground.binaries import ensure_binaries
from testground.controlplane import start_control_plane
from testground.models import ensure_models
from testground.nodeagent import start_node_agent
from testground.operator_run import OperatorProcess, apply_sample, install_crd, wait_for_trn
from testground.s3 import start_s3
from testground.waiting import WaitTimeout

REPO = Path(__file__).resolve().parents[2]
SAMPLE_IMAGE = REPO / "operator" / "tritonresnet" / "client" / "data" / "sample.jpg"

BANNER = """\
tritonresnet local demo
  real:     kube-apiserver, etcd, controller-manager, scheduler (built from Kubernetes' Go modules),
            the tritonresnet operator, the builder, tritonserver (from nvidia-pytriton), S3 (moto server)
  emulated: the kubelets of four GPU nodes (a node agent runs pods as local processes),
            Triton's onnxruntime backend (a python-backend stand-in), the model's weights (random)
  not here: TensorRT and GPUs, so the demo serves the model in `format: onnx`
"""


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def wait_ready(operator: OperatorProcess, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    """Print each phase change until Ready; exit with the status and operator log on timeout."""
    last = ""

    def ready(trn: dict[str, Any]) -> bool:
        nonlocal last
        status = trn.get("status") or {}
        line = f"{status.get('phase', 'Pending')}: {status.get('message') or 'waiting for the operator'}"
        if line != last:
            say(line)
            last = line
        return bool(status.get("phase") == "Ready")

    try:
        return wait_for_trn(operator.cp, namespace, name, ready, "Ready", timeout, operator)
    except WaitTimeout as error:
        raise SystemExit(str(error)) from None  # a message for the user, not a traceback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", type=Path, default=REPO / ".demo", help="state and logs (default: .demo/)"
    )
    parser.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    parser.add_argument("--model", default="resnet50", choices=("resnet50", "resnet18"))
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    print(BANNER, flush=True)
    started = time.monotonic()
    say("control-plane binaries (built once, then cached)")
    ensure_binaries(log=lambda m: print("    " + m, flush=True))
    say(f"ResNet ONNX ({args.model}, random weights, made with CPU torch once, then cached)")
    onnx = ensure_models().path(args.model)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    namespace, name = "vision", "resnet50"
    with contextlib.ExitStack() as stack:
        say("starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler")
        cp = stack.enter_context(start_control_plane(workdir / "control-plane"))
        say("starting the node agent (emulated GPU nodes) and S3")
        stack.enter_context(start_node_agent(cp, workdir / "nodes"))
        s3 = stack.enter_context(start_s3(workdir / "s3"))
        uri = s3.upload(onnx, f"{args.model}/model.onnx")
        say(f"uploaded {onnx.name} to {uri}")
        install_crd(cp)
        operator = OperatorProcess(cp, workdir)
        operator.start()
        stack.callback(operator.kill, signal.SIGTERM)
        say(f"operator running (log: {operator.log_path})")
        cp.create_namespace(namespace)
        apply_sample(cp, namespace, s3, uri, name=name)
        say(f"applied TritonResNet {namespace}/{name} (format: onnx); waiting for Ready")
        trn = wait_ready(operator, namespace, name, args.timeout)
        endpoint = trn["status"]["endpoints"][0]
        say(f"Ready in {time.monotonic() - started:.0f} s; classifying {SAMPLE_IMAGE.name} at {endpoint}")
        command = [
            sys.executable,
            "-m",
            "tritonresnet",
            "classify",
            str(SAMPLE_IMAGE),
            "--url",
            endpoint,
            "--model",
            "resnet50",
            "--top",
            "5",
        ]
        print("$ tritonresnet classify " + " ".join(command[4:]), flush=True)
        subprocess.run(command, check=True)
        print("(random weights: the labels are real ImageNet names, the guesses are not meaningful)")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tritonresnet",
                "status",
                name,
                "-n",
                namespace,
                "--kubeconfig",
                str(cp.kubeconfig),
            ],
            check=False,
        )
        if args.keep:
            say(
                f"left running. In another shell: export KUBECONFIG={cp.kubeconfig}; "
                f"PATH={cp.bin_dir}:$PATH; kubectl get trn -A. Ctrl-C tears it all down."
            )
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        say("tearing down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
