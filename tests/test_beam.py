"""The Apache Beam pipelines (DirectRunner only): labelling a CSV as the in-process
`mmentail-predict` labels it, bad rows in a dead letter, and the same TFRecord shards."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import encode_image, load_tool, write_csv
from mmentail.beam_options import pipeline_options
from mmentail.data.tfrecord import shard_paths, write_tfrecords
from mmentail.evaluation.report import PROBABILITY_COLUMNS
from mmentail.schema import COLUMNS, SPLITS
from mmentail.serving.beam_predict import read_dead_letter_shards, read_prediction_shards
from mmentail.serving.predict import main, predict_csv

MULTI_PROCESS = ["--runner", "DirectRunner", "--direct_num_workers", "2",
                 "--direct_running_mode", "multi_processing"]
REFUSED_ID = "990000000000000077"


def _refused_png() -> bytes:
    """A PNG whose header passes the checks but whose pixel data the export cannot decode."""
    data = bytearray(encode_image((200, 10, 10), fmt="PNG"))
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8:start - 4], "big")
    data[start:start + length] = bytes(length)  # not zlib data
    return bytes(data)


def _without_dataset_numbers(message: str) -> str:
    """A refusal's message without the number tf.data gives the dataset in each process
    (`ParallelMapDatasetV2:22`)."""
    return re.sub(r"(Dataset\w*):\d+", r"\1", message)


@pytest.fixture(scope="module")
def pairs_with_bad_rows(demo_pairs, tmp_path_factory) -> tuple[Path, Path]:
    """12 good demo pairs, then five bad rows: an empty text (13), a missing image (14),
    an unknown label (15), a duplicate of row 1 (16) and an image the export refuses (17).
    Returns (the CSV, its image folder)."""
    folder = tmp_path_factory.mktemp("beam_pairs")
    images = folder / "images"
    images.mkdir()
    used = demo_pairs.iloc[:16]
    for path in (*used["image_1_path"], *used["image_2_path"]):
        shutil.copy(path, images)
    rows = used[list(COLUMNS)].to_dict("records")
    good, bad = rows[:12], rows[12:]
    bad[0]["text_2"] = " "
    bad[1]["id_1"] = "990000000000000001"  # no image file of that id
    bad[2]["label"] = "Maybe"
    bad[3]["id_1"], bad[3]["image_1"] = REFUSED_ID, "https://example.com/refused.png"
    (images / f"{REFUSED_ID}.png").write_bytes(_refused_png())
    csv_path = write_csv(folder / "pairs.csv", [*good, *bad[:3], good[0], bad[3]])
    return csv_path, images


@pytest.fixture(scope="module")
def in_process(exported, pairs_with_bad_rows, tmp_path_factory):
    csv_path, images = pairs_with_bad_rows
    return predict_csv(exported[1], csv_path, tmp_path_factory.mktemp("in_process") / "preds.csv",
                       image_dir=images, skip_bad_rows=True, progress=False)


@pytest.fixture(scope="module")
def beam_run(exported, pairs_with_bad_rows, tmp_path_factory) -> tuple[Path, str]:
    """`mmentail-predict --runner DirectRunner` with two worker processes: (output, stdout)."""
    csv_path, images = pairs_with_bad_rows
    output = tmp_path_factory.mktemp("beam") / "preds"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([str(exported[1]), "--data-csv", str(csv_path), "--image-dir", str(images),
                     "--output", str(output), "--batch-size", "4", *MULTI_PROCESS]) == 0
    return output, printed.getvalue()


@pytest.mark.slow
def test_beam_labels_as_the_in_process_command(beam_run, in_process):
    output, _ = beam_run
    expected = pd.read_csv(in_process.output, dtype={"id_1": str, "id_2": str})
    got = read_prediction_shards(output)
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected) == 12
    merged = expected.merge(got, on=["id_1", "id_2"], suffixes=("", "_beam"), validate="1:1")
    assert len(merged) == 12
    assert list(merged["predicted"]) == list(merged["predicted_beam"])
    assert list(merged["label"]) == list(merged["label_beam"])
    np.testing.assert_allclose(merged[[f"{c}_beam" for c in PROBABILITY_COLUMNS]].to_numpy(),
                               merged[list(PROBABILITY_COLUMNS)].to_numpy(), atol=1e-5)


@pytest.mark.slow
def test_bad_rows_go_to_the_dead_letter_and_the_counts_add_up(beam_run, in_process):
    output, printed = beam_run
    dead = read_dead_letter_shards(output)
    assert sorted(dead["row"].unique()) == [13, 14, 15, 16, 17]
    assert (sorted(map(_without_dataset_numbers, dead["problem"]))
            == sorted(map(_without_dataset_numbers, in_process.problems)))  # the same messages
    assert any(f"ids {REFUSED_ID}/" in p and "Invalid PNG data" in p for p in dead["problem"])
    assert "rows read 17 = labelled 12 + dead-lettered 5" in printed
    assert "test accuracy" in printed  # the CSV has labels: the figures


@pytest.mark.slow
def test_parquet_predictions_match_the_csv_ones(exported, pairs_with_bad_rows, beam_run,
                                                tmp_path):
    """In one process this time, on the good rows alone: Parquet holds what the CSV shards
    hold, and the dead letter is empty."""
    from mmentail.serving.beam_predict import predict_csv_beam

    csv_path, images = pairs_with_bad_rows
    good = write_csv(tmp_path / "good.csv",
                     pd.read_csv(csv_path, dtype=str, keep_default_na=False).head(12)
                     .to_dict("records"))
    result = predict_csv_beam(exported[1], good, tmp_path / "preds",
                              pipeline_options("DirectRunner"), image_dir=images,
                              output_format="parquet")
    assert (result.rows_read, result.rows_labelled, result.rows_dead_lettered) == (12, 12, 0)
    assert read_dead_letter_shards(tmp_path / "preds").empty
    got = read_prediction_shards(tmp_path / "preds", "parquet").sort_values(["id_1", "id_2"])
    expected = read_prediction_shards(beam_run[0]).sort_values(["id_1", "id_2"])
    assert list(got.columns) == list(expected.columns)
    assert list(got["predicted"]) == list(expected["predicted"])
    np.testing.assert_allclose(got[list(PROBABILITY_COLUMNS)].to_numpy(),
                               expected[list(PROBABILITY_COLUMNS)].to_numpy(), atol=1e-5)


@pytest.mark.slow
def test_beam_writes_the_same_shards(demo, tmp_path):
    write_tfrecords(demo.csv_path, demo.image_dir, tmp_path / "local", num_shards=3)
    write_tfrecords(demo.csv_path, demo.image_dir, tmp_path / "beam", num_shards=3,
                    pipeline_options=pipeline_options("DirectRunner"))
    for split in SPLITS:
        for local, beam in zip(shard_paths(tmp_path / "local", split, 3),
                               shard_paths(tmp_path / "beam", split, 3)):
            assert Path(local).read_bytes() == Path(beam).read_bytes(), beam
    assert (sorted(p.name for p in (tmp_path / "beam").iterdir())
            == sorted(p.name for p in (tmp_path / "local").iterdir()))


def test_beam_options_need_a_runner(exported, demo, capsys):
    with pytest.raises(SystemExit):
        main([str(exported[1]), "--data-csv", str(demo.csv_path), "--output", "preds.csv",
              "--direct_num_workers", "2"])
    assert "Beam pipeline options need --runner" in capsys.readouterr().err


def test_the_benchmark_tool_parses_and_compares_the_two_paths_pair_by_pair(tmp_path):
    """tools/beam_benchmark.py imports (its helpers from tools/benchmark.py) and its
    agreement check finds a differing label and the largest probability difference."""
    tool = load_tool("beam_benchmark")
    args = tool.build_parser().parse_args(["--rows", "8", "--workers", "2"])
    assert args.workers == 2 and args.source_size == (1200, 675)
    frame = pd.DataFrame({"id_1": ["1", "2", "3"], "id_2": ["4", "5", "6"],
                          "predicted": ["Implies", "NoEntailment", "Contradictory"],
                          **{c: [0.2, 0.3, 0.5] for c in PROBABILITY_COLUMNS}})
    frame.to_csv(tmp_path / "preds.csv", index=False)
    beam = frame.iloc[::-1].copy()
    beam.loc[beam["id_1"] == "2", "predicted"] = "Implies"
    beam.loc[beam["id_1"] == "3", PROBABILITY_COLUMNS[0]] += 0.25
    (tmp_path / "preds").mkdir()
    beam.to_csv(tmp_path / "preds" / "predictions-00000-of-00001.csv", index=False)
    assert tool.agreement(tmp_path / "preds.csv", tmp_path / "preds") == {
        "pairs_in_process": 3, "pairs_beam": 3, "pairs_joined": 3, "labels_differing": 1,
        "max_probability_difference": pytest.approx(0.25)}
