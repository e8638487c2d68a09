from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import TINY_IMAGE, TINY_SEQ
from mmentail.data.split import split_pairs
from mmentail.data.tfrecord import main, read_splits, shard_paths, write_tfrecords
from mmentail.pipeline.dataset import make_dataset


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
