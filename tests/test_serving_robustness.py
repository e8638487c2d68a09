"""Untrusted input to the loaded SavedModel: a result or an error naming the input."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bad_input import bmp_claiming, gif_claiming, jpeg_claiming, png_claiming

from helpers import TINY_IMAGE, TINY_SEQ, encode_image, random_image_bytes
from mmentail.data.images import IMAGE_MAGIC
from mmentail.schema import EXPORT_INPUTS
from mmentail.serving.export import ServingModule

GOOD = random_image_bytes(5, (40, 30))
VALID_IMAGES = [GOOD, encode_image("blue", (20, 20)), encode_image("red", fmt="GIF")]


@pytest.fixture(scope="module")
def serve(exported):
    return tf.saved_model.load(str(exported[1])).signatures["serving_default"]


def _call(serve, text_1=("a post",), image_1=(GOOD,), text_2=("another",), image_2=(GOOD,)):
    return serve(text_1=tf.constant(list(text_1), tf.string),
                 image_1=tf.constant(list(image_1), tf.string),
                 text_2=tf.constant(list(text_2), tf.string),
                 image_2=tf.constant(list(image_2), tf.string))


def _valid(outputs, batch: int) -> None:
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.shape == (batch, 3) and np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(-1), 1, atol=1e-4)
    assert outputs["label"].shape == (batch,)


def test_empty_batch_gives_empty_outputs(serve):
    outputs = _call(serve, (), (), (), ())
    assert outputs["probabilities"].shape == (0, 3) and outputs["label"].shape == (0,)


@pytest.mark.parametrize("name", ["image_1", "text_2", "image_2"])
def test_mismatched_batch_sizes_name_the_input(serve, name):
    inputs = {"text_1": ("a", "b"), "image_1": (GOOD, GOOD), "text_2": ("c", "d"),
              "image_2": (GOOD, GOOD)}
    inputs[name] = inputs[name][:1]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=f"{name} has a different batch size than text_1"):
        _call(serve, **inputs)


def test_empty_texts_are_served(serve):
    _valid(_call(serve, text_1=[""], text_2=[""]), 1)


def test_very_long_text_is_truncated_not_rejected(serve):
    long_text = "flood warning downtown " * 50_000  # 1.1 MB
    short_text = "flood warning downtown " * TINY_SEQ
    long_result = _call(serve, text_1=[long_text], text_2=[long_text])
    _valid(long_result, 1)
    np.testing.assert_allclose(long_result["probabilities"].numpy(),
                               _call(serve, text_1=[short_text],
                                     text_2=[short_text])["probabilities"].numpy(), atol=1e-6)


def test_invalid_utf8_text_is_read_as_replacement_characters(serve):
    raw = _call(serve, text_1=[b"caf\xe9 flood \xff\xfe"])
    replaced = _call(serve, text_1=["caf\ufffd flood \ufffd\ufffd"])
    _valid(raw, 1)
    np.testing.assert_allclose(raw["probabilities"].numpy(), replaced["probabilities"].numpy(),
                               atol=1e-6)


_JPEG = random_image_bytes(6, (64, 48))


@pytest.mark.parametrize("name, data, message", [
    ("empty", b"", r"not a JPEG, PNG, GIF, BMP or WebP image: image_2\[1\]"),
    ("HTML", b"<html>not found</html>", r"not a JPEG, PNG, GIF, BMP or WebP image: image_2\[1\]"),
    ("truncated JPEG", _JPEG[:len(_JPEG) // 2], "image_2"),
    ("truncated PNG", encode_image("red", (64, 64))[:60], "image_2"),
    ("corrupt JPEG header", b"\xff\xd8\xff\xe0" + b"\x13" * 100, "image_2"),
])
def test_bad_image_bytes_raise_an_error_naming_the_input(serve, name, data, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _call(serve, ("a", "b"), (GOOD, GOOD), ("c", "d"), (GOOD, data))


@pytest.mark.parametrize("make", [png_claiming, jpeg_claiming, gif_claiming, bmp_claiming])
def test_decompression_bombs_are_rejected_before_decoding(serve, make):
    bomb = make(20_000, 10_000)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image_1\[0\]: image of 20000x10000 pixels is over the limit "
                             r"of 40000000 pixels"):
        _call(serve, image_1=[bomb])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mb < 200  # decoding would take 600 MB (uint8) and 2.4 GB (float32)


def test_pixel_limit_is_set_at_export_and_recorded(exported, preprocessor):
    model, export_dir = exported
    metadata = json.loads((Path(export_dir) / "assets.extra" / "mmentail.json").read_text())
    assert metadata["max_image_pixels"] == 40_000_000
    module = ServingModule(model, preprocessor, (TINY_IMAGE, TINY_IMAGE), TINY_SEQ, "both",
                           max_pixels=1000)
    inputs = dict(text_1=tf.constant(["a"]), text_2=tf.constant(["b"]),
                  image_1=tf.constant([encode_image("red", (30, 30))]))
    _valid(module.serve_tensors(image_2=tf.constant([encode_image("red", (20, 50))]), **inputs), 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_2\[0\]: image of 40x30"):
        module.serve_tensors(image_2=tf.constant([encode_image("red", (40, 30))]), **inputs)


_images = st.one_of(
    st.binary(max_size=300),
    st.tuples(st.sampled_from(list(IMAGE_MAGIC.values())), st.binary(max_size=300)).map(
        lambda parts: parts[0] + parts[1]),
    st.sampled_from(VALID_IMAGES))
_texts = st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode))


@settings(max_examples=25, deadline=None)
@given(batch=st.lists(st.tuples(_texts, _images, _texts, _images), min_size=1, max_size=3))
def test_random_bytes_give_a_result_or_an_error_naming_the_input(serve, batch):
    columns = dict(zip(EXPORT_INPUTS, map(list, zip(*batch))))
    try:
        outputs = serve(**{name: tf.constant(values, tf.string)
                           for name, values in columns.items()})
    except tf.errors.InvalidArgumentError as error:
        assert "image_1" in str(error) or "image_2" in str(error), str(error)[:500]
        assert not all(image in VALID_IMAGES for image in columns["image_1"] + columns["image_2"])
    else:
        _valid(outputs, len(batch))
