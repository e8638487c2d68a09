from __future__ import annotations

import numpy as np
import tensorflow as tf

from helpers import TINY_IMAGE, TINY_SEQ
from mmentail.pipeline.dataset import (
    cache_setting,
    make_dataset,
    packed_file_cache,
    tokenize_pairs,
)
from mmentail.pipeline.preprocess import pack_text_pair


def test_tokenize_pairs_matches_pack_text_pair_in_chunks(preprocessor, demo_pairs, monkeypatch):
    monkeypatch.setattr("mmentail.pipeline.dataset._TOKENIZE_BATCH", 7)
    texts_1, texts_2 = list(demo_pairs["text_1"][:20]), list(demo_pairs["text_2"][:20])
    chunked = tokenize_pairs(preprocessor, texts_1, texts_2, TINY_SEQ)
    whole = pack_text_pair(preprocessor, tf.constant(texts_1), tf.constant(texts_2), TINY_SEQ)
    for key, value in whole.items():
        np.testing.assert_array_equal(chunked[key], value.numpy())
    assert tokenize_pairs(preprocessor, [], [], TINY_SEQ)["input_mask"].shape == (0, TINY_SEQ)


def test_dataset_yields_features_and_one_hot_labels(demo_pairs, preprocessor):
    ds = make_dataset(demo_pairs, preprocessor, image_size=(TINY_IMAGE, TINY_IMAGE),
                      seq_length=TINY_SEQ, batch_size=16, training=False)
    features, labels = next(iter(ds))
    assert set(features) == {"input_word_ids", "input_mask", "input_type_ids",
                             "image_1", "image_2"}
    assert features["image_1"].shape == (16, TINY_IMAGE, TINY_IMAGE, 3)
    np.testing.assert_array_equal(np.argmax(labels, -1), demo_pairs["label_idx"][:16])
    # Each side's image is its own file: the two image tensors differ.
    assert not np.allclose(features["image_1"], features["image_2"])
    total = sum(int(batch[1].shape[0]) for batch in ds)
    assert total == len(demo_pairs)


def test_training_order_reshuffles_each_epoch_and_text_modality_reads_no_images(
        demo_pairs, preprocessor):
    rows = demo_pairs.assign(image_1_path="/nonexistent.jpg", image_2_path="/nonexistent.png")
    ds = make_dataset(rows, preprocessor, image_size=(TINY_IMAGE, TINY_IMAGE),
                      seq_length=TINY_SEQ, batch_size=8, training=True, modality="text")
    first = np.concatenate([np.argmax(y, -1) for _, y in ds])
    second = np.concatenate([np.argmax(y, -1) for _, y in ds])
    features, _ = next(iter(ds))
    assert "image_1" not in features
    assert sorted(first) == sorted(demo_pairs["label_idx"])
    ids_1 = np.concatenate([f["input_word_ids"][:, 1] for f, _ in ds])
    ids_2 = np.concatenate([f["input_word_ids"][:, 1] for f, _ in ds])
    assert len(ids_1) == len(ids_2) and not (np.array_equal(first, second)
                                             and np.array_equal(ids_1, ids_2))


def _epochs(dataset, step: tf.Variable, epochs: int = 2) -> list:
    """Every batch of `epochs` training passes, as numpy, the step moved between passes."""
    passes = []
    for _ in range(epochs):
        passes.append([tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in dataset])
        step.assign_add(5)
    return passes


def _assert_same_batches(first: list, second: list) -> None:
    assert len(first) == len(second)
    for pass_1, pass_2 in zip(first, second):
        assert len(pass_1) == len(pass_2)
        for batch_1, batch_2 in zip(pass_1, pass_2):
            tf.nest.map_structure(np.testing.assert_array_equal, batch_1, batch_2)


def _training_dataset(pairs, preprocessor, step, seq_length=TINY_SEQ, **options):
    return make_dataset(pairs, preprocessor, image_size=(TINY_IMAGE, TINY_IMAGE),
                        seq_length=seq_length, batch_size=8, training=True, shuffle_step=step,
                        **options)


def _graph_bytes(dataset) -> int:
    return len(dataset._as_serialized_graph().numpy())


def test_a_split_too_large_for_token_constants_is_tokenized_in_the_graph(
        demo_pairs, preprocessor, monkeypatch):
    step = tf.Variable(3, dtype=tf.int64)
    as_constants = _epochs(_training_dataset(demo_pairs, preprocessor, step), step)
    growth = {}
    for limit in (None, 0):
        if limit is not None:
            monkeypatch.setattr("mmentail.pipeline.dataset.MAX_TOKEN_CONSTANT_BYTES", limit)
        sizes = [_graph_bytes(_training_dataset(demo_pairs.iloc[:rows], preprocessor, step,
                                                seq_length=64)) for rows in (20, 80)]
        growth[limit] = sizes[1] - sizes[0]
    step.assign(3)
    in_graph = _epochs(_training_dataset(demo_pairs, preprocessor, step), step)
    # The same tokens in the same order, whichever way they were made ...
    _assert_same_batches(as_constants, in_graph)
    # ... but the graph grows by the texts, not by 3 x 64 int32 tokens, per pair.
    assert growth[0] < growth[None] / 2, growth


