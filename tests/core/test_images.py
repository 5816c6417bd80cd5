"""Image decoding and modes (`bsr_hub.core.images`): one table of modes, every consumer checked against it, colours
included, and `open_image`'s policy for paths, bytes, `datasets` rows and broken files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bsr_hub.evaluation.bicubic import BicubicModel
from bsr_hub.data.sources import decode_image, to_rgb_array
from bsr_hub.core.images import MODES, ImageReadError, open_image, straight_mode, to_uint8

FLAT = (250, 200, 20)
GREY_16 = 1000  # a 16-bit value that 8-bit clipping (255) or scaling (/257 -> 4) would change


def flat_image(mode: str, size: tuple[int, int] = (12, 10)) -> Image.Image:
    """A one-colour image in `mode`: what a correct conversion must keep exactly."""
    info = MODES[mode]
    if not info.eight_bit:
        return Image.new(mode, size, 0.25 if info.floating else GREY_16)
    if mode == "1":
        return Image.new(mode, size, 1)  # converting a colour would dither it
    rgb = Image.new("RGB", size, FLAT)
    if info.palette:
        img = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        return img.convert("PA") if mode == "PA" else img
    return rgb.convert(mode)


def shown_colour(img: Image.Image) -> np.ndarray:
    """What a viewer shows for the image's (flat) pixels, by Pillow's own conversion."""
    return np.asarray(straight_mode(img).convert("RGB"))[0, 0].astype(int)


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_gets_one_answer_from_every_consumer(mode):
    img = flat_image(mode)
    info = MODES[mode]
    assert open_image(img) is img and straight_mode(img).mode in ("L", "LA", "RGB", "RGBA", mode)

    rgb, reason = to_rgb_array(img)  # training data: 8-bit RGB, or skipped with a reason
    uint8 = None
    if info.eight_bit:
        uint8 = to_uint8(img)  # evaluation's HR and `bsr-hub degrade`: grey stays grey
        assert reason == "" and rgb.shape == (10, 12, 3) and rgb.dtype == np.uint8
        assert (rgb == shown_colour(img)).all()
        assert uint8.shape == ((10, 12) if info.grey else (10, 12, 3))
        assert (uint8 == (shown_colour(img)[0] if info.grey else shown_colour(img))).all()
    else:
        assert rgb is None and "not 8-bit" in reason
        with pytest.raises(ImageReadError, match="not an 8-bit image") as refused:
            to_uint8(img)
        assert refused.value.reason == "mode"

    # upscale: a constant image stays that constant through a linear bicubic "network", in the caller's mode
    model = BicubicModel(2, uint8=False)
    if info.floating:
        with pytest.raises(ValueError, match=f"unsupported PIL image mode '{mode}'"):
            model.upscale(img)
        return
    out = model.upscale(img, tile=0)
    assert out.size == (24, 20)
    if info.eight_bit:
        assert out.mode == straight_mode(img).mode
        assert np.abs(np.asarray(out.convert("RGB")).astype(int) - shown_colour(img)).max() <= 1
    else:
        assert out.mode == ("I" if mode == "I" else "I;16")
        assert np.abs(np.asarray(out).astype(int) - GREY_16).max() <= 1


def test_an_unknown_mode_is_an_error_naming_it():
    img = Image.new("RGB", (4, 4))
    img._mode = "XYZ" if hasattr(img, "_mode") else None  # a mode no table lists (Pillow stores it privately)
    if img.mode != "XYZ":
        pytest.skip("this Pillow does not let a test set a mode")
    with pytest.raises(ImageReadError, match="unsupported image mode 'XYZ'"):
        straight_mode(img)


def _png(size=(6, 5)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, FLAT).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["path", "str", "bytes", "row_bytes", "row_path"])
def test_open_image_reads_every_source_kind(tmp_path, kind):
    (tmp_path / "a.png").write_bytes(_png())
    source = {
        "path": tmp_path / "a.png", "str": str(tmp_path / "a.png"), "bytes": _png(),
        "row_bytes": {"bytes": _png(), "path": "ignored.png"}, "row_path": {"bytes": None, "path": str(tmp_path / "a.png")},
    }[kind]
    img = open_image(source)
    assert img.size == (6, 5) and np.asarray(img)[0, 0].tolist() == list(FLAT)


@pytest.mark.parametrize(
    "make, reason, message",
    [
        (lambda d: d / "missing.png", "missing", "no such file"),
        (lambda d: (d / "t.txt").write_text("not an image") and d / "t.txt", "not_an_image", "not an image file"),
        (lambda d: (d / "cut.png").write_bytes(_png((64, 64))[:80]) and d / "cut.png", "corrupt", None),
        (lambda d: {"bytes": None, "path": None}, "missing", "without bytes or path"),
        (lambda d: 3.5, "not_an_image", "from a float"),
    ],
)
def test_open_image_says_why_it_cannot(tmp_path, make, reason, message):
    with pytest.raises(ImageReadError, match=message) as err:
        open_image(make(tmp_path))
    assert err.value.reason == reason
    assert isinstance(err.value, ValueError)  # one unreadable training row is skipped, never fatal


def test_open_image_refuses_too_many_pixels_from_the_header(tmp_path):
    (tmp_path / "big.png").write_bytes(_png((40, 30)))
    with pytest.raises(ImageReadError, match="40x30") as err:
        open_image(tmp_path / "big.png", max_pixels=1000)
    assert (err.value.reason, err.value.size) == ("too_large", (40, 30))
    assert open_image(tmp_path / "big.png", max_pixels=1200).size == (40, 30)


def test_training_rows_decode_through_the_same_policy():
    assert decode_image({"bytes": _png(), "path": None}).size == (6, 5)
    with pytest.raises(ValueError, match="unreadable image: not an image file"):
        decode_image({"bytes": b"junk", "path": None})
