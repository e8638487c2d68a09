"""The tf.data input pipeline: rows -> decoded, tokenized, cached, shuffled batches.

Example:
    pre = load_preprocessor(DEFAULT_PREPROCESS_HANDLE)
    ds = make_dataset(train_df, pre, image_size=(128, 128), seq_length=128,
                      batch_size=32, training=True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from mmentail.config.experiment import ExperimentConfig
from mmentail.data.prepare import Splits
from mmentail.fingerprint import digest, file_identity, rows_fingerprint
from mmentail.pipeline.preprocess import DECODER_VERSION, image_decoder, pack_text_pair
from mmentail.pipeline.shuffle import shuffle_each_epoch, shuffled_files
from mmentail.progress import Progress
from mmentail.schema import BERT_INPUT_KEYS, DEFAULT_SHUFFLE_BUFFER, IMAGE_KEYS, LABELS

_TOKENIZE_BATCH = 256
# The most bytes of tokens a split keeps as constants of its dataset graph (about
# 43k pairs at sequence length 128). Larger splits are tokenized inside the graph,
# whose serialised form (multi-worker sharding, tf.data service) stays small.
MAX_TOKEN_CONSTANT_BYTES = 64 << 20


def tokenize_pairs(preprocessor: Any, text_1: Sequence[str], text_2: Sequence[str],
                   seq_length: int) -> dict[str, np.ndarray]:
    """All text pairs -> BERT inputs, `_TOKENIZE_BATCH` pairs per call, before tf.data.

    Tokens are small (3 x `seq_length` int32 per pair). Done up front, the
    tokenizer is not part of the tf.data graph, whose every iterator (one per
    pass) would otherwise spend seconds optimizing the tokenizer's functions.

    Example:
        tokenize_pairs(pre, ["a post"], ["another"], 16)["input_word_ids"].shape
    """
    text_1, text_2 = np.asarray(text_1, dtype=object), np.asarray(text_2, dtype=object)
    progress = Progress("tokenising", len(text_1), "pair")
    chunks = []
    for i in range(0, len(text_1), _TOKENIZE_BATCH):
        chunks.append(pack_text_pair(preprocessor, tf.constant(text_1[i:i + _TOKENIZE_BATCH]),
                                     tf.constant(text_2[i:i + _TOKENIZE_BATCH]), seq_length))
        progress.add(_TOKENIZE_BATCH)
    if not chunks:
        return {key: np.zeros((0, seq_length), np.int32) for key in BERT_INPUT_KEYS}
    return {key: np.concatenate([chunk[key].numpy() for chunk in chunks])
            for key in BERT_INPUT_KEYS}


def tokens_fit_in_graph(pairs: int, seq_length: int) -> bool:
    """Whether `pairs` pairs' BERT inputs fit in `MAX_TOKEN_CONSTANT_BYTES`."""
    return pairs * len(BERT_INPUT_KEYS) * seq_length * 4 <= MAX_TOKEN_CONSTANT_BYTES


