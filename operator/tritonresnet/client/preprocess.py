"""The tutorial's image preprocessing, in numpy and Pillow only.

The Triton ResNet tutorial prepares an image with torchvision::

    transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])

On a PIL image those steps are Pillow calls plus a little arithmetic, so this
module reproduces them without torch or torchvision (which would pull gigabytes
into a CLI):

* ``Resize(256)``: the shorter side becomes 256, the longer side
  ``int(256 * long / short)`` (truncated, torchvision's rule), then Pillow's
  ``Image.resize`` with ``BILINEAR``; an image already at that size is left alone.
* ``CenterCrop(224)``: offsets ``int(round((size - 224) / 2))`` (Python's
  round-half-to-even, as torchvision), cropped with ``Image.crop``.
* ``ToTensor``: uint8 to float32 divided by 255, HWC to CHW.
* ``Normalize``: ``(x - mean) / std`` per channel in float32.

One deliberate addition: images are converted to RGB first (grayscale, palette
and RGBA files would otherwise give 1, 1 or 4 channels, which the tutorial's
pipeline cannot feed to a 3-channel model). EXIF orientation is not applied,
as in the tutorial.

**Fast decode** (``fast_decode=True``, opt-in, ``classify --fast-decode``): a
JPEG is decoded with Pillow's draft mode (``Image.draft``), which lets libjpeg
scale by 1/2, 1/4 or 1/8 inside the DCT, never below the size the resize needs;
the bilinear resize then starts from that smaller picture. The resize target
and the crop are still computed from the file's own size, so the geometry is
the exact path's. The pixels are not: the DCT's scaling is a box-like filter,
not Pillow's bilinear one, so the tensor differs from torchvision's. On the
benchmark's 1920x1080 JPEGs (``benchmarks/classify_throughput.py``) that is
0.0075 on average after normalisation (under half a uint8 step) and up to 0.7
at sharp edges; the benchmark also measures what it does to the top 5. Files
other than JPEG take the exact path either way.

``tests/fixtures/make_preprocess_reference.py`` documents how the stored
reference that the unit tests compare against was computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

Layout = Literal["CHW", "HWC"]

#: The tutorial's sizes: resize the shorter side to 256, crop 224 x 224.
RESIZE_SHORTER = 256
CROP = 224
#: ImageNet channel statistics (RGB) used by the tutorial's Normalize.
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class ImageError(ValueError):
    """An image file that cannot be read or decoded."""


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(shorter)``: the long side is truncated, not rounded."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def center_crop_box(width: int, height: int, crop_height: int, crop_width: int) -> tuple[int, int, int, int]:
    """Pillow crop box (left, top, right, bottom) of torchvision's ``CenterCrop``.

    ``round`` is Python's banker's rounding on purpose: torchvision uses it, so
    an odd margin of 161 pixels starts the crop at 80, not 81.
    """
    top = round((height - crop_height) / 2.0)
    left = round((width - crop_width) / 2.0)
    return left, top, left + crop_width, top + crop_height


def shorter_side_for(crop_height: int, crop_width: int) -> int:
    """The resize target for a model's input size: 256 for 224, the same 256/224 ratio otherwise.

    Based on the larger crop side so that the crop always fits inside the
    resized image (torchvision would pad with black otherwise).
    """
    crop = max(crop_height, crop_width)
    if crop == CROP:
        return RESIZE_SHORTER
    return round(crop * RESIZE_SHORTER / CROP)


def load_rgb(path: Path) -> Image.Image:
    """Open and fully decode an image file as RGB; raises ImageError with the path in the message."""
    return decode_rgb(path, draft_for=None)[0]


def decode_rgb(path: Path, draft_for: tuple[int, int] | None) -> tuple[Image.Image, tuple[int, int]]:
    """The decoded RGB image and the file's own (width, height).

    ``draft_for`` is the model's (height, width): when given, a JPEG is decoded
    at the smallest DCT scale that still covers the resize to come.
    """
    try:
        with Image.open(path) as image:
            original = image.size
            if draft_for is not None:
                image.draft("RGB", resized_size(*original, shorter_side_for(*draft_for)))  # no-op unless JPEG
            image.load()
            # An RGB file is used as decoded: convert("RGB") would only copy it.
            return (image if image.mode == "RGB" else image.convert("RGB")), original
    except Exception as error:
        # Pillow's decoders raise OSError, ValueError, SyntaxError, EOFError, struct.error
        # and more for damaged files; every one of them means "this file", and one bad
        # file in a folder must be reported, not end the run. Only reading is inside.
        raise ImageError(f"cannot read image {path}: {error}") from error


def preprocess_image(
    image: Image.Image,
    size: tuple[int, int] = (CROP, CROP),
    layout: Layout = "CHW",
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> npt.NDArray[np.float32]:
    """One image as the model's float32 input: resize, center crop ``size`` (height, width), normalise."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return _to_tensor(rgb, rgb.size, size, layout, mean, std)


def _to_tensor(
    rgb: Image.Image,
    original: tuple[int, int],
    size: tuple[int, int],
    layout: Layout,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> npt.NDArray[np.float32]:
    # The resize target comes from ``original`` (the file's size), not from ``rgb``:
    # a draft-decoded JPEG is smaller and its rounded-up sides would shift the target.
    crop_height, crop_width = size
    new_size = resized_size(*original, shorter_side_for(crop_height, crop_width))
    if new_size != rgb.size:
        rgb = rgb.resize(new_size, Image.Resampling.BILINEAR)
    cropped = rgb.crop(center_crop_box(rgb.width, rgb.height, crop_height, crop_width))
    pixels = np.asarray(cropped, dtype=np.uint8)  # HWC
    # Same float32 operations in the same order as ToTensor + Normalize, so the
    # result matches to the last bit rather than only approximately.
    scaled = pixels.astype(np.float32) / np.float32(255)
    normalised = (scaled - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    if layout == "CHW":
        normalised = normalised.transpose(2, 0, 1)
    return np.ascontiguousarray(normalised, dtype=np.float32)


def preprocess(
    path: Path, size: tuple[int, int] = (CROP, CROP), layout: Layout = "CHW", fast_decode: bool = False
) -> npt.NDArray[np.float32]:
    """Read an image file and preprocess it as the tutorial does (``fast_decode``: see the module notes)."""
    rgb, original = decode_rgb(path, draft_for=size if fast_decode else None)
    return _to_tensor(rgb, original, size, layout)
