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

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_hub as hub

from mmentail.bert import BERT_INPUT_KEYS
from mmentail.data import LABELS
from mmentail.fingerprint import digest, file_identity, rows_fingerprint
from mmentail.hub_modules import resolve_handle
from mmentail.images import IMAGE_MAGIC, MAX_IMAGE_PIXELS, format_index, header_size

IMAGE_KEYS = ("image_1", "image_2")
MODALITIES = ("both", "text", "image")
_PNG = list(IMAGE_MAGIC).index("PNG")
_JPEG = list(IMAGE_MAGIC).index("JPEG")
_TOKENIZE_BATCH = 256
# Texts are cut to this many bytes per token of the sequence before tokenizing: far
# more than a pair can keep, and a bound on the work a huge input can cause.
_BYTES_PER_TOKEN = 32
_JPEG_SCALES = (1, 2, 4, 8)


def load_preprocessor(handle: str) -> Any:
    """Loads a TF Hub BERT preprocessing model (URL or local path)."""
    return hub.load(resolve_handle(handle))


def decode_image(image_bytes: tf.Tensor, image_size: tuple[int, int],
                 source: tf.Tensor | str = "image",
                 max_pixels: int = MAX_IMAGE_PIXELS) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF (first frame)/BMP -> float32 RGB [h, w, 3] in 0..255.

    The size the header claims is checked before decoding, so a small file that
    claims billions of pixels costs nothing. Transparent PNG pixels (alpha or
    palette transparency) are composited onto white, as viewers show them;
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
        ["not a JPEG, PNG, GIF or BMP image: ", source])])
    with tf.control_dependencies([known]):
        height, width = tf.unstack(header_size(image_bytes))
    small = tf.debugging.Assert(height * width <= max_pixels, [tf.strings.join(
        [source, ": image of ", tf.strings.as_string(width), "x", tf.strings.as_string(height),
         f" pixels is over the limit of {max_pixels} pixels"])])
    with tf.control_dependencies([small]):
        image = tf.case(
            [(fmt == _PNG, lambda: _onto_white(tf.io.decode_png(image_bytes, 4))),
             (fmt == _JPEG, lambda: tf.cast(_decode_jpeg_scaled(
                 image_bytes, tf.stack([height, width]), image_size), tf.float32))],
            default=lambda: tf.cast(tf.io.decode_image(image_bytes, channels=3,
                                                       expand_animations=False), tf.float32))
    image = tf.image.resize(tf.ensure_shape(image, [None, None, 3]), image_size)
    return tf.ensure_shape(image, [*image_size, 3])


def _onto_white(rgba: tf.Tensor) -> tf.Tensor:
    rgb, alpha = tf.split(tf.cast(rgba, tf.float32), [3, 1], axis=-1)
    return rgb * (alpha / 255.0) + 255.0 * (1.0 - alpha / 255.0)


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


def shuffle_each_epoch(ds: tf.data.Dataset, size: int, seed: int,
                       step: tf.Variable | None = None) -> tf.data.Dataset:
    """Shuffles all `size` elements of `ds` anew for every pass over it.

    With `step` (the optimizer's step counter), a pass's order depends only on
    `seed` and `step`'s value when the pass starts, not on how many passes came
    before in this process: a run resumed from a checkpoint, which restores
    the counter, sees the order the uninterrupted run would have seen.

    Example:
        >>> ds = shuffle_each_epoch(ds, len(df), seed=42, step=model.optimizer.iterations)
    """
    if step is None:
        return ds.shuffle(size, seed=seed, reshuffle_each_iteration=True)

    def permuted(*components):
        # Read at the start of each pass; a stateless permutation keeps tensors
        # out of the op seeds, which TF's seed handling cannot take symbolically.
        key = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
        order = tf.random.experimental.stateless_shuffle(tf.range(size), seed=key)
        gathered = tf.nest.map_structure(lambda t: tf.gather(t, order), components)
        return tf.data.Dataset.from_tensor_slices(
            gathered if len(gathered) > 1 else gathered[0])

    # One batch of all elements: as much memory as a shuffle buffer of `size`.
    return ds.batch(size).flat_map(permuted).apply(
        tf.data.experimental.assert_cardinality(size))


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


