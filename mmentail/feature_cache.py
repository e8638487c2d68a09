"""Train the head on features computed once, when both encoders are frozen.

A frozen BERT and a frozen ResNet50V2 give the same pooled features in every
epoch, so running them every epoch is wasted work: compute the features once,
then train only the head (see :func:`mmentail.model.build_head`) on them. The
head's layers are the full model's, so the full model, encoders included, is
what gets evaluated and exported.

Example:
    >>> features = encode_features(model.get_layer("encoders"), eval_dataset)
    >>> train_ds = feature_dataset(features, labels, batch_size=32, training=True)
    >>> model.get_layer("head").fit(train_ds, epochs=10)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from mmentail.pipeline import shuffle_each_epoch


def encode_features(encoders: tf_keras.Model, dataset: tf.data.Dataset) -> dict[str, np.ndarray]:
    """Runs `encoders` once over an unshuffled (features, label) dataset."""
    return encoders.predict(dataset.map(lambda features, _: features), verbose=0)


def feature_dataset(features: dict[str, np.ndarray], labels: np.ndarray, *, batch_size: int,
                    training: bool, seed: int = 42,
                    shuffle_step: tf.Variable | None = None) -> tf.data.Dataset:
    """(pooled features, one-hot label) batches, reshuffled every epoch when training.

    `shuffle_step`: see :func:`mmentail.pipeline.shuffle_each_epoch`.
    """
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    if training:
        ds = shuffle_each_epoch(ds, len(labels), seed, shuffle_step)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
