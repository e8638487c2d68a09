"""Train the head on features computed once, and kept on disk, when both encoders are frozen.

A frozen BERT and a frozen ResNet50V2 give the same pooled features in every
epoch, so running them every epoch is wasted work: compute the features once,
then train only the head (see :func:`mmentail.model.build_head`) on them. The
head's layers are the full model's, so the full model, encoders included, is
what gets evaluated and exported.

The features are stored under a key that fingerprints everything they depend
on (:mod:`mmentail.training.feature_key`): a later run with the same key loads
them instead of encoding again; any change gives a new key, so a stale cache
is never read.

Example:
    key = feature_key(train_df, model_config, preprocess_handle="/m/pre")
    features, labels = cached_features(model.get_layer("encoders"), lambda: encode_ds,
                                       strategy=strategy, directory="~/.cache/f", key=key)
    train_ds = feature_dataset(features, labels, batch_size=32, training=True)
    model.get_layer("head").fit(train_ds, epochs=10)
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras

from mmentail.config.experiment import ExperimentConfig
from mmentail.data.prepare import Splits
from mmentail.fingerprint import digest, weights_digest
from mmentail.io_utils import atomic_directory, atomic_write_json
from mmentail.pipeline.dataset import single_pass, split_dataset
from mmentail.pipeline.shuffle import shuffle_each_epoch
from mmentail.progress import Progress
from mmentail.schema import DEFAULT_SHUFFLE_BUFFER, SPLITS
from mmentail.training.distribute import is_chief
from mmentail.training.feature_key import feature_key
from mmentail.training.row_files import RowFile, RowWriter

log = logging.getLogger(__name__)
_KEY_FILE = "key.json"


def _all_replicas_agree(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """True when `flag` holds on every replica of every worker.

    Workers must take the same branch (encode or load), since encoding runs
    collectives every worker has to join.
    """
    def count():
        context = tf.distribute.get_replica_context()
        return context.all_reduce("SUM", tf.constant(int(flag)))

    total = strategy.experimental_local_results(strategy.run(tf.function(count)))[0]
    return int(total) == strategy.num_replicas_in_sync


def _load(directory: Path) -> tuple[dict[str, RowFile], RowFile]:
    """The stored arrays, read a batch of rows at a time when indexed."""
    names = json.loads((directory / _KEY_FILE).read_text())["features"]
    return ({name: RowFile(directory / f"{name}.npy") for name in names},
            RowFile(directory / "labels.npy"))


# One traced encoding step per (encoders, strategy): every dataset it encodes (a
# run's three splits, one after the other) shares it instead of tracing the
# encoders anew. Weak keys: the cache keeps no model alive.
_ENCODE_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Batches the encoding pass decodes ahead while the encoders are traced: a fixed
# amount of memory, ~100 MB at 128 px and batch 32 (~300 MB at 224 px).
_PREFETCH_BATCHES = 8


def _encode_step(encoders: tf_keras.Model, strategy: tf.distribute.Strategy) -> Callable:
    """A global batch -> (each encoder's float32 features, labels), gathered whole."""
    cached = _ENCODE_STEPS.get(encoders)
    if cached is not None and cached[0] is strategy:
        return cached[1]
    model = weakref.ref(encoders)

    def encode(features, labels):
        context = tf.distribute.get_replica_context()
        outputs = {k: tf.cast(v, tf.float32)
                   for k, v in model()(features, training=False).items()}
        # The labels pass through an op placed on this replica's device: input
        # tensors carry none, and collectives need one.
        return context.all_gather((outputs, tf.identity(labels)), axis=0)

    # Traced for the first batch's shape; :func:`_encode_into` adds the trace for
    # any other (a dynamic batch size for all gives BERT features a rounding bit
    # apart: the demo's test figures moved by a pair).
    step = tf.function(lambda batch: strategy.experimental_local_results(
        strategy.run(encode, args=batch))[0])
    _ENCODE_STEPS[encoders] = (strategy, step)
    return step


def _encode_into(directory: Path, encoders: tf_keras.Model, dataset: tf.data.Dataset,
                 strategy: tf.distribute.Strategy, count: int) -> list[str]:
    """Streams `dataset` through `encoders` under `strategy` into .npy files in `directory`.

    Each global batch is encoded across the replicas and gathered back whole,
    with its labels, then appended to the files (:class:`RowWriter`, no memory
    map): memory holds one batch, never the whole split.
    """
    step = _encode_step(encoders, strategy)
    writers: dict[str, RowWriter] = {}
    offset = 0
    progress = Progress("encoding features", count, "pair")
    batches = strategy.experimental_distribute_dataset(
        single_pass(dataset.prefetch(_PREFETCH_BATCHES)))
    with contextlib.ExitStack() as open_files:  # each checks its row count on closing
        for batch in batches:
            outputs, labels = step(batch)
            if not offset:
                # The trace for smaller batches too, now, while the input is decoded
                # ahead, rather than at a split's last batch with a core idle.
                step.get_concrete_function(batches.element_spec)
            size = int(labels.shape[0])
            if offset + size > count:
                raise ValueError(f"the encoded dataset has more than the {count} rows expected")
            columns = {**outputs, "labels": labels}
            if not writers:
                writers = {name: open_files.enter_context(RowWriter(
                    directory / f"{name}.npy", count, tuple(t.shape[1:])))
                    for name, t in columns.items()}
            for name, tensor in columns.items():
                writers[name].append(tensor.numpy())
            offset += size
            progress.add(size)
        if offset != count:
            raise ValueError(f"encoded {offset} rows, expected {count}")
    return sorted(name for name in writers if name != "labels")


def cached_features(encoders: tf_keras.Model, make_batches: Callable[[], tf.data.Dataset], *,
                    strategy: tf.distribute.Strategy, directory: str | Path,
                    key: dict[str, Any], persist: bool = True,
                    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The encoders' features and the one-hot labels for `dataset`, from disk when cached.

    Args:
        encoders: the frozen encoder half of the model (built under `strategy`).
        make_batches: makes the unshuffled, batched (features, one-hot label) dataset
            of `key["count"]` rows, e.g. :func:`mmentail.pipeline.make_dataset` with
            `training=False`; called only when the features are not on disk.
        strategy: the training strategy; every worker must call this together.
        directory: cache root; the features live in `<directory>/<key digest>/`.
        key: from :func:`feature_key`.
        persist: write newly computed features to `directory` (False on
            non-chief workers, which encode into a temporary directory).

    Returns:
        ({feature name: float32 [rows, dim]}, float32 one-hot labels [rows, classes]),
        :class:`RowFile` readers of the stored files (read a batch of rows at a time
        by :func:`feature_dataset`, never whole).
    """
    target = Path(directory).expanduser() / digest(key)
    key_file = target / _KEY_FILE
    have = key_file.is_file() and json.loads(key_file.read_text()).get("key") == key
    if _all_replicas_agree(strategy, have):
        log.info("loading cached encoder features from %s", target)
        return _load(target)
    log.info("encoding %d rows once with the frozen encoders", key["count"])

    def write(into: Path) -> None:
        names = _encode_into(into, encoders, make_batches(), strategy, key["count"])
        atomic_write_json(into / _KEY_FILE, {"key": key, "features": names})

    if persist:
        with atomic_directory(target) as tmp:
            write(tmp)
        return _load(target)
    # The readers outlive the files' removal (POSIX keeps unlinked open files readable).
    with tempfile.TemporaryDirectory(prefix="mmentail-features-",
                                     ignore_cleanup_errors=True) as tmp:
        write(Path(tmp))
        return _load(Path(tmp))


def feature_dataset(features: dict[str, np.ndarray], labels: np.ndarray, *, batch_size: int,
                    training: bool, seed: int = 42, shuffle_step: tf.Variable | None = None,
                    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                    rows: np.ndarray | None = None) -> tf.data.Dataset:
    """(pooled features, one-hot label) batches, streamed, reshuffled every epoch when training.

    Only row indices enter tf.data: they are shuffled with
    :func:`mmentail.pipeline.make_dataset`'s shuffle (same seed, buffer and
    `shuffle_step`, so both give the same order), batched, and each batch's
    rows are gathered from the arrays then. Stored files (:class:`RowFile`, as
    :func:`cached_features` returns them) are thus read a batch at a time, and
    the dataset's graph holds no array.

    Args:
        features: {name: [rows, dim]} arrays, in memory or :class:`RowFile` readers.
        labels: one-hot labels [rows, classes].
        batch_size: rows per batch.
        training: reshuffle every epoch.
        seed, shuffle_step, shuffle_buffer: the shuffle's (:func:`shuffle_each_epoch`).
        rows: the rows to serve, in this order (a cross-validation fold's
            part of all pairs' features); default all.

    Example:
        feature_dataset(*cached_features(...), batch_size=32, training=True, seed=42)
    """
    names = sorted(features)
    columns = [features[name] for name in names] + [labels]
    if rows is None:
        size, index = len(labels), tf.data.Dataset.range(len(labels))
    else:
        size, index = len(rows), tf.data.Dataset.from_tensor_slices(np.asarray(rows, np.int64))
    if training:
        index = shuffle_each_epoch(index, size, seed, shuffle_step, shuffle_buffer)

    def gather(at: tf.Tensor):
        tensors = tf.numpy_function(lambda at: [np.asarray(c[at]) for c in columns], [at],
                                    [tf.as_dtype(c.dtype) for c in columns], stateful=False)
        for tensor, column in zip(tensors, columns):
            tensor.set_shape([None, *column.shape[1:]])
        return dict(zip(names, tensors[:-1])), tensors[-1]

    return index.batch(batch_size).map(gather).prefetch(tf.data.AUTOTUNE)


def feature_datasets(config: ExperimentConfig, splits: Splits, model: tf_keras.Model,
                     strategy: tf.distribute.Strategy, preprocessor: Any,
                     shuffle_step: tf.Variable | None = None,
                     names: Sequence[str] = ("train", "val")) -> tuple[tf.data.Dataset, ...]:
    """Stage 4 with frozen encoders: splits (train and val) as cached encoder features
    (:func:`feature_rows`), train reshuffled on `shuffle_step` like the pipeline."""
    features, labels, at = feature_rows(config, splits, model, strategy, preprocessor, names)
    # Rows picked lazily, a batch at a time, from the stored files.
    return tuple(feature_dataset(features, labels, rows=at[name],
                                 batch_size=config.optim.batch_size, training=name == "train",
                                 seed=config.seed, shuffle_step=shuffle_step,
                                 shuffle_buffer=config.data.shuffle_buffer)
                 for name in names)


def feature_rows(config: ExperimentConfig, splits: Splits, model: tf_keras.Model,
                 strategy: tf.distribute.Strategy, preprocessor: Any,
                 names: Sequence[str] = ("train", "val"),
                 ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """The cached encoder features and one-hot labels of a run's pairs, and which of
    their rows each split in `names` holds, in the split's order.

    The run's three splits are encoded in one pass, one after the other, each
    batched as it would be alone (so a pair's features do not depend on the
    pass), into one stored entry (or loaded, when a run before encoded the same
    splits with the same encoders); each split takes its rows from it, served as
    (features, label) batches to the model's "head". A cross-validation fold (`folds` > 1)
    encodes all pairs, in file order, once for every fold, and takes its rows
    from them. The test split goes the same way (`names=("test",)`): the head on
    cached features computes what the full model does, without tracing it again.
    """
    encoders = model.get_layer("encoders")
    random_weights = None
    if config.model.image_weights == "none" and config.model.modality != "text":
        random_weights = weights_digest(encoders.get_layer("image_encoder").weights)

    def encoded(split: Splits) -> tuple[dict[str, np.ndarray], np.ndarray]:
        key = feature_key(pd.concat(split.parts().values()), config.model,
                          preprocess_handle=config.model.preprocess_handle,
                          random_image_weights=random_weights,
                          sources=[path for name in SPLITS
                                   for path in split.shards.get(name, ())])

        def batches() -> tf.data.Dataset:
            each = [split_dataset(config, split, name, preprocessor, training=False, cache=False)
                    for name in SPLITS if len(split.parts()[name])]
            return functools.reduce(tf.data.Dataset.concatenate, each)

        return cached_features(
            encoders, batches, strategy=strategy,
            directory=Path(config.data.cache_dir) / "features", key=key,
            persist=is_chief(strategy))

    parts = {name: splits.parts()[name] for name in names}
    if config.data.folds > 1:
        rows = pd.concat(splits.parts().values()).sort_index()
        features, labels = encoded(Splits(rows, rows.iloc[:0], rows.iloc[:0]))
        at = {name: rows.index.get_indexer(part.index) for name, part in parts.items()}
    else:
        features, labels = encoded(splits)
        starts = dict(zip(SPLITS, np.cumsum([0] + [len(splits.parts()[n]) for n in SPLITS])))
        at = {name: np.arange(starts[name], starts[name] + len(part))
              for name, part in parts.items()}
    return features, labels, at