def cache_setting(setting: str, df: pd.DataFrame, split: str, *, sources: Sequence[str] = (),
                  **preprocessing: Any) -> bool | str:
    """The `cache` argument of :func:`make_dataset` for a run's `pipeline_cache` setting.

    "memory" -> True, "none" -> False; anything else is a directory, in which
    each split gets a file cache named by a fingerprint of its rows, image
    files (or TFRecord `sources`) and `preprocessing` (image size, sequence
    length, ...), so a cache written for other data is never read back.

    Example:
        >>> cache_setting("/scratch/cache", train_df, "train", image_size=(128, 128))
        '/scratch/cache/train-5d41402abc4b2a76b9719d911017c592'
    """
    if setting in ("memory", "none"):
        return setting == "memory"
    key = {"rows": rows_fingerprint(df), "sources": [file_identity(s) for s in sources],
           **{name: value if isinstance(value, (int, str, type(None))) else list(value)
              for name, value in preprocessing.items()}}
    directory = Path(setting).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    return str(directory / f"{split}-{digest(key)}")


def make_dataset(df: pd.DataFrame, preprocessor: Any, *, image_size: tuple[int, int],
                 seq_length: int, batch_size: int, training: bool, seed: int = 42,
                 modality: str = "both", cache: bool | str = True,
                 deterministic: bool = True,
                 shuffle_step: tf.Variable | None = None,
                 tfrecord_files: Sequence[str] | None = None) -> tf.data.Dataset:
    """Builds the (features, one-hot label) dataset for a split.

    Text pairs are tokenized a batch at a time, up front
    (:func:`tokenize_pairs`; in the graph for TFRecord shards); images are read and decoded in parallel and
    cached (in memory, or in the file prefix `cache` names) so
    later epochs only shuffle, batch and prefetch.

    Args:
        df: rows from :func:`mmentail.data.read_pairs` (with image paths unless
            `modality == "text"` or `tfrecord_files` are given).
        preprocessor: a loaded TF Hub BERT preprocessing model; unused for
            `modality == "image"`.
        image_size: (height, width) the images are resized to.
        seq_length: BERT sequence length of the packed pair.
        batch_size: global batch size.
        training: shuffle every epoch and drop nothing.
        seed: shuffle seed.
        modality: "both", "text" (no image is read) or "image" (no text is tokenized).
        cache: True for memory, a path prefix for a file cache (data larger
            than memory; one prefix per split, and a new one when the data or
            preprocessing change), False for none.
        deterministic: keep element order under parallel reads and maps;
            False lets a slow image or shard be overtaken.
        tfrecord_files: read the rows, images included, from these shards of
            :mod:`mmentail.tfrecord` instead of `df` and the image files; `df`
            then only gives the row count (the shuffle buffer).
        shuffle_step: when training, key each epoch's order on this step
            counter (see :func:`shuffle_each_epoch`).
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    use_text, use_images = modality != "image", modality != "text"
    if tfrecord_files is not None:
        from mmentail.tfrecord import read_records

        ds = read_records(tfrecord_files, deterministic=deterministic).map(
            lambda r: {"label": r["label_idx"], "text_1": r["text_1"], "text_2": r["text_2"],
                       "image_1": r["image_1"], "image_2": r["image_2"],
                       "image_1_source": r["image_1_file"], "image_2_source": r["image_2_file"]})
    else:
        columns: dict[str, Any] = {"label": df["label_idx"].to_numpy()}
        if use_text:
            columns.update(tokenize_pairs(preprocessor, df["text_1"], df["text_2"],
                                          seq_length))
        if use_images:
            columns.update(image_1_source=df["image_1_path"].to_numpy(),
                           image_2_source=df["image_2_path"].to_numpy())
        ds = tf.data.Dataset.from_tensor_slices(columns)
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)

    def select_and_decode(row):
        kept = {key: value for key, value in row.items()
                if key == "label" or (use_text and not key.startswith("image_"))}
        if use_images:
            for key in IMAGE_KEYS:
                source = row[f"{key}_source"]
                image_bytes = row[key] if key in row else tf.io.read_file(source)
                kept[key] = decode_image(image_bytes, image_size, source)
        return kept

    ds = ds.map(select_and_decode, num_parallel_calls=tf.data.AUTOTUNE)

    if use_text and tfrecord_files is not None:
        # Texts read from shards are tokenized in the graph, a batch at a time.
        def tokenize(rows):
            rows.update(pack_text_pair(preprocessor, rows.pop("text_1"), rows.pop("text_2"),
                                       seq_length))
            return rows

        ds = ds.batch(_TOKENIZE_BATCH).map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.unbatch()

    # Unbatching and TFRecords hide the row count; stating it
    # lets Keras run exactly one epoch's steps, with no extra call at its end.
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(df)))
    if cache is not False:
        ds = ds.cache("" if cache is True else str(cache))
    if training:
        ds = shuffle_each_epoch(ds, len(df), seed, shuffle_step)

    def split_label(row):
        label = tf.one_hot(row.pop("label"), len(LABELS))
        return row, label

    ds = ds.batch(batch_size).map(split_label, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
