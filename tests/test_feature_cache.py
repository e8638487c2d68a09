from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tf_keras

from helpers import TINY_IMAGE, TINY_SEQ, random_image_bytes, run_config
from mmentail.config.experiment import ModelConfig
from mmentail.fingerprint import digest, weights_digest
from mmentail.model.encoders import build_encoders, build_image_encoder
from mmentail.pipeline.dataset import make_dataset
from mmentail.train import run
from mmentail.training.feature_cache import cached_features, feature_dataset
from mmentail.training.feature_key import feature_key
from mmentail.training.row_files import RowFile


@pytest.fixture(scope="module")
def model_config(demo):
    return ModelConfig(encoder_handle=str(demo.encoder_dir), image_weights="none",
                       image_backbone="resnet_tiny", image_size=TINY_IMAGE,
                       seq_length=TINY_SEQ, projection_dim=16)


SIZE = (TINY_IMAGE, TINY_IMAGE)


def _rows(demo_pairs):
    return demo_pairs.iloc[:20].reset_index(drop=True)


def test_features_are_stored_reused_and_keyed_by_their_inputs(demo, demo_pairs, preprocessor,
                                                              model_config, tmp_path):
    rows = _rows(demo_pairs)
    encoders = build_encoders(model_config)
    dataset = make_dataset(rows, preprocessor, image_size=SIZE,
                           seq_length=TINY_SEQ, batch_size=8, training=False, cache=False)
    strategy = tf.distribute.get_strategy()
    drawn = weights_digest(encoders.get_layer("image_encoder").weights)
    key = feature_key(rows, model_config, preprocess_handle=str(demo.preprocess_dir),
                      random_image_weights=drawn)
    features, labels = cached_features(encoders, lambda: dataset, strategy=strategy,
                                       directory=tmp_path, key=key)
    expected = encoders.predict(dataset.map(lambda x, _: x), verbose=0)
    assert set(features) == {"text", "image_1", "image_2"}
    for name, values in expected.items():
        np.testing.assert_allclose(features[name], values, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(labels).argmax(-1), rows["label_idx"])
    stored = [p for p in tmp_path.iterdir()]
    assert len(stored) == 1 and json.loads((stored[0] / "key.json").read_text())["key"] == key

    # Same key: read back from disk, no dataset made (so nothing tokenized or encoded).
    def unused():
        raise AssertionError("a dataset was made for features already on disk")

    again, again_labels = cached_features(encoders, unused, strategy=strategy,
                                          directory=tmp_path, key=key)
    np.testing.assert_array_equal(again["text"], features["text"])
    np.testing.assert_array_equal(again_labels, labels)

    # Any input that changes the features changes the key: the cache is not read.
    edited = rows.copy()
    edited.loc[3, "text_1"] = "an edited post"
    image = tmp_path.parent / "touched.jpg"
    image.write_bytes(random_image_bytes(5))
    with_image = rows.assign(image_1_path=[str(image)] + list(rows["image_1_path"][1:]))
    before = feature_key(with_image, model_config, preprocess_handle=str(demo.preprocess_dir),
                         random_image_weights=drawn)
    os.utime(image, ns=(1, 1))
    changed_keys = [
        feature_key(edited, model_config, preprocess_handle=str(demo.preprocess_dir),
                    random_image_weights=drawn),
        feature_key(with_image, model_config, preprocess_handle=str(demo.preprocess_dir),
                    random_image_weights=drawn),
        feature_key(rows, model_config, preprocess_handle=str(demo.encoder_dir),
                    random_image_weights=drawn),
        feature_key(rows, model_config, preprocess_handle=str(demo.preprocess_dir),
                    random_image_weights=weights_digest(  # another draw of the ResNet
                        build_image_encoder(model_config).weights)),
        *(feature_key(rows, dataclasses.replace(model_config, **change),
                      preprocess_handle=str(demo.preprocess_dir), random_image_weights=drawn)
          for change in ({"image_size": 2 * TINY_IMAGE}, {"seq_length": 12},
                         {"text_pooling": "mean"}, {"encoder_handle": "https://x/bert/1"},
                         {"image_weights": "imagenet", "image_backbone": "resnet50v2"},
                         {"image_backbone": "resnet50v2"}, {"modality": "text"})),
    ]
    assert changed_keys[1] != before
    digests = {json.dumps(k, sort_keys=True) for k in changed_keys + [key]}
    assert len(digests) == len(changed_keys) + 1
    with pytest.raises(ValueError, match="encoded 0 rows, expected 20"):
        cached_features(encoders, lambda: dataset.take(0), strategy=strategy,
                        directory=tmp_path, key=changed_keys[0])
    # A new key is encoded and stored beside the first.
    cached_features(encoders, lambda: dataset, strategy=strategy, directory=tmp_path,
                    key=changed_keys[2])
    assert len([p for p in tmp_path.iterdir() if (p / "key.json").is_file()]) == 2


