"""The tf.data input pipeline, and the preprocessing it shares with the export.

Training and serving run the same two functions, :func:`decode_image` and
:func:`pack_text_pair`, so there is no train/serve skew: the exported
SavedModel decodes bytes and tokenizes strings exactly as training did.

Example:
    >>> pre = load_preprocessor(DEFAULT_PREPROCESS_HANDLE)
    >>> ds = make_dataset(train_df, pre, image_size=(128, 128), seq_length=128,
    ...                   batch_size=32, training=True)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_hub as hub

from mmentail.bert import BERT_INPUT_KEYS
from mmentail.data import LABELS
from mmentail.hub_modules import resolve_handle

IMAGE_KEYS = ("image_1", "image_2")
MODALITIES = ("both", "text", "image")
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP"}
_TOKENIZE_BATCH = 256
_JPEG_SCALES = (1, 2, 4, 8)


def load_preprocessor(handle: str) -> Any:
    """Loads a TF Hub BERT preprocessing model (URL or local path)."""
    return hub.load(resolve_handle(handle))


def is_supported_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """True where the bytes start like a JPEG, PNG, GIF or BMP file."""
    return tf.reduce_any([tf.strings.substr(image_bytes, 0, len(magic)) == magic
                          for magic in _MAGIC])


def decode_image(image_bytes: tf.Tensor, image_size: tuple[int, int],
                 source: tf.Tensor | str = "image") -> tf.Tensor:
    """Encoded JPEG/PNG/GIF (first frame)/BMP -> float32 RGB [h, w, 3] in 0..255.

    `source` names the input in the error raised for bytes that are no image.
    A JPEG is decoded at the smallest of 1/8, 1/4 or 1/2 scale that still
    covers `image_size` (libjpeg's DCT scaling): a 1200x675 photo bound for
    128x128 is decoded at 300x169, skipping the inverse DCT and colour
    conversion of most pixels (the entropy decoding remains).
    """
    tf.debugging.Assert(is_supported_image(image_bytes),
                        [tf.strings.join(["not a JPEG, PNG, GIF or BMP image: ", source])])
    image = tf.cond(
        tf.io.is_jpeg(image_bytes), lambda: _decode_jpeg_scaled(image_bytes, image_size),
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))
    image = tf.image.resize(image, image_size)
    return tf.ensure_shape(image, [*image_size, 3])


def _decode_jpeg_scaled(image_bytes: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    height_width = tf.image.extract_jpeg_shape(image_bytes)[:2]
    target = tf.constant(image_size, tf.int32)
    # Scale 1/r decodes to ceil(side / r) pixels; count the scales that stay >= target.
    fitting = [tf.reduce_all((height_width + r - 1) // r >= target) for r in _JPEG_SCALES[1:]]
    index = tf.reduce_sum(tf.cast(fitting, tf.int32))
    return tf.switch_case(index, [
        lambda r=r: tf.io.decode_jpeg(image_bytes, channels=3, ratio=r) for r in _JPEG_SCALES])


def pack_text_pair(preprocessor: Any, text_1: tf.Tensor, text_2: tf.Tensor,
                   seq_length: int) -> dict[str, tf.Tensor]:
    """Batched strings -> BERT inputs for the pair `[CLS] text_1 [SEP] text_2 [SEP]`."""
    segments = [preprocessor.tokenize(text_1), preprocessor.tokenize(text_2)]
    packed = preprocessor.bert_pack_inputs(segments, seq_length=seq_length)
    return {key: tf.ensure_shape(tf.cast(packed[key], tf.int32), [None, seq_length])
            for key in BERT_INPUT_KEYS}


def tokenize_pairs(preprocessor: Any, text_1: Sequence[str], text_2: Sequence[str],
                   seq_length: int) -> dict[str, np.ndarray]:
    """All text pairs -> BERT inputs, `_TOKENIZE_BATCH` pairs per call, before tf.data.

    Tokens are small (3 x `seq_length` int32 per pair). Done up front, the
    tokenizer is not part of the tf.data graph, whose every iterator (one per
    pass) would otherwise spend seconds optimizing the tokenizer's functions.

    Example:
        >>> tokenize_pairs(pre, ["a post"], ["another"], 16)["input_word_ids"].shape
        (1, 16)
    """
    text_1, text_2 = np.asarray(text_1, dtype=object), np.asarray(text_2, dtype=object)
    chunks = [pack_text_pair(preprocessor, tf.constant(text_1[i:i + _TOKENIZE_BATCH]),
                             tf.constant(text_2[i:i + _TOKENIZE_BATCH]), seq_length)
              for i in range(0, len(text_1), _TOKENIZE_BATCH)]
    if not chunks:
        return {key: np.zeros((0, seq_length), np.int32) for key in BERT_INPUT_KEYS}
    return {key: np.concatenate([chunk[key].numpy() for chunk in chunks])
            for key in BERT_INPUT_KEYS}


def make_dataset(df: pd.DataFrame, preprocessor: Any, *, image_size: tuple[int, int],
                 seq_length: int, batch_size: int, training: bool, seed: int = 42,
                 modality: str = "both", cache: bool | str = True,
                 deterministic: bool = True) -> tf.data.Dataset:
    """Builds the (features, one-hot label) dataset for a split.

    Text pairs are tokenized a batch at a time, up front
    (:func:`tokenize_pairs`); images are read and decoded in parallel and
    cached (in memory, or in the file prefix `cache` names) so
    later epochs only shuffle, batch and prefetch.

    Args:
        df: rows from :func:`mmentail.data.read_pairs` (with image paths unless
            `modality == "text"`).
        preprocessor: a loaded TF Hub BERT preprocessing model; unused for
            `modality == "image"`.
        image_size: (height, width) the images are resized to.
        seq_length: BERT sequence length of the packed pair.
        batch_size: global batch size.
        training: shuffle every epoch and drop nothing.
        seed: shuffle seed.
        modality: "both", "text" (no image is read) or "image" (no text is tokenized).
        cache: True for memory, a path prefix for a file cache, False for none.
        deterministic: keep element order under parallel maps.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    use_text, use_images = modality != "image", modality != "text"
    columns: dict[str, Any] = {"label": df["label_idx"].to_numpy()}
    if use_text:
        columns.update(tokenize_pairs(preprocessor, df["text_1"], df["text_2"], seq_length))
    if use_images:
        columns.update(image_1=df["image_1_path"].to_numpy(),
                       image_2=df["image_2_path"].to_numpy())
    ds = tf.data.Dataset.from_tensor_slices(columns)
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)

    if use_images:
        def read_images(row):
            for key in IMAGE_KEYS:
                row[key] = decode_image(tf.io.read_file(row[key]), image_size, row[key])
            return row

        ds = ds.map(read_images, num_parallel_calls=tf.data.AUTOTUNE)

    if cache is not False:
        ds = ds.cache("" if cache is True else str(cache))
    if training:
        ds = ds.shuffle(len(df), seed=seed, reshuffle_each_iteration=True)

    def split_label(row):
        label = tf.one_hot(row.pop("label"), len(LABELS))
        return row, label

    ds = ds.batch(batch_size).map(split_label, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
