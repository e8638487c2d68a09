"""The keras.io "Multimodal entailment" recipe's input pipeline, re-implemented for
`tools/benchmark.py`, which times it against mmentail's.

The TF Hub version of the keras.io example: every example is mapped on its
own, without parallel calls, through a Keras model wrapping the
preprocessor's `tokenize` and `bert_pack_inputs`; images are decoded and
resized one at a time; decoded images and tokens are cached; `model.fit` then
runs the frozen encoders forward again in every epoch.

Example:
    text_model = keras_io_text_model(config.model.preprocess_handle, seq_length=128)
    train_ds = keras_io_dataset(train_df, text_model, image_size=(128, 128),
                                batch_size=32, training=True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from mmentail.schema import BERT_INPUT_KEYS, LABELS


def keras_io_text_model(preprocess_handle: str, seq_length: int) -> tf_keras.Model:
    """The recipe's text preprocessing: a Keras model over the hub module's two functions."""
    module = hub.load(preprocess_handle)
    texts = [tf_keras.Input((), dtype=tf.string, name=name) for name in ("text_1", "text_2")]
    tokenize = hub.KerasLayer(module.tokenize, name="tokenizer")
    pack = hub.KerasLayer(module.bert_pack_inputs, arguments={"seq_length": seq_length},
                          name="packer")
    return tf_keras.Model(texts, pack([tokenize(text) for text in texts]))


def keras_io_dataset(df: pd.DataFrame, text_model: Any, *, image_size: tuple[int, int],
                     batch_size: int, training: bool) -> tf.data.Dataset:
    """The recipe's input pipeline: shuffle, per-example map, cache, batch, prefetch.

    Args:
        df: rows from :func:`mmentail.data.pairs.read_pairs` (with image paths).
        text_model: from :func:`keras_io_text_model`.
        image_size: (height, width) the images are resized to.
        batch_size: examples per batch.
        training: shuffle once more, as the recipe's training split is.
    """
    def read_image(path):
        data = tf.io.read_file(path)
        is_jpeg = tf.strings.regex_full_match(tf.strings.lower(path), r".*\.jpe?g")
        image = tf.cond(is_jpeg, lambda: tf.io.decode_jpeg(data, channels=3),
                        lambda: tf.io.decode_png(data, channels=3))
        return tf.image.resize(image, image_size)

    def preprocess(row, label):
        packed = text_model([row["text_1"][tf.newaxis], row["text_2"][tf.newaxis]])
        features = {key: tf.cast(tf.squeeze(packed[key], 0), tf.int32)
                    for key in BERT_INPUT_KEYS}
        features["image_1"] = read_image(row["image_1_path"])
        features["image_2"] = read_image(row["image_2_path"])
        return features, label

    columns = {key: df[key].to_numpy() for key in ("text_1", "text_2", "image_1_path",
                                                   "image_2_path")}
    labels = np.eye(len(LABELS), dtype=np.float32)[df["label_idx"]]
    ds = tf.data.Dataset.from_tensor_slices((columns, labels)).shuffle(len(df))
    if training:
        ds = ds.shuffle(len(df))
    ds = ds.map(preprocess).cache()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
