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

import pandas as pd
import tensorflow as tf
import tensorflow_hub as hub

from mmentail.bert import BERT_INPUT_KEYS
from mmentail.data import LABELS
from mmentail.fingerprint import digest, file_identity, rows_fingerprint
from mmentail.hub_modules import resolve_handle

IMAGE_KEYS = ("image_1", "image_2")
MODALITIES = ("both", "text", "image")
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP"}
_TOKENIZE_BATCH = 256


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
    """
    tf.debugging.Assert(is_supported_image(image_bytes),
                        [tf.strings.join(["not a JPEG, PNG, GIF or BMP image: ", source])])
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image = tf.image.resize(image, image_size)
    return tf.ensure_shape(image, [*image_size, 3])


def pack_text_pair(preprocessor: Any, text_1: tf.Tensor, text_2: tf.Tensor,
                   seq_length: int) -> dict[str, tf.Tensor]:
    """Batched strings -> BERT inputs for the pair `[CLS] text_1 [SEP] text_2 [SEP]`."""
    segments = [preprocessor.tokenize(text_1), preprocessor.tokenize(text_2)]
    packed = preprocessor.bert_pack_inputs(segments, seq_length=seq_length)
    return {key: tf.ensure_shape(tf.cast(packed[key], tf.int32), [None, seq_length])
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
                 tfrecord_files: Sequence[str] | None = None) -> tf.data.Dataset:
    """Builds the (features, one-hot label) dataset for a split.

    Images are read and decoded in parallel; text pairs are tokenized a batch at
    a time; both are cached (in memory, or in the file prefix `cache` names) so
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
            columns.update(text_1=df["text_1"].to_numpy(), text_2=df["text_2"].to_numpy())
        if use_images:
            columns.update(image_1_source=df["image_1_path"].to_numpy(),
                           image_2_source=df["image_2_path"].to_numpy())
        ds = tf.data.Dataset.from_tensor_slices(columns)
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)

    def select_and_decode(row):
        kept = {"label": row["label"]}
        if use_text:
            kept.update(text_1=row["text_1"], text_2=row["text_2"])
        if use_images:
            for key in IMAGE_KEYS:
                source = row[f"{key}_source"]
                image_bytes = row[key] if key in row else tf.io.read_file(source)
                kept[key] = decode_image(image_bytes, image_size, source)
        return kept

    ds = ds.map(select_and_decode, num_parallel_calls=tf.data.AUTOTUNE)

    if use_text:
        def tokenize(rows):
            rows.update(pack_text_pair(preprocessor, rows.pop("text_1"), rows.pop("text_2"),
                                       seq_length))
            return rows

        ds = ds.batch(_TOKENIZE_BATCH).map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.unbatch()

    # Batched tokenizing (unbatch) and TFRecords hide the row count; stating it
    # lets Keras run exactly one epoch's steps, with no extra call at its end.
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(df)))
    if cache is not False:
        ds = ds.cache("" if cache is True else str(cache))
    if training:
        ds = ds.shuffle(len(df), seed=seed, reshuffle_each_iteration=True)

    def split_label(row):
        label = tf.one_hot(row.pop("label"), len(LABELS))
        return row, label

    ds = ds.batch(batch_size).map(split_label, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
