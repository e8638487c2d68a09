from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import encode_image, save_image
from mmentail.data.images import (
    header_size,
    image_bytes_problems,
    image_file_problem,
    image_format,
    png_may_be_transparent,
)


def _jpeg(**options) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return save_image(Image.fromarray(pixels), "JPEG", **options)


@pytest.mark.parametrize("name, data, transparent", [
    ("RGB", save_image(Image.new("RGB", (9, 9), (1, 2, 3))), False),
    ("palette", save_image(Image.new("P", (9, 9), 0)), False),
    ("16-bit grey", save_image(Image.fromarray(np.full((9, 9), 40000, np.uint16))), False),
    ("RGBA", save_image(Image.new("RGBA", (9, 9), (1, 2, 3, 255))), True),
    ("grey + alpha", save_image(Image.new("LA", (9, 9), (7, 255))), True),
    ("palette + tRNS", save_image(Image.new("P", (9, 9), 0), transparency=0), True),
    ("grey + tRNS", save_image(Image.new("L", (9, 9), 7), transparency=7), True),
    ("RGB + tRNS", save_image(Image.new("RGB", (9, 9), (1, 2, 3)), transparency=(1, 2, 3)), True),
])
def test_a_png_counts_as_opaque_only_when_its_header_rules_transparency_out(
        name, data, transparent):
    assert bool(png_may_be_transparent(tf.constant(data))) is transparent, name


def test_a_png_whose_image_data_starts_beyond_the_searched_window_may_be_transparent():
    image = Image.new("RGB", (9, 9), (1, 2, 3))
    opaque = save_image(image)
    padded = save_image(image, pnginfo=_text_chunk("x" * 70_000))  # a long tEXt chunk first
    assert not bool(png_may_be_transparent(tf.constant(opaque)))
    assert bool(png_may_be_transparent(tf.constant(padded)))


def _text_chunk(text: str):
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", text)
    return info


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP"])
def test_header_size_matches_the_decoded_size(fmt):
    data = encode_image("red", (37, 21), fmt)
    assert image_format(data) == fmt
    assert header_size(tf.constant(data)).numpy().tolist() == [21, 37]
    assert tf.io.decode_image(data, expand_animations=False).shape[:2] == (21, 37)


def test_unknown_bytes_have_no_size():
    assert header_size(tf.constant(b"<html>")).numpy().tolist() == [0, 0]
    assert image_format(b"<html>") is None


@pytest.mark.parametrize("name, data", [
    ("progressive", _jpeg(progressive=True)),
    ("restart markers", _jpeg(restart_marker_blocks=1)),
    ("data after the end marker (motion photos)", _jpeg() + b"\x00\x00ftypmp42\xff\xda" * 50),
    ("EXIF thumbnail", _jpeg(exif=Image.Exif())),
])
def test_complete_jpegs_are_accepted(tmp_path, name, data):
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    assert image_file_problem(path) is None
    tf.io.decode_jpeg(data)  # and the decoder agrees


@pytest.mark.parametrize("cut", [0.2, 0.5, 0.9, 0.999])
def test_jpegs_cut_anywhere_in_the_scan_are_truncated(tmp_path, cut):
    data = _jpeg(progressive=True)
    path = tmp_path / "a.jpg"
    path.write_bytes(data[:int(len(data) * cut)])
    assert "truncated JPEG" in image_file_problem(path)


def _webp(mode: str, size=(37, 21), **options) -> bytes:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0], channels), np.uint8)
    return save_image(Image.fromarray(pixels, mode), "WEBP", **options)


@pytest.mark.parametrize("mode, options, chunk", [("RGB", {}, b"VP8 "),
                                                  ("RGB", {"lossless": True}, b"VP8L"),
                                                  ("RGBA", {}, b"VP8X")])
def test_webp_is_accepted_and_its_header_gives_the_size(tmp_path, mode, options, chunk):
    data = _webp(mode, **options)
    assert data[12:16] == chunk and image_format(data) == "WebP"
    assert header_size(tf.constant(data)).numpy().tolist() == [21, 37]
    path = tmp_path / "a.webp"
    path.write_bytes(data)
    assert image_file_problem(path) is None
    path.write_bytes(data[:len(data) // 2])
    assert "truncated WebP" in image_file_problem(path)


def test_other_riff_files_are_no_images():
    wave = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(20)
    assert image_format(wave) is None
    assert header_size(tf.constant(wave)).numpy().tolist() == [0, 0]


def test_a_batch_of_files_is_checked_as_each_file_alone(tmp_path, monkeypatch):
    """Headers read a batch at a time: a corrupt JPEG header fails its batch's call, whose
    files are then checked one by one, so each still gets its own verdict."""
    from mmentail.data.images import image_file_problems

    monkeypatch.setattr("mmentail.data.images._CHECK_BATCH", 3)
    files = {"good.png": encode_image("red"), "corrupt.jpg": b"\xff\xd8\xff\xe0" + b"\x13" * 200,
             "good.jpg": _jpeg(), "html.jpg": b"<html>", "empty.png": b""}
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    paths.append(tmp_path / "missing.jpg")
    checked = []
    problems = image_file_problems(paths, on_checked=checked.append)
    assert problems == [image_file_problem(path) for path in paths]
    assert problems[0] is None and problems[2] is None
    assert problems[1] == "has a corrupt JPEG header" and problems[5] == "not found"
    assert problems[4] == "is empty (0 bytes)" and checked == [3, 3]


def test_bytes_are_checked_in_one_batch_each_getting_its_own_verdict():
    """The server checks a request's images with one header read for the lot."""
    good, cut = _jpeg(restart_marker_blocks=1), _jpeg(progressive=True)
    images = [good, b"", cut[:len(cut) // 2], b"\xff\xd8\xff\xe0" + b"\x13" * 200, cut,
              encode_image("red")]
    assert image_bytes_problems(images) == [
        None, "is empty (0 bytes)", "is a truncated JPEG file (no end-of-image marker)",
        "has a corrupt JPEG header", None, None]
    assert image_bytes_problems([]) == []