def test_tf_data_service_workers_feed_the_same_batches(demo_pairs, preprocessor):
    """Workers read, decode and tokenize; the cache, the step-keyed shuffle and the
    batching stay here, so training sees exactly the local pipeline's batches."""
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer()
    worker = service.WorkerServer(service.WorkerConfig(
        dispatcher_address=dispatcher.target.split("://")[1]))
    step = tf.Variable(0, dtype=tf.int64)
    local = _epochs(_training_dataset(demo_pairs, preprocessor, step, cache=False), step)
    step.assign(0)
    remote_dataset = _training_dataset(demo_pairs, preprocessor, step, cache=False,
                                       data_service=dispatcher.target)
    assert "DataServiceDataset" in str(remote_dataset._as_serialized_graph().numpy())
    remote = _epochs(remote_dataset, step)
    _assert_same_batches(local, remote)
    worker.stop()
    dispatcher.stop()


def test_file_cache_is_written_and_named_by_the_data(demo_pairs, preprocessor, tmp_path):
    rows = demo_pairs.iloc[:12]
    assert cache_setting("memory", rows, "train") is True
    assert cache_setting("none", rows, "train") is False
    path = cache_setting(str(tmp_path), rows, "train", image_size=(TINY_IMAGE, TINY_IMAGE))
    assert path != cache_setting(str(tmp_path), rows, "train", image_size=(16, 16))
    assert path != cache_setting(str(tmp_path), demo_pairs.iloc[:11], "train",
                                 image_size=(TINY_IMAGE, TINY_IMAGE))
    common = dict(image_size=(TINY_IMAGE, TINY_IMAGE), seq_length=TINY_SEQ, batch_size=4,
                  training=False)
    first = list(make_dataset(rows, preprocessor, cache=path, **common))
    assert list(tmp_path.glob("train-*.index"))
    # Read back from the file cache: same batches even with the image files gone.
    moved = rows.assign(image_1_path="/nonexistent.jpg", image_2_path="/nonexistent.png")
    again = list(make_dataset(moved, preprocessor, cache=path, **common))
    uncached = list(make_dataset(rows, preprocessor, cache=False, **common))
    for (x, y), (x2, y2), (x3, y3) in zip(first, again, uncached):
        np.testing.assert_array_equal(y, y2)
        np.testing.assert_array_equal(y, y3)
        for key in x3:
            np.testing.assert_array_equal(x[key], x2[key])
            np.testing.assert_array_equal(x[key], x3[key])


def test_the_file_cache_stores_one_tensor_an_element_and_reads_back_every_part(tmp_path):
    rows = {"label": np.arange(5, dtype=np.int64),
            "input_word_ids": np.arange(15, dtype=np.int32).reshape(5, 3),
            "image_1": np.random.default_rng(0).random((5, 2, 2, 3), np.float32),
            "raw": np.arange(10, dtype=np.uint8).reshape(5, 2)}
    source = tf.data.Dataset.from_tensor_slices(rows)
    cached = packed_file_cache(source, str(tmp_path / "packed"))
    assert cached.element_spec == source.element_spec
    for _ in range(2):  # written, then read back from the file
        read = list(cached.as_numpy_iterator())
        assert len(read) == 5
        for i, element in enumerate(read):
            for key, column in rows.items():
                np.testing.assert_array_equal(element[key], column[i])
    # One index entry a pair, where the plain file cache keeps one per tensor.
    assert len(tf.train.list_variables(str(tmp_path / "packed"))) == 5
    strings = tf.data.Dataset.from_tensor_slices({"text": ["a", "b"]})
    assert list(packed_file_cache(strings, str(tmp_path / "text")).as_numpy_iterator()) == [
        {"text": b"a"}, {"text": b"b"}]


def test_a_single_pass_runs_without_the_autotuning_thread():
    """Its iterator's end would wait for that thread's next wake-up (seconds, after a
    long pass); the elements and their order stay the same."""
    from mmentail.pipeline.dataset import single_pass

    dataset = tf.data.Dataset.range(100).map(lambda x: x * 2, num_parallel_calls=tf.data.AUTOTUNE)
    once = single_pass(dataset.prefetch(tf.data.AUTOTUNE))
    assert dataset.options().autotune.enabled is not False
    assert once.options().autotune.enabled is False
    assert [int(x) for x in once] == list(range(0, 200, 2))
