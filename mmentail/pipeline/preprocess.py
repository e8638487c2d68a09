"""The preprocessing training and serving share: image bytes -> pixels, text pair -> BERT ids.

Training's tf.data pipeline and the exported SavedModel call the same two
functions, :func:`decode_image` and :func:`pack_text_pair`, so there is no
train/serve skew: the export decodes bytes and tokenizes strings exactly as
training did.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import tensorflow as tf
import tensorflow_hub as hub

from mmentail.data.images import (
    FORMAT_NAMES,
    IMAGE_MAGIC,
    format_index,
    header_size,
    png_may_be_transparent,
)
from mmentail.schema import BERT_INPUT_KEYS, MAX_IMAGE_PIXELS
from mmentail.text.hub_modules import resolve_handle

_PNG = list(IMAGE_MAGIC).index("PNG")
_JPEG = list(IMAGE_MAGIC).index("JPEG")
_WEBP = list(IMAGE_MAGIC).index("WebP")
# Texts are cut to this many bytes per token of the sequence before tokenizing: far
# more than a pair can keep, and a bound on the work a huge input can cause.
_BYTES_PER_TOKEN = 32
_JPEG_SCALES = (1, 2, 4, 8)
# Part of every cache key of decoded pixels or of features computed from them:
# raised whenever a change gives some image other pixels (2: opaque PNGs decoded
# as RGB, which 1-bit palette PNGs need).
DECODER_VERSION = 2


def load_preprocessor(handle: str) -> Any:
    """Loads a TF Hub BERT preprocessing model (URL or local path), once per process.

    The model holds no trainable state, so every run of a process (the folds of a
    cross-validation, a notebook's runs) shares one load; a module rewritten on
    disk since is loaded again.
    """
    path = resolve_handle(handle)
    stamp = Path(path, "saved_model.pb")
    return _load_preprocessor(path, stamp.stat().st_mtime_ns if stamp.exists() else None)


@functools.lru_cache(maxsize=8)
def _load_preprocessor(path: str, stamp: int | None) -> Any:
    return hub.load(path)


def image_decoder(image_size: tuple[int, int], max_pixels: int = MAX_IMAGE_PIXELS
                  ) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """:func:`decode_image` as one `tf.function` per image size, `(image_bytes, source)`.

    Its graph is built once per process: every tf.data pipeline and export that
    decodes at this size calls it instead of tracing the decoders again (half a
    second a pipeline).
    """
    height, width = image_size
    return _image_decoder((int(height), int(width)), int(max_pixels))


@functools.lru_cache(maxsize=None)
def _image_decoder(image_size: tuple[int, int], max_pixels: int) -> Callable:
    return tf.function(lambda image_bytes, source: decode_image(image_bytes, image_size, source,
                                                                max_pixels),
                       input_signature=[tf.TensorSpec([], tf.string, name="image_bytes"),
                                        tf.TensorSpec([], tf.string, name="source")])


def decode_image(image_bytes: tf.Tensor, image_size: tuple[int, int],
                 source: tf.Tensor | str = "image",
                 max_pixels: int = MAX_IMAGE_PIXELS) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/WebP (first frame)/BMP -> float32 RGB [h, w, 3] in 0..255.

    The size the header claims is checked before decoding, so a small file that
    claims billions of pixels costs nothing. Transparent PNG and WebP pixels
    (alpha or palette transparency) are composited onto white, as viewers show them;
    grayscale, palette, CMYK and 16-bit images become 8-bit RGB. A JPEG is
    decoded at the smallest of 1/8, 1/4 or 1/2 scale that still covers
    `image_size` (libjpeg's DCT scaling): a 1200x675 photo bound for 128x128 is
    decoded at 300x169, skipping the inverse DCT and colour conversion of most
    pixels.

    Args:
        image_bytes: scalar string, the encoded image.
        image_size: (height, width) the image is resized to.
        source: names the input in errors (a file path, or `image_1[3]`).
        max_pixels: largest height x width decoded.

    Raises:
        InvalidArgumentError: naming `source`, for bytes that are no supported
            image or claim more than `max_pixels` pixels.
    """
    fmt = format_index(image_bytes)
    known = tf.debugging.Assert(fmt < len(IMAGE_MAGIC), [tf.strings.join(
        [f"not a {FORMAT_NAMES} image: ", source])])
    with tf.control_dependencies([known]):
        height, width = tf.unstack(header_size(image_bytes, fmt))
    small = tf.debugging.Assert(height * width <= max_pixels, [tf.strings.join(
        [source, ": image of ", tf.strings.as_string(width), "x", tf.strings.as_string(height),
         f" pixels is over the limit of {max_pixels} pixels"])])
    with tf.control_dependencies([small]):
        image = tf.case(
            [(fmt == _PNG, lambda: _decode_png(image_bytes, image_size)),
             (fmt == _JPEG, lambda: _resize(_decode_jpeg_scaled(
                 image_bytes, tf.stack([height, width]), image_size), image_size)),
             (fmt == _WEBP, lambda: _decode_webp(image_bytes, image_size))],
            default=lambda: _resize(tf.io.decode_image(image_bytes, channels=3,
                                                       expand_animations=False), image_size))
    return tf.ensure_shape(image, [*image_size, 3])


def _resize(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """uint8 or float RGB -> float32 at `image_size` (uint8 goes in as is: no full-size cast)."""
    return tf.image.resize(tf.ensure_shape(image, [None, None, 3]), image_size)


def _decode_png(image_bytes: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Resized; composited onto white when the PNG may be transparent."""
    return tf.cond(png_may_be_transparent(image_bytes),
                   lambda: _onto_white(tf.io.decode_png(image_bytes, 4), image_size),
                   lambda: _resize(tf.io.decode_png(image_bytes, 3), image_size))


def _decode_webp(image_bytes: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """The first frame, resized; composited onto white when it has an alpha channel."""
    frame = tf.io.decode_webp(image_bytes)[0]
    return tf.cond(tf.shape(frame)[2] == 4,
                   lambda: _onto_white(tf.ensure_shape(frame, [None, None, 4]), image_size),
                   lambda: _resize(frame[..., :3], image_size))


def _onto_white(rgba: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """RGBA -> RGB composited onto white, resized. Most PNG and WebP photos are opaque:
    those skip the full-size float arithmetic (two thirds of their decoding time)."""
    rgb = rgba[..., :3]

    def composited() -> tf.Tensor:
        opacity = tf.cast(rgba[..., 3:], tf.float32) / 255.0
        return tf.cast(rgb, tf.float32) * opacity + 255.0 * (1.0 - opacity)

    return tf.cond(tf.reduce_all(rgba[..., 3] == 255), lambda: _resize(rgb, image_size),
                   lambda: _resize(composited(), image_size))


def clean_text(text: tf.Tensor, seq_length: int) -> tf.Tensor:
    """Cuts texts far beyond what `seq_length` tokens hold and repairs invalid UTF-8.

    Bytes that are not valid UTF-8 become U+FFFD, so any string tokenizes.
    """
    text = tf.strings.substr(text, 0, seq_length * _BYTES_PER_TOKEN)
    return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")


def _decode_jpeg_scaled(image_bytes: tf.Tensor, height_width: tf.Tensor,
                        image_size: tuple[int, int]) -> tf.Tensor:
    target = tf.constant(image_size, tf.int64)
    # Scale 1/r decodes to ceil(side / r) pixels; count the scales that stay >= target.
    fitting = [tf.reduce_all((height_width + r - 1) // r >= target) for r in _JPEG_SCALES[1:]]
    index = tf.reduce_sum(tf.cast(fitting, tf.int32))
    return tf.switch_case(index, [
        lambda r=r: tf.io.decode_jpeg(image_bytes, channels=3, ratio=r) for r in _JPEG_SCALES])


def pack_text_pair(preprocessor: Any, text_1: tf.Tensor, text_2: tf.Tensor,
                   seq_length: int) -> dict[str, tf.Tensor]:
    """Batched strings -> BERT inputs for the pair `[CLS] text_1 [SEP] text_2 [SEP]`.

    Texts go through :func:`clean_text` first; the pair is truncated to
    `seq_length` tokens, never rejected for its length.
    """
    segments = [preprocessor.tokenize(clean_text(text, seq_length)) for text in (text_1, text_2)]
    packed = preprocessor.bert_pack_inputs(segments, seq_length=seq_length)
    return {key: tf.ensure_shape(tf.cast(packed[key], tf.int32), [None, seq_length])
            for key in BERT_INPUT_KEYS}
