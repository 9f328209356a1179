"""Run the real operator against the test ground: install the CRD, start and kill the process.

Used by the end-to-end tests and the local demo. The operator runs as its
own process (``python -m tritonresnet operator``), exactly as in its
container, so a test can SIGKILL it and start it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from testground.controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "tritonresnet.io_tritonresnets.yaml"


def install_crd(cp: ControlPlane) -> None:
    cp.kubectl("apply", "--server-side", "-f", str(CRD))
    cp.kubectl("wait", "--for=condition=Established", "crd/tritonresnets.tritonresnet.io", "--timeout=60s")
    # kubectl's discovery cache needs a moment to learn the new kind.
    for _ in range(50):
        if cp.kubectl("get", "trn", "-A", check=False).returncode == 0:
            return
        time.sleep(0.2)


class OperatorProcess:
    """The operator as a child process, with its log in a file."""

    def __init__(
        self,
        cp: ControlPlane,
        workdir: Path,
        kubeconfig: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.cp = cp
        self.log_path = workdir / "operator.log"
        self.kubeconfig = kubeconfig or cp.kubeconfig
        self.env = {
            **cp.env(),
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            "TRITONRESNET_RESYNC_SECONDS": "20",
            "TRITONRESNET_VERIFY_TIMEOUT_SECONDS": "20",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== operator start #{self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tritonresnet", "operator", "--all-namespaces", "--standalone"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
