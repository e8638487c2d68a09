from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from helpers import TINY_IMAGE, TINY_SEQ
from mmentail.data.split import split_pairs
from mmentail.data.tfrecord import (
    MAX_OPEN_SHARDS,
    main,
    read_records,
    read_splits,
    shard_paths,
    write_split,
    write_tfrecords,
)
from mmentail.pipeline.dataset import make_dataset
from mmentail.pipeline.shuffle import shuffled_files


@pytest.fixture(scope="module")
def shards(demo, tmp_path_factory):
    output = tmp_path_factory.mktemp("tfrecords") / "pairs"
    write_tfrecords(demo.csv_path, demo.image_dir, output, num_shards=3, seed=42)
    return output


def test_shards_hold_the_csv_splits(demo_pairs, shards):
    manifest = json.loads((shards / "manifest.json").read_text())
    splits = read_splits(shards)
    for name, part in zip(("train", "val", "test"), split_pairs(demo_pairs, seed=42)):
        rows, files = splits[name]
        assert files == shard_paths(shards, name, 3)
        assert manifest["splits"][name]["rows"] == len(part) == len(rows)
        assert list(rows["id_1"]) == list(part["id_1"])
        assert list(rows["label_idx"]) == list(part["label_idx"])


def test_tfrecord_dataset_equals_the_csv_dataset(demo_pairs, preprocessor, shards):
    """Same examples in the same order: decoded images, packed texts and labels."""
    _, _, test = split_pairs(demo_pairs, seed=42)
    rows, files = read_splits(shards)["test"]
    common = dict(image_size=(TINY_IMAGE, TINY_IMAGE), seq_length=TINY_SEQ, batch_size=4,
                  training=False)
    from_csv = list(make_dataset(test, preprocessor, **common))
    from_records = list(make_dataset(rows, preprocessor, tfrecord_files=files, **common))
    assert len(from_csv) == len(from_records) > 1
    for (csv_x, csv_y), (rec_x, rec_y) in zip(from_csv, from_records):
        np.testing.assert_array_equal(csv_y, rec_y)
        assert set(csv_x) == set(rec_x)
        for key in csv_x:
            np.testing.assert_array_equal(csv_x[key], rec_x[key], err_msg=key)


def test_cli_writes_and_a_missing_manifest_is_named(demo, tmp_path, capsys):
    assert main(["--data-csv", str(demo.csv_path), "--image-dir", str(demo.image_dir),
                 "--output", str(tmp_path / "out"), "--shards", "2"]) == 0
    assert "train:" in capsys.readouterr().out
    assert len(list((tmp_path / "out").glob("*.tfrecord"))) == 6
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        read_splits(tmp_path)
    with pytest.raises(ValueError, match="num_shards"):
        write_tfrecords(demo.csv_path, demo.image_dir, tmp_path / "x", num_shards=0)


def _open_shards() -> int:
    """How many .tfrecord files this process has open (Linux)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").endswith(".tfrecord")
        except OSError:  # closed meanwhile
            pass
    return count


@pytest.fixture(scope="module")
def many_shards(demo_pairs, tmp_path_factory):
    """The 80 demo rows in 200 shards (most of them empty)."""
    directory = tmp_path_factory.mktemp("many")
    write_split(demo_pairs, directory, "train", 200)
    return shard_paths(directory, "train", 200)


def test_a_training_read_of_200_shards_keeps_a_few_open(demo_pairs, many_shards):
    ids = sorted(demo_pairs["id_1"].str.encode("utf-8"))
    step = tf.Variable(0, dtype=tf.int64)
    bounded = read_records(many_shards, open_shards=MAX_OPEN_SHARDS,
                           file_order=shuffled_files(many_shards, seed=7, step=step))
    if os.path.isdir("/proc/self/fd"):
        # Counted by a thread polling while the whole pass runs: shards of a row or
        # none open and close within the reader's threads, between two of our reads.
        counts, reading = [], threading.Event()

        def poll():
            while reading.is_set():
                counts.append(_open_shards())

        poller = threading.Thread(target=poll)
        reading.set()
        poller.start()
        for _ in bounded:
            pass
        reading.clear()
        poller.join()
        # The shards read, plus the twice as many the parallel reader opens ahead.
        assert 0 < max(counts) <= 3 * MAX_OPEN_SHARDS
    orders = []
    for value in (0, 9):
        step.assign(value)
        orders.append([r["id_1"] for r in bounded.as_numpy_iterator()])
    assert sorted(orders[0]) == sorted(orders[1]) == ids and orders[0] != orders[1]
    # Read in shard order, all at once: the rows in the writer's (the CSV's) order.
    in_order = [r["id_1"] for r in read_records(many_shards).as_numpy_iterator()]
    assert in_order == list(demo_pairs["id_1"].str.encode("utf-8"))


def test_training_on_many_uncached_shards_sees_every_row_once_per_epoch(
        demo_pairs, many_shards):
    step = tf.Variable(0, dtype=tf.int64)
    ds = make_dataset(demo_pairs, None, image_size=(TINY_IMAGE, TINY_IMAGE),
                      seq_length=TINY_SEQ, batch_size=16, training=True, modality="image",
                      cache=False, shuffle_step=step, shuffle_buffer=10,
                      tfrecord_files=many_shards)
    epochs = []
    for value in (0, 5):
        step.assign(value)
        epochs.append(np.concatenate([np.argmax(y, -1) for _, y in ds]))
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(demo_pairs["label_idx"])
    assert not np.array_equal(epochs[0], epochs[1])


@pytest.mark.slow  # a worker in a subprocess
def test_uncached_shards_through_tf_data_service_keep_the_step_keyed_shuffle(
        preprocessor, shards):
    """A worker in another process reads the shards and tokenizes the texts (the TF Text
    ops registered by `import mmentail`); the trainer's shuffle stays keyed on the step."""
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer()
    worker = subprocess.Popen([sys.executable, "-c", (
        "import sys, tensorflow as tf, mmentail; s = tf.data.experimental.service; "
        "s.WorkerServer(s.WorkerConfig(dispatcher_address=sys.argv[1])).join()"),
        dispatcher.target.split("://")[1]])
    try:
        rows, files = read_splits(shards)["train"]
        step = tf.Variable(0, dtype=tf.int64)
        ds = make_dataset(rows, preprocessor, image_size=(TINY_IMAGE, TINY_IMAGE),
                          seq_length=TINY_SEQ, batch_size=16, training=True, cache=False,
                          shuffle_step=step, tfrecord_files=files,
                          data_service=dispatcher.target)
        epochs = []
        for value in (0, 5, 0):
            step.assign(value)
            epochs.append(np.concatenate([x["input_word_ids"][:, 1] * 10 + np.argmax(y, -1)
                                          for x, y in ds]))
    finally:
        worker.kill()
        worker.wait()
        dispatcher.stop()
    assert sorted(epochs[0] % 10) == sorted(rows["label_idx"])  # every row, once
    assert np.array_equal(epochs[0], epochs[2]) and not np.array_equal(epochs[0], epochs[1])