def test_a_dataset_with_other_rows_than_the_key_says_is_refused(demo, demo_pairs, preprocessor,
                                                                model_config, tmp_path):
    rows = _rows(demo_pairs)
    dataset = make_dataset(rows, preprocessor, image_size=SIZE,
                           seq_length=TINY_SEQ, batch_size=8, training=False, cache=False)
    key = feature_key(rows.iloc[:12], model_config, preprocess_handle="p",
                      random_image_weights="d")
    with pytest.raises(ValueError, match="more than the 12 rows"):
        cached_features(build_encoders(model_config), lambda: dataset,
                        strategy=tf.distribute.get_strategy(), directory=tmp_path, key=key)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize("buffer", [4096, 5])
def test_feature_dataset_shuffles_like_the_input_pipeline(demo_pairs, preprocessor, buffer):
    """Same seed, buffer (all rows, or fewer) and step: the cached path sees the same order."""
    rows = _rows(demo_pairs)
    labels = np.eye(3, dtype=np.float32)[rows["label_idx"]]
    features = {"row": np.arange(len(rows), dtype=np.float32)[:, None]}
    step = tf.Variable(0, dtype=tf.int64)
    pipeline = make_dataset(rows.assign(label_idx=np.arange(len(rows)) % 3), preprocessor,
                            image_size=(8, 8), seq_length=TINY_SEQ, batch_size=6,
                            training=True, seed=7, modality="text", shuffle_step=step,
                            shuffle_buffer=buffer)
    cached = feature_dataset(features, labels, batch_size=6, training=True, seed=7,
                             shuffle_step=step, shuffle_buffer=buffer)
    for _ in range(2):  # two epochs: the reshuffles agree too
        step.assign_add(4)
        order = np.concatenate([f["row"][:, 0] for f, _ in cached]).astype(int)
        via_pipeline = np.concatenate([np.argmax(y, -1) for _, y in pipeline])
        np.testing.assert_array_equal(order % 3, via_pipeline)
        assert sorted(order) == list(range(len(rows)))


def _stored(directory, count=50):
    """Features as :func:`cached_features` stores them, and their key."""
    key = {"format": "test", "count": count}
    target = directory / digest(key)
    target.mkdir(parents=True)
    values = np.arange(count * 4, dtype=np.float32).reshape(count, 4)
    np.save(target / "text.npy", values)
    np.save(target / "labels.npy", np.eye(3, dtype=np.float32)[np.arange(count) % 3])
    (target / "key.json").write_text(json.dumps({"key": key, "features": ["text"]}))
    return key, target


