"""tritonresnet.client.preprocess against the stored torchvision-pipeline reference.

The reference (tests/fixtures/preprocess_reference.npz) was computed by
tests/fixtures/make_preprocess_reference.py, which re-implements torchvision's
Resize/CenterCrop/ToTensor/Normalize with torch ops (torchvision itself is not
installable here); see that script's docstring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw
from tritonresnet.client import preprocess as pp

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "preprocess_reference.npz"
CASES = ("landscape_rgb", "portrait_gray", "square_rgba")


def reference(name: str) -> tuple[Image.Image, npt.NDArray[np.float32]]:
    with np.load(FIXTURE) as data:
        image = Image.fromarray(data[f"{name}/pixels"], str(data[f"{name}/mode"]))
        return image, data[f"{name}/expected"]


@pytest.mark.parametrize("name", CASES)
def test_preprocess_image_equals_the_torchvision_reference_bit_for_bit(name: str) -> None:
    image, expected = reference(name)
    actual = pp.preprocess_image(image)
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape == (3, 224, 224)
    np.testing.assert_array_equal(actual, expected)


def test_preprocess_image_hwc_is_the_chw_result_transposed() -> None:
    image, expected = reference("landscape_rgb")
    actual = pp.preprocess_image(image, layout="HWC")
    assert actual.shape == (224, 224, 3)
    np.testing.assert_array_equal(actual.transpose(2, 0, 1), expected)


@pytest.mark.parametrize("name", CASES)
def test_preprocess_of_a_lossless_file_equals_the_reference_bit_for_bit(name: str, tmp_path: Path) -> None:
    """The file path (decode, no extra RGB copy) gives what the in-memory path gives."""
    image, expected = reference(name)
    path = tmp_path / f"{name}.png"
    image.save(path)
    np.testing.assert_array_equal(pp.preprocess(path), expected)
    # Draft mode is for JPEGs only: another format takes the exact path either way.
    np.testing.assert_array_equal(pp.preprocess(path, fast_decode=True), expected)


def test_reference_detects_a_crop_one_pixel_off() -> None:
    """The fixture is sharp enough that an off-by-one crop (round half up) would fail the test above."""
    image, expected = reference("landscape_rgb")
    resized = image.resize(pp.resized_size(image.width, image.height, 256), Image.Resampling.BILINEAR)
    left = (resized.width - 224 + 1) // 2  # 81: round half up instead of torchvision's 80
    shifted = pp.preprocess_image(resized.crop((left - 16, 0, left + 240, 256)))
    assert np.abs(shifted - expected).max() > 1e-3


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(327, 217, (385, 256)), (150, 251, (256, 428)), (256, 256, (256, 256)), (640, 480, (341, 256))],
)
def test_resized_size_truncates_the_long_side_like_torchvision(
    width: int, height: int, expected: tuple[int, int]
) -> None:
    assert pp.resized_size(width, height, 256) == expected


def test_center_crop_box_rounds_half_to_even_like_torchvision() -> None:
    assert pp.center_crop_box(385, 256, 224, 224) == (80, 16, 304, 240)
    assert pp.center_crop_box(387, 256, 224, 224) == (82, 16, 306, 240)


def test_shorter_side_for_keeps_the_256_to_224_ratio() -> None:
    assert pp.shorter_side_for(224, 224) == 256
    assert pp.shorter_side_for(299, 299) == 342
    assert pp.shorter_side_for(112, 224) == 256


def test_preprocess_image_fits_non_square_model_inputs() -> None:
    image, _ = reference("portrait_gray")
    assert pp.preprocess_image(image, size=(112, 224)).shape == (3, 112, 224)


def test_preprocess_reads_the_bundled_sample_jpeg() -> None:
    path = Path(pp.__file__).parent / "data" / "sample.jpg"
    tensor = pp.preprocess(path)
    assert tensor.shape == (3, 224, 224)
    # Normalised ImageNet statistics put every value inside [-mean/std, (1-mean)/std].
    assert tensor.min() >= -2.2 and tensor.max() <= 2.7


def test_load_rgb_names_the_file_when_it_is_not_an_image(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not a picture")
    with pytest.raises(pp.ImageError, match=r"notes\.jpg"):
        pp.load_rgb(bogus)


def test_load_rgb_converts_palette_images(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    Image.new("P", (40, 30), color=3).save(path)
    assert pp.load_rgb(path).mode == "RGB"


# -- fast decode (JPEG draft mode) --------------------------------------------------------


def disk_jpeg(path: Path, width: int, height: int) -> Path:
    """A white disk right of centre on black: sharp enough to locate, smooth enough for JPEG."""
    image = Image.new("RGB", (width, height))
    cx, cy, r = width * 0.6, height * 0.5, height * 0.15
    ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 255, 255))
    image.save(path, "JPEG", quality=95)
    return path


def test_fast_decode_scales_a_jpeg_in_the_decoder_but_never_below_the_resize(tmp_path: Path) -> None:
    path = disk_jpeg(tmp_path / "wide.jpg", 1920, 1080)
    image, original = pp.decode_rgb(path, draft_for=(224, 224))
    assert original == (1920, 1080)
    assert image.size == (480, 270)  # 1/4: the largest DCT scale still covering 455 x 256
    assert pp.decode_rgb(path, draft_for=None)[0].size == (1920, 1080)


def test_fast_decode_resizes_to_the_target_of_the_files_own_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1151 x 768 decodes at 1/2 as 576 x 384, whose own resize target would be 384 x 256 and
    shift the crop; the exact path resizes the file to 383 x 256, and so must the fast one."""
    path = disk_jpeg(tmp_path / "odd.jpg", 1151, 768)
    assert pp.decode_rgb(path, draft_for=(224, 224))[0].size == (576, 384)
    assert pp.resized_size(576, 384, 256) == (384, 256) != pp.resized_size(1151, 768, 256)
    targets: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def recording_resize(self: Image.Image, size: tuple[int, int], *args: Any, **kwargs: Any) -> Image.Image:
        targets.append(tuple(size))
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    exact, fast = pp.preprocess(path), pp.preprocess(path, fast_decode=True)
    assert targets == [(383, 256), (383, 256)]
    assert fast.shape == exact.shape == (3, 224, 224)


def test_fast_decode_differs_from_the_exact_path_by_little(tmp_path: Path) -> None:
    """Not bit-exact (that is the trade-off); the benchmark measures what it does to the top 5."""
    path = disk_jpeg(tmp_path / "wide.jpg", 1920, 1080)
    difference = np.abs(pp.preprocess(path) - pp.preprocess(path, fast_decode=True))
    assert 0 < difference.mean() < 0.05
