from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import TINY_SEQ, encode_image, random_image_bytes, save_image
from mmentail.pipeline.preprocess import (
    decode_image,
    image_decoder,
    load_preprocessor,
    pack_text_pair,
)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP"])
def test_decodes_every_format_to_rgb_of_the_requested_size(fmt):
    image = decode_image(tf.constant(encode_image((200, 30, 10), (50, 20), fmt)), (16, 24))
    assert image.shape == (16, 24, 3) and image.dtype == tf.float32
    red, green, blue = np.mean(image.numpy(), axis=(0, 1))
    assert red > 150 and green < 80 and blue < 80


def test_grayscale_and_alpha_become_rgb():
    gray = decode_image(tf.constant(encode_image(128, (8, 8), "PNG", mode="L")), (4, 4))
    rgba = decode_image(tf.constant(encode_image((0, 0, 255, 100), (8, 8), "PNG",
                                                 mode="RGBA")), (4, 4))
    assert gray.shape == rgba.shape == (4, 4, 3)
    np.testing.assert_allclose(gray.numpy(), 128, atol=1)
    assert rgba.numpy()[..., 2].mean() > 250


def test_an_opaque_rgba_png_decodes_as_its_rgb_pixels():
    # Opaque images skip the compositing arithmetic: it must not change a pixel.
    pixels = np.random.default_rng(3).integers(0, 256, (40, 30, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    opaque = decode_image(tf.constant(encode_image_array(pixels, "PNG")), (16, 12)).numpy()
    rgb = decode_image(tf.constant(encode_image_array(pixels[..., :3], "PNG")), (16, 12))
    np.testing.assert_array_equal(opaque, rgb.numpy())
    pixels[5, 5, 3] = 0  # one transparent pixel: composited onto white
    composited = decode_image(tf.constant(encode_image_array(pixels, "PNG")), (40, 30))
    np.testing.assert_array_equal(composited.numpy()[5, 5], [255, 255, 255])


@pytest.mark.parametrize("mode, colour", [("RGB", (10, 20, 30)), ("P", 0), ("L", 7)])
def test_a_png_with_a_transparent_colour_is_composited_and_an_opaque_one_is_not(mode, colour):
    image = Image.new(mode, (6, 6), colour)
    opaque = save_image(image)
    keyed = save_image(image, transparency=colour)  # that colour marked transparent (tRNS)
    expected = np.asarray(image.convert("RGB"), np.float32)[:3, :3]
    np.testing.assert_array_equal(decode_image(tf.constant(opaque), (3, 3)), expected)
    np.testing.assert_array_equal(decode_image(tf.constant(keyed), (3, 3)), 255.0)


def test_non_image_bytes_name_their_source():
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a JPEG.*photo_7.jpg"):
        decode_image(tf.constant(b"%PDF-1.4 not an image"), (8, 8), "photo_7.jpg")


@pytest.mark.parametrize("size", [(400, 240), (41, 37)])
def test_large_jpegs_decode_at_a_reduced_scale_close_to_a_full_decode(size):
    # 400x240 -> 32x32 decodes at 1/4 scale (100x60); 41x37 only fits 1/1.
    data = random_image_bytes(7, size=size)
    scaled = decode_image(tf.constant(data), (32, 32)).numpy()
    full = tf.image.resize(tf.io.decode_jpeg(data, channels=3), (32, 32)).numpy()
    assert scaled.shape == (32, 32, 3)
    if size == (41, 37):
        np.testing.assert_array_equal(scaled, full)
    else:
        # Scaled decoding averages pixels first: same picture, less aliasing.
        assert abs(scaled.mean() - full.mean()) < 2 and scaled.std() < full.std()


def test_text_pair_is_packed_as_two_segments(preprocessor):
    packed = pack_text_pair(preprocessor, tf.constant(["the flood"]),
                            tf.constant(["the election count"]), TINY_SEQ)
    type_ids = packed["input_type_ids"].numpy()[0]
    mask = packed["input_mask"].numpy()[0]
    assert packed["input_word_ids"].shape == (1, TINY_SEQ)
    assert type_ids[0] == 0 and type_ids.max() == 1 and (type_ids <= mask).all()


def encode_image_array(pixels: np.ndarray, fmt: str) -> bytes:
    return save_image(Image.fromarray(pixels), fmt, **({"lossless": True} if fmt == "WEBP"
                                                       else {}))


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_lossless_webp_decodes_to_the_pixels_pillow_gives(mode):
    channels = len(mode)
    pixels = np.random.default_rng(2).integers(0, 256, (16, 24, channels), dtype=np.uint8)
    if channels == 4:
        pixels[..., 3] = 255  # opaque, so compositing onto white keeps the pixels
        pixels[0, 0, 3] = 0
    data, png = (encode_image_array(pixels, fmt) for fmt in ("WEBP", "PNG"))
    image = decode_image(tf.constant(data), (16, 24)).numpy()
    np.testing.assert_array_equal(image, decode_image(tf.constant(png), (16, 24)).numpy())
    expected = np.array(Image.open(io.BytesIO(data)).convert(mode))[..., :3].astype(np.float32)
    if channels == 4:
        expected[0, 0] = 255  # transparent becomes white
    np.testing.assert_array_equal(image, expected)


def test_one_decoder_graph_serves_every_pipeline_at_a_size():
    """Pipelines call one traced decoder per size instead of tracing the decoders again."""
    decoder = image_decoder((16, 24))
    assert image_decoder([16, 24]) is decoder and image_decoder((24, 16)) is not decoder
    data = encode_image((200, 30, 10), (50, 20), "JPEG")
    for _ in range(2):
        images = tf.data.Dataset.from_tensors(data).map(lambda b: decoder(b, "x.jpg"))
        np.testing.assert_array_equal(next(iter(images)), decode_image(tf.constant(data),
                                                                       (16, 24)))
    assert decoder.experimental_get_tracing_count() == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a .* image: photo_7.jpg"):
        decoder(tf.constant(b"%PDF-1.4"), tf.constant("photo_7.jpg"))


def test_the_preprocessor_is_loaded_once_until_it_changes_on_disk(demo, tmp_path):
    import shutil

    copy = tmp_path / "preprocess"
    shutil.copytree(demo.preprocess_dir, copy)
    first = load_preprocessor(str(copy))
    assert load_preprocessor(str(copy)) is first
    stamp = (copy / "saved_model.pb").stat().st_mtime_ns
    os.utime(copy / "saved_model.pb", ns=(stamp, stamp + 1_000_000_000))  # rewritten
    assert load_preprocessor(str(copy)) is not first
