"""ResNet ONNX models for tests, made locally with CPU torch and cached.

No package ships pretrained ImageNet weights and the test ground cannot
download any, so the models are ResNets written here in plain torch (no
torchvision: its wheels pull a CUDA torch) with random weights from a fixed
seed. They classify nothing meaningful, but they have the real graph, the real
size and the real input/output contract of the ResNets users serve, which is
what the operator, the builder and Triton care about.

Variants (``OnnxModels.names``):

==================  ========  ===============  ===========================
name                layout    input / output   batch dimension
==================  ========  ===============  ===========================
``resnet18``        ResNet-18 input / output   dynamic
``resnet50``        ResNet-50 input / output   dynamic
``renamed``         ResNet-18 data / logits    dynamic
``fixed_batch``     ResNet-18 input / output   fixed to 1
``external_data``   ResNet-18 input / output   dynamic, weights in
                                               ``model.onnx.data`` next to
                                               ``model.onnx`` (a folder)
==================  ========  ===============  ===========================

Every input is ``[N, 3, 224, 224]`` float32 and every output ``[N, 1000]``
float32. Copy, never hard-link, the ``external_data`` files: onnx refuses an
external data file with several links ("potential hardlink attack"). The files
are exported with the TorchScript exporter
(``dynamo=False``) at opset 17: the dynamo exporter stays at opset 18.

``ensure_models()`` builds them once per machine under
``(XDG_CACHE_HOME or ~/.cache)/tritonresnet/models/<key>``, keyed by the torch
and onnx versions and ``MODELS_VERSION``; the build runs under a file lock and
the result appears atomically, so parallel test sessions share one build.

    python -m testground.models    # build or reuse, print the folder
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from testground.binaries import user_cache_dir

if TYPE_CHECKING:
    import torch

# Bump when the graphs or weights change, so caches made by older code are not reused.
MODELS_VERSION = 1
SEED = 20240917
OPSET = 17
IMAGE_SHAPE = (3, 224, 224)
NUM_CLASSES = 1000

Layout = Literal["resnet18", "resnet50"]


@dataclass(frozen=True)
class ModelSpec:
    """What a test needs to know about one variant without opening it."""

    name: str
    layout: Layout
    input_name: str = "input"
    output_name: str = "output"
    dynamic_batch: bool = True
    external_data: bool = False

    @property
    def relative_path(self) -> str:
        """Where the variant lives in the cache folder (a folder for external data)."""
        return self.name if self.external_data else f"{self.name}.onnx"


SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("resnet18", "resnet18"),
        ModelSpec("resnet50", "resnet50"),
        ModelSpec("renamed", "resnet18", input_name="data", output_name="logits"),
        ModelSpec("fixed_batch", "resnet18", dynamic_batch=False),
        ModelSpec("external_data", "resnet18", external_data=True),
    )
}

EXTERNAL_MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class OnnxModels:
    """The cached model folder."""

    root: Path

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(SPECS)

    def spec(self, name: str) -> ModelSpec:
        return SPECS[name]

    def path(self, name: str) -> Path:
        """The ``.onnx`` file, or for ``external_data`` the folder holding model and weights."""
        return self.root / SPECS[name].relative_path

    def onnx_file(self, name: str) -> Path:
        """The ``.onnx`` file itself, also for ``external_data`` (inside its folder)."""
        path = self.path(name)
        return path / EXTERNAL_MODEL_FILE if SPECS[name].external_data else path

    def tampered_external_data(self, folder: Path) -> Path:
        """A copy of ``external_data`` in ``folder`` whose weights file differs from the
        original in one byte (still a loadable model): what a changed object in a bucket is."""
        shutil.copytree(self.path("external_data"), folder)  # copies: onnx refuses hard links
        data = folder / EXTERNAL_DATA_FILE
        weights = bytearray(data.read_bytes())
        weights[len(weights) // 2] ^= 0xFF
        data.write_bytes(bytes(weights))
        return folder

    def manifest(self) -> dict[str, object]:
        """Versions, file sizes and build times recorded when the models were made."""
        loaded: dict[str, object] = json.loads((self.root / _MANIFEST).read_text())
        return loaded


def cache_root() -> Path:
    return user_cache_dir() / "models"


def cache_key() -> str:
    # importlib.metadata, not `import torch`: a cache hit must not pay torch's import time.
    torch_version = importlib.metadata.version("torch")
    onnx_version = importlib.metadata.version("onnx")
    return f"torch-{torch_version}_onnx-{onnx_version}_v{MODELS_VERSION}"


def ensure_models() -> OnnxModels:
    """Return the cached models, building them first if this machine has none yet."""
    root = cache_root()
    target = root / cache_key()
    if (target / _MANIFEST).is_file():
        return OnnxModels(target)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{target.name}.lock"):
        if not (target / _MANIFEST).is_file():
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
            try:
                _build_all(staging)
                staging.chmod(0o755)  # mkdtemp makes it private; the cache is not a secret
                os.rename(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return OnnxModels(target)


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- building -------------------------------------------------------------------------


def _build_all(folder: Path) -> None:
    files: dict[str, dict[str, object]] = {}
    nets: dict[Layout, torch.nn.Module] = {}
    for spec in SPECS.values():
        started = time.monotonic()
        if spec.layout not in nets:
            nets[spec.layout] = build_resnet(spec.layout)
        _export(nets[spec.layout], spec, folder / spec.relative_path)
        files[spec.name] = {
            "path": spec.relative_path,
            "bytes": _size(folder / spec.relative_path),
            "seconds": round(time.monotonic() - started, 2),
        }
        print(f"testground.models: {spec.name} built in {files[spec.name]['seconds']} s", file=sys.stderr)
    manifest = {
        "models_version": MODELS_VERSION,
        "torch": importlib.metadata.version("torch"),
        "onnx": importlib.metadata.version("onnx"),
        "seed": SEED,
        "opset": OPSET,
        "files": files,
    }
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir())
    return path.stat().st_size


def build_resnet(layout: Layout) -> torch.nn.Module:
    """A ResNet in eval mode with seeded random weights and batch-norm statistics."""
    import torch

    torch.manual_seed(SEED)
    net = _resnet_class()(layout)
    _calibrate_batch_norm(net)
    return net.eval()


def _calibrate_batch_norm(net: torch.nn.Module) -> None:
    # With untrained statistics (mean 0, var 1) activations grow block after block in
    # eval mode, and a ResNet-50 can end in huge, tied logits. One train-mode pass over
    # seeded noise gives every BatchNorm statistics that keep outputs in a sane range.
    import torch

    generator = torch.Generator().manual_seed(SEED)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: the one batch becomes the statistics
    net.train()
    with torch.no_grad():
        net(torch.randn(4, *IMAGE_SHAPE, generator=generator))


def _export(net: torch.nn.Module, spec: ModelSpec, destination: Path) -> None:
    import torch

    dynamic_axes = (
        {spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}} if spec.dynamic_batch else None
    )
    example = torch.zeros(1, *IMAGE_SHAPE)
    if not spec.external_data:
        _export_file(net, example, spec, dynamic_axes, destination)
        return
    # torch writes the weights inline for a model this small; re-save with onnx to move
    # them into one external data file, the layout large models arrive in.
    import onnx

    destination.mkdir(parents=True)
    inline = destination / "inline.onnx"
    _export_file(net, example, spec, dynamic_axes, inline)
    model = onnx.load(str(inline))
    inline.unlink()
    onnx.save_model(
        model,
        str(destination / EXTERNAL_MODEL_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=EXTERNAL_DATA_FILE,
        size_threshold=1024,
    )


def _export_file(
    net: torch.nn.Module,
    example: torch.Tensor,
    spec: ModelSpec,
    dynamic_axes: dict[str, dict[int, str]] | None,
    destination: Path,
) -> None:
    import warnings

    import torch

    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which cannot do opset 17.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (example,),
            str(destination),
            dynamo=False,
            opset_version=OPSET,
            input_names=[spec.input_name],
            output_names=[spec.output_name],
            dynamic_axes=dynamic_axes,
        )


# -- the network ----------------------------------------------------------------------
# Defined inside a function so that importing this module (every test session does, for
# the fixture) does not import torch; only a cold build pays for it.


def _resnet_class() -> type[torch.nn.Module]:
    import torch
    from torch import nn

    def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)

    def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
            super().__init__()
            self.conv1 = conv3x3(inplanes, planes, stride)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = conv3x3(planes, planes)
            self.bn2 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
            super().__init__()
            self.conv1 = conv1x1(inplanes, planes)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = conv3x3(planes, planes, stride)  # stride on the 3x3, as torchvision's v1.5
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = conv1x1(planes, planes * self.expansion)
            self.bn3 = nn.BatchNorm2d(planes * self.expansion)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    layouts: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
        "resnet18": (BasicBlock, (2, 2, 2, 2)),
        "resnet50": (Bottleneck, (3, 4, 6, 3)),
    }

    class ResNet(nn.Module):
        def __init__(self, layout: str) -> None:
            super().__init__()
            block, depths = layouts[layout]
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            self.layer1 = self._stage(block, 64, depths[0], 1)
            self.layer2 = self._stage(block, 128, depths[1], 2)
            self.layer3 = self._stage(block, 256, depths[2], 2)
            self.layer4 = self._stage(block, 512, depths[3], 2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * block.expansion, NUM_CLASSES)
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

        def _stage(
            self, block: type[BasicBlock] | type[Bottleneck], planes: int, depth: int, stride: int
        ) -> nn.Sequential:
            downsample: nn.Module | None = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    conv1x1(self.inplanes, planes * block.expansion, stride),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            blocks: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * block.expansion
            blocks += [block(self.inplanes, planes, 1, None) for _ in range(1, depth)]
            return nn.Sequential(*blocks)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet


def main() -> None:
    started = time.monotonic()
    models = ensure_models()
    print(f"{models.root}  ({time.monotonic() - started:.2f} s)")


if __name__ == "__main__":
    main()
