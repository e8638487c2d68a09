"""mmentail-predict: a CSV of pairs labelled by an export, bad rows reported by number."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from helpers import write_csv
from mmentail.data.pairs import DataError
from mmentail.evaluation.metrics import classification_figures
from mmentail.schema import COLUMNS, EXPORT_INPUTS, LABELS
from mmentail.serving.loaded import LoadedExport
from mmentail.serving.predict import main, predict_csv

PROBABILITIES = [f"p_{label}" for label in LABELS]


@pytest.fixture(scope="module")
def rows(demo_pairs) -> list[dict]:
    """Six demo pairs as CSV rows (their images are in the demo's image folder)."""
    return demo_pairs[list(COLUMNS)].iloc[:6].to_dict("records")


def _bad_rows(rows: list[dict]) -> list[dict]:
    """Rows 2, 4 and 5 (counting from the first row after the header) are bad."""
    bad = [dict(row) for row in rows]
    bad[1]["text_2"] = " "
    bad[3]["id_1"] = "990000000000000001"  # no image file of that id
    bad[4]["label"] = "Maybe"
    return bad


def test_unlabelled_csv_gives_the_exports_answers(exported, export, demo, demo_pairs, rows,
                                                  tmp_path, capsys, monkeypatch):
    """The command on a CSV without labels: one bad row skipped, the others as the export
    answers them, a progress bar on stderr."""
    monkeypatch.setattr("mmentail.serving.loaded.load_export",
                        lambda path: export)  # loaded once a module
    unlabelled = _bad_rows(rows)[:3]  # row 2 has an empty text
    csv_path = write_csv(tmp_path / "new.csv", unlabelled, [c for c in COLUMNS if c != "label"])
    assert main([str(exported[1]), "--data-csv", str(csv_path), "--image-dir",
                 str(demo.image_dir), "--output", str(tmp_path / "out" / "preds.csv"),
                 "--batch-size", "1", "--skip-bad-rows"]) == 0
    captured = capsys.readouterr()
    assert "labelled 2 of 3 pairs; skipped 1 bad row(s): 2;" in captured.out
    assert "accuracy" not in captured.out
    assert "2/2" in captured.err  # the progress bar
    preds = pd.read_csv(tmp_path / "out" / "preds.csv", dtype={"id_1": str, "id_2": str})
    assert list(preds.columns) == ["id_1", "id_2", "predicted", *PROBABILITIES]
    assert list(preds["id_1"]) == [rows[0]["id_1"], rows[2]["id_1"]]
    pairs = demo_pairs.iloc[[0, 2]]
    expected = export.signature(**{name: tf.constant(
        [open(p, "rb").read() for p in pairs[f"{name}_path"]] if name.startswith("image")
        else list(pairs[name])) for name in EXPORT_INPUTS})
    np.testing.assert_allclose(preds[PROBABILITIES].to_numpy(),
                               expected["probabilities"].numpy(), atol=1e-5)
    assert list(preds["predicted"]) == [label.decode() for label in expected["label"].numpy()]


def test_bad_rows_stop_the_command_listing_their_numbers(exported, demo, rows, tmp_path, capsys):
    csv_path = write_csv(tmp_path / "pairs.csv", _bad_rows(rows))
    output = tmp_path / "preds.csv"
    assert main([str(exported[1]), "--data-csv", str(csv_path), "--image-dir",
                 str(demo.image_dir), "--output", str(output), "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert "3 problem(s)" in error
    for number, problem in ((2, "text_2 is empty"), (4, "image_1 file"),
                            (5, "unknown label 'Maybe'")):
        assert re.search(rf"row {number} \(ids [^)]*\): {re.escape(problem)}", error), error
    assert not output.exists()


def test_skip_bad_rows_skips_and_counts_them(export, demo, rows, tmp_path):
    csv_path = write_csv(tmp_path / "pairs.csv", _bad_rows(rows))
    result = predict_csv(export, csv_path, tmp_path / "preds.csv", image_dir=demo.image_dir,
                         skip_bad_rows=True, progress=False)
    assert (result.rows_read, result.rows_written, result.skipped_rows) == (6, 3, [2, 4, 5])
    assert [p.split(" ")[1] for p in result.problems] == ["2", "4", "5"]
    preds = pd.read_csv(result.output, dtype={"id_1": str})
    assert list(preds["id_1"]) == [rows[i]["id_1"] for i in (0, 2, 5)]
    assert list(preds["label"]) == [rows[i]["label"] for i in (0, 2, 5)]
    assert result.figures["per_class"] and "majority_baseline" in result.figures


def test_rows_the_model_refuses_are_reported_by_number(demo, rows, tmp_path):
    def signature(**inputs):
        texts = inputs["text_1"].numpy().tolist()
        if any(b"refuse" in text for text in texts):
            raise tf.errors.InvalidArgumentError(None, None, "image_2[0]: cannot decode")
        return {"probabilities": tf.fill([len(texts), 3], 1 / 3),
                "label": tf.fill([len(texts)], "NoEntailment")}

    export = LoadedExport(tmp_path, {}, {}, signature)
    refused = [dict(row) for row in rows]
    refused[2]["text_1"] = "refuse this one"
    csv_path = write_csv(tmp_path / "pairs.csv", refused)
    with pytest.raises(DataError, match=r"row 3 \(ids .*\): image_2\[0\]: cannot decode"):
        predict_csv(export, csv_path, tmp_path / "preds.csv", image_dir=demo.image_dir,
                    batch_size=4, progress=False)
    assert not (tmp_path / "preds.csv").exists()
    result = predict_csv(export, csv_path, tmp_path / "preds.csv", image_dir=demo.image_dir,
                         batch_size=4, skip_bad_rows=True, progress=False)
    assert (result.rows_written, result.skipped_rows) == (5, [3])


@pytest.mark.slow
def test_predict_reproduces_the_runs_test_figures(trained_run, tmp_path, capsys):
    test_csv = trained_run.output / "splits" / "test.csv"
    assert main([str(trained_run.export_dir), "--data-csv", str(test_csv),
                 "--image-dir", str(trained_run.config.data.image_dir),
                 "--output", str(tmp_path / "preds.csv")]) == 0
    recorded = json.loads((trained_run.output / "metrics.json").read_text())
    out = capsys.readouterr().out
    assert (f"test accuracy {recorded['accuracy']:.3f}  macro-F1 {recorded['macro_f1']:.3f}"
            in out), out
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert len(preds) == len(pd.read_csv(test_csv))
    figures = classification_figures(preds["label"].map(LABELS.index),
                                     preds["predicted"].map(LABELS.index))
    assert figures["accuracy"] == pytest.approx(recorded["accuracy"])
    assert figures["macro_f1"] == pytest.approx(recorded["macro_f1"])
    assert figures["confusion_matrix"] == recorded["confusion_matrix"]
