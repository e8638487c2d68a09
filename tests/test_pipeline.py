from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers import TINY_IMAGE, TINY_SEQ, encode_image, random_image_bytes

from mmentail.pipeline.dataset import make_dataset, tokenize_pairs
from mmentail.pipeline.preprocess import decode_image, pack_text_pair
from mmentail.pipeline.shuffle import shuffle_each_epoch


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP"])
def test_decodes_every_format_to_rgb_of_the_requested_size(fmt):
    image = decode_image(tf.constant(encode_image((200, 30, 10), (50, 20), fmt)), (16, 24))
    assert image.shape == (16, 24, 3) and image.dtype == tf.float32
    red, green, blue = np.mean(image.numpy(), axis=(0, 1))
    assert red > 150 and green < 80 and blue < 80


def test_grayscale_and_alpha_become_rgb():
    gray = decode_image(tf.constant(encode_image(128, (8, 8), "PNG", mode="L")), (4, 4))
    rgba = decode_image(tf.constant(encode_image((0, 0, 255, 100), (8, 8), "PNG",
                                                 mode="RGBA")), (4, 4))
    assert gray.shape == rgba.shape == (4, 4, 3)
    np.testing.assert_allclose(gray.numpy(), 128, atol=1)
    assert rgba.numpy()[..., 2].mean() > 250


def test_non_image_bytes_name_their_source():
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a JPEG.*photo_7.jpg"):
        decode_image(tf.constant(b"%PDF-1.4 not an image"), (8, 8), "photo_7.jpg")


@pytest.mark.parametrize("size", [(400, 240), (41, 37)])
def test_large_jpegs_decode_at_a_reduced_scale_close_to_a_full_decode(size):
    # 400x240 -> 32x32 decodes at 1/4 scale (100x60); 41x37 only fits 1/1.
    data = random_image_bytes(7, size=size)
    scaled = decode_image(tf.constant(data), (32, 32)).numpy()
    full = tf.image.resize(tf.io.decode_jpeg(data, channels=3), (32, 32)).numpy()
    assert scaled.shape == (32, 32, 3)
    if size == (41, 37):
        np.testing.assert_array_equal(scaled, full)
    else:
        # Scaled decoding averages pixels first: same picture, less aliasing.
        assert abs(scaled.mean() - full.mean()) < 2 and scaled.std() < full.std()


def test_tokenize_pairs_matches_pack_text_pair_in_chunks(preprocessor, demo_pairs, monkeypatch):
    monkeypatch.setattr("mmentail.pipeline._TOKENIZE_BATCH", 7)
    texts_1, texts_2 = list(demo_pairs["text_1"][:20]), list(demo_pairs["text_2"][:20])
    chunked = tokenize_pairs(preprocessor, texts_1, texts_2, TINY_SEQ)
    whole = pack_text_pair(preprocessor, tf.constant(texts_1), tf.constant(texts_2), TINY_SEQ)
    for key, value in whole.items():
        np.testing.assert_array_equal(chunked[key], value.numpy())
    assert tokenize_pairs(preprocessor, [], [], TINY_SEQ)["input_mask"].shape == (0, TINY_SEQ)


def test_text_pair_is_packed_as_two_segments(preprocessor):
    packed = pack_text_pair(preprocessor, tf.constant(["the flood"]),
                            tf.constant(["the election count"]), TINY_SEQ)
    type_ids = packed["input_type_ids"].numpy()[0]
    mask = packed["input_mask"].numpy()[0]
    assert packed["input_word_ids"].shape == (1, TINY_SEQ)
    assert type_ids[0] == 0 and type_ids.max() == 1 and (type_ids <= mask).all()


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


def test_epoch_order_follows_the_step_counter_not_the_pass_count():
    def orders(step, values):
        ds = shuffle_each_epoch(tf.data.Dataset.range(32), 32, seed=7, step=step)
        assert ds.cardinality() == 32
        result = []
        for value in values:
            step.assign(value)
            result.append(list(ds.as_numpy_iterator()))
        return result

    first, second, again = orders(tf.Variable(0, dtype=tf.int64), [0, 10, 10])
    assert sorted(first) == list(range(32)) and first != second and second == again
    # A fresh pipeline (a resumed process) whose counter is restored to 10
    # starts where the uninterrupted one was.
    assert orders(tf.Variable(0, dtype=tf.int64), [10]) == [second]


def _signatures(dataset) -> list[tuple]:
    """One sortable summary per example: label, word ids and the first image's pixel sum."""
    return sorted((int(np.argmax(y)), tuple(x["input_word_ids"].numpy()),
                   round(float(np.sum(x["image_1"])))) for x, y in dataset.unbatch())


def test_tf_data_service_runs_the_pipeline_remotely(demo_pairs, preprocessor):
    """The docs/scaling.md recipe: the service's workers yield every example once."""
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer()
    worker = service.WorkerServer(service.WorkerConfig(
        dispatcher_address=dispatcher.target.split("://")[1]))
    ds = make_dataset(demo_pairs.iloc[:20], preprocessor, image_size=(TINY_IMAGE, TINY_IMAGE),
                      seq_length=TINY_SEQ, batch_size=8, training=True, cache=False)
    remote = ds.apply(service.distribute(processing_mode="distributed_epoch",
                                         service=dispatcher.target))
    assert _signatures(remote) == _signatures(ds)
    worker.stop()
    dispatcher.stop()


def test_file_cache_is_written_and_named_by_the_data(demo_pairs, preprocessor, tmp_path):
    from mmentail.pipeline.dataset import cache_setting

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
    for (x, y), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(y, y2)
        np.testing.assert_array_equal(x["image_2"], x2["image_2"])