def test_feature_training_streams_stored_features(tmp_path):
    key, target = _stored(tmp_path)
    # Found on disk: nothing is encoded (no encoders, no dataset needed).
    features, labels = cached_features(None, None, strategy=tf.distribute.get_strategy(),
                                       directory=tmp_path, key=key)
    assert isinstance(features["text"], RowFile) and isinstance(labels, RowFile)
    step = tf.Variable(3, dtype=tf.int64)
    common = dict(batch_size=8, training=True, seed=1, shuffle_step=step, shuffle_buffer=16)
    streamed = feature_dataset(features, labels, **common)
    in_memory = feature_dataset({"text": np.array(features["text"])}, np.array(labels),
                                **common)
    batches = list(streamed)
    for (x, y), (x2, y2) in zip(batches, in_memory, strict=True):
        np.testing.assert_array_equal(x["text"], x2["text"])
        np.testing.assert_array_equal(y, y2)
    order = np.concatenate([x["text"][:, 0] for x, _ in batches]) / 4
    assert sorted(order) == list(range(50)) and list(order) != list(range(50))

    # The rows are read from the file when a batch is made, not held by the dataset.
    on_disk = np.load(target / "text.npy", mmap_mode="r+")
    on_disk[:] = -on_disk
    on_disk.flush()
    assert all(np.all(x["text"].numpy() <= 0) for x, _ in streamed)

    # A fold's rows are gathered from the files a batch at a time, in the given order.
    at = np.array([7, 3, 41, 0, 19])
    fold = feature_dataset(features, labels, rows=at, batch_size=2, training=False)
    np.testing.assert_array_equal(np.concatenate([x["text"] for x, _ in fold]),
                                  features["text"][at])
    assert fold.cardinality() == 3


@pytest.mark.slow  # three tiny runs
def test_training_on_cached_features_equals_training_end_to_end(demo, tmp_path):
    """Both paths compute the same function on the same batches, so they train alike.

    Same seed: the same split, and the same initial weights (`build_model`
    builds encoders then head in both paths). The feature dataset shuffles all
    rows with the pipeline's seed, so the batches come in the same order (see
    the test above). The frozen encoders run in inference mode (BatchNorm on
    moving statistics, no BERT dropout), so a cached feature is what the
    full model computes in its forward pass. Dropout is 0: its masks come from
    op-seeded random ops whose seeds differ between the head-only and the
    full-model graphs. Both datasets state their length, so Keras runs the same
    steps per epoch (an unknown length once left Adam's state one step apart
    from the second epoch on): two epochs are the fewest that show it.
    """
    results, histories = {}, {}
    for cache in (True, False):
        output = tmp_path / f"cache-{cache}"
        results[cache] = run(run_config(demo, output, feature_cache=cache, dropout=0.0,
                                        epochs=2))
        histories[cache] = pd.read_csv(output / "history.csv")
    stored = sorted((tmp_path / "cache" / "features").iterdir())
    assert len(stored) == 1  # the three splits, encoded in one pass; each takes its rows
    for column in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose(histories[True][column], histories[False][column],
                                   rtol=1e-4, atol=1e-5, err_msg=column)
    assert results[True].metrics["confusion_matrix"] == results[False].metrics[
        "confusion_matrix"]

    # A run in which other code drew random numbers before the model was built
    # (as generating the demo does) gets the same random ResNet, so the stored
    # features are its own: they are reused, and it trains to the same weights.
    tf_keras.utils.set_random_seed(0)
    tf.random.uniform([3]), np.random.rand(3)
    drawn = run(run_config(demo, tmp_path / "drawn", dropout=0.0, epochs=2), export=False)
    assert sorted((tmp_path / "cache" / "features").iterdir()) == stored
    np.testing.assert_allclose(pd.read_csv(tmp_path / "drawn" / "history.csv")["val_loss"],
                               histories[True]["val_loss"], rtol=1e-5)
    for mine, theirs in zip(drawn.model.weights, results[True].model.weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)

    # The exports hold the whole model: raw strings and image bytes in, same answers out.
    image_a = (demo.image_dir / os.listdir(demo.image_dir)[0]).read_bytes()
    image_b = (demo.image_dir / os.listdir(demo.image_dir)[1]).read_bytes()
    inputs = dict(text_1=tf.constant(["the river flood", "the election count"]),
                  image_1=tf.constant([image_a, image_b]),
                  text_2=tf.constant(["flood warning", "votes counted"]),
                  image_2=tf.constant([image_b, image_a]))
    served = {cache: tf.saved_model.load(str(results[cache].export_dir)).signatures[
        "serving_default"](**inputs)["probabilities"].numpy() for cache in results}
    np.testing.assert_allclose(served[True], served[False], rtol=1e-4, atol=1e-5)