def cache_setting(setting: str, df: pd.DataFrame, split: str, *, sources: Sequence[str] = (),
                  **preprocessing: Any) -> bool | str:
    """The `cache` argument of :func:`make_dataset` for a run's `pipeline_cache` setting.

    "memory" -> True, "none" -> False; anything else is a directory, in which
    each split gets a file cache named by a fingerprint of its rows, image
    files (or TFRecord `sources`) and `preprocessing` (image size, sequence
    length, ...), so a cache written for other data is never read back.

    Example:
        cache_setting("/scratch/cache", train_df, "train", image_size=(128, 128))
    """
    if setting in ("memory", "none"):
        return setting == "memory"
    key = {"rows": rows_fingerprint(df), "sources": [file_identity(s) for s in sources],
           "decoder": DECODER_VERSION, "layout": "packed",
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
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                 tfrecord_files: Sequence[str] | None = None,
                 data_service: str | None = None) -> tf.data.Dataset:
    """Builds the (features, one-hot label) dataset for a split.

    Text pairs are tokenized a batch at a time, up front (:func:`tokenize_pairs`),
    or in the graph before the cache for TFRecord shards and for splits whose
    tokens would exceed `MAX_TOKEN_CONSTANT_BYTES`; images are read and decoded
    in parallel and cached (in memory, or in the file prefix `cache` names) so
    later epochs only shuffle, batch and prefetch.

    Args:
        df: rows from :func:`mmentail.data.read_pairs` (with image paths unless
            `modality == "text"` or `tfrecord_files` are given).
        preprocessor: a loaded TF Hub BERT preprocessing model; unused for
            `modality == "image"`.
        image_size: (height, width) the images are resized to.
        seq_length: BERT sequence length of the packed pair.
        batch_size: global batch size.
        training: shuffle every epoch and drop nothing; TFRecord shards are
            then read at most `MAX_OPEN_SHARDS` at a time, and, when nothing
            is cached, in a new shard order every epoch (keyed like the shuffle).
        seed: shuffle seed.
        modality: "both", "text" (no image is read) or "image" (no text is tokenized).
        cache: True for memory, a path prefix for a file cache (data larger
            than memory; one prefix per split, and a new one when the data or
            preprocessing change), False for none.
        deterministic: keep element order under parallel reads and maps;
            False lets a slow image or shard be overtaken.
        tfrecord_files: read the rows, images included, from these shards of
            :mod:`mmentail.tfrecord` instead of `df` and the image files; `df`
            then only gives the row count.
        shuffle_step: when training, key each epoch's order on this step
            counter (see :func:`shuffle_each_epoch`).
        shuffle_buffer: when training, the most elements held for shuffling.
        data_service: a tf.data service dispatcher ("grpc://host:port") whose
            workers read, decode and tokenize the rows; the cache, the shuffle
            and the batching stay in this process. Rows are handed out
            dynamically, each to one worker; one worker keeps their order.
    """
    file_order = None
    if training and tfrecord_files is not None and cache is False and not data_service:
        # Re-read every epoch: the shard order changes too, keyed like the shuffle
        # (not on service workers, which cannot read this process's step counter).
        file_order = shuffled_files(tfrecord_files, seed, shuffle_step)
    ds = _decoded_rows(df, preprocessor, image_size=image_size, seq_length=seq_length,
                       modality=modality, deterministic=deterministic,
                       tfrecord_files=tfrecord_files, bounded_read=training,
                       file_order=file_order)
    if data_service:
        ds = ds.apply(tf.data.experimental.service.distribute(
            tf.data.experimental.service.ShardingPolicy.DYNAMIC, data_service))
    # Unbatching and TFRecords hide the row count; stating it
    # lets Keras run exactly one epoch's steps, with no extra call at its end.
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(df)))
    if cache is True:
        ds = ds.cache()
    elif cache:
        ds = packed_file_cache(ds, str(cache))
    if training:
        ds = shuffle_each_epoch(ds, len(df), seed, shuffle_step, shuffle_buffer)

    def split_label(row):
        label = tf.one_hot(row.pop("label"), len(LABELS))
        return row, label

    ds = ds.batch(batch_size).map(split_label, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def packed_file_cache(ds: tf.data.Dataset, prefix: str) -> tf.data.Dataset:
    """`ds.cache(prefix)` with each element stored as one byte vector, read back as it was.

    The file cache's writer keeps an index entry per tensor of every element until
    the cache is complete: for a pair's six tensors, ~2 KB of memory a pair through
    the first epoch (200 MB at 100k pairs); one tensor a pair keeps a fraction of
    that (72 MB for the same 100k elements). Elements whose parts are not all of
    a fixed shape, or are strings, are cached as they are.
    """
    spec = ds.element_spec
    names = sorted(spec) if isinstance(spec, dict) else []
    if not names or any(not spec[name].shape.is_fully_defined() or spec[name].dtype in (
            tf.string, tf.bool) for name in names):
        return ds.cache(prefix)
    sizes = [spec[name].shape.num_elements() * spec[name].dtype.size for name in names]

    def unpack(packed: tf.Tensor) -> dict[str, tf.Tensor]:
        parts = zip(names, tf.split(packed, sizes))
        return {name: tf.reshape(tf.bitcast(tf.reshape(part, [-1, spec[name].dtype.size]),
                                            spec[name].dtype), spec[name].shape)
                for name, part in parts}

    packed = ds.map(lambda row: tf.concat(
        [tf.reshape(tf.bitcast(row[name], tf.uint8), [-1]) for name in names], 0),
        num_parallel_calls=tf.data.AUTOTUNE)
    return packed.cache(prefix).map(unpack, num_parallel_calls=tf.data.AUTOTUNE)


def _decoded_rows(df: pd.DataFrame, preprocessor: Any, *, image_size: tuple[int, int],
                  seq_length: int, modality: str, deterministic: bool,
                  tfrecord_files: Sequence[str] | None, bounded_read: bool = False,
                  file_order: tf.data.Dataset | None = None) -> tf.data.Dataset:
    """One element a row: its label index, BERT inputs and decoded images, per `modality`.

    Shards are read all at once in row order, or, with `bounded_read`, at most
    `MAX_OPEN_SHARDS` at once in `file_order` (for reads shuffled afterwards).
    """
    use_text, use_images = modality != "image", modality != "text"
    if tfrecord_files is not None:
        from mmentail.data.tfrecord import MAX_OPEN_SHARDS, read_records

        ds = read_records(tfrecord_files, deterministic=deterministic, file_order=file_order,
                          open_shards=MAX_OPEN_SHARDS if bounded_read else None).map(
            lambda r: {"label": r["label_idx"], "text_1": r["text_1"], "text_2": r["text_2"],
                       "image_1": r["image_1"], "image_2": r["image_2"],
                       "image_1_source": r["image_1_file"], "image_2_source": r["image_2_file"]})
    else:
        columns: dict[str, Any] = {"label": df["label_idx"].to_numpy()}
        if use_text and tokens_fit_in_graph(len(df), seq_length):
            columns.update(tokenize_pairs(preprocessor, df["text_1"], df["text_2"],
                                          seq_length))
        elif use_text:
            columns.update(text_1=df["text_1"].to_numpy(dtype=object),
                           text_2=df["text_2"].to_numpy(dtype=object))
        if use_images:
            columns.update(image_1_source=df["image_1_path"].to_numpy(),
                           image_2_source=df["image_2_path"].to_numpy())
        ds = tf.data.Dataset.from_tensor_slices(columns)
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = ds.with_options(options)

    decode = image_decoder(image_size)

    def select_and_decode(row):
        kept = {key: value for key, value in row.items()
                if key == "label" or (use_text and not key.startswith("image_"))}
        if use_images:
            for key in IMAGE_KEYS:
                source = row[f"{key}_source"]
                image_bytes = row[key] if key in row else tf.io.read_file(source)
                kept[key] = decode(image_bytes, source)
        return kept

    ds = ds.map(select_and_decode, num_parallel_calls=tf.data.AUTOTUNE)
    if use_text and "text_1" in ds.element_spec:
        # Texts read from shards, or too many for constants, are tokenized in the
        # graph, a batch at a time.
        def tokenize(rows):
            rows.update(pack_text_pair(preprocessor, rows.pop("text_1"), rows.pop("text_2"),
                                       seq_length))
            return rows

        ds = ds.batch(_TOKENIZE_BATCH).map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.unbatch()
    return ds


def single_pass(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` without tf.data's autotuning thread, for a pass read once to its end.

    Destroying an iterator waits for that thread's next wake-up, whose period grows
    while the iterator runs: after a pass of a minute, the process sat idle for up
    to 8 s before going on. Without it, a parallel map runs one call per core and
    a prefetch buffer still grows as it needs; a pass of decoding and encoding
    measured as fast.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def split_dataset(config: ExperimentConfig, splits: Splits, name: str, preprocessor: Any, *,
                  training: bool, cache: bool = True,
                  shuffle_step: tf.Variable | None = None) -> tf.data.Dataset:
    """One split of a run through :func:`make_dataset`, set up as `config` says.

    Args:
        config: the run's resolved configuration.
        splits: the run's splits (rows, and TFRecord shards when read from them).
        name: "train", "val" or "test".
        preprocessor: the loaded BERT preprocessing model (None for image-only runs).
        training: shuffle every epoch.
        cache: False skips `config.data.pipeline_cache` (for one-pass uses).
        shuffle_step: see :func:`make_dataset`.
    """
    part, shards = splits.parts()[name], splits.shards.get(name)
    image_size = (config.model.image_size, config.model.image_size)
    cache_to = cache and cache_setting(
        config.data.pipeline_cache, part, name, sources=shards or (), image_size=image_size,
        seq_length=config.model.seq_length, modality=config.model.modality,
        preprocess=config.model.preprocess_handle)
    return make_dataset(part, preprocessor, image_size=image_size,
                        seq_length=config.model.seq_length, batch_size=config.optim.batch_size,
                        training=training, seed=config.seed, modality=config.model.modality,
                        cache=cache_to, deterministic=config.data.deterministic,
                        shuffle_step=shuffle_step, shuffle_buffer=config.data.shuffle_buffer,
                        tfrecord_files=shards, data_service=config.data.data_service)
