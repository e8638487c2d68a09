"""`mmentail-evaluate`: a run re-scored through its export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import TINY_IMAGE, TINY_SEQ, drawn_pixels, png_pixels
from mmentail.evaluation.metrics import evaluate
from mmentail.evaluation.report import confusion_figure
from mmentail.evaluation.rerun import main


def test_evaluate_cli_agrees_with_the_keras_model(exported, demo, demo_pairs, preprocessor,
                                                  tmp_path, capsys):
    """mmentail-evaluate scores a run's export; the figures match the in-memory model's."""
    from mmentail.pipeline.dataset import make_dataset

    model, export_dir = exported
    run_dir = tmp_path / "run"
    shutil.copytree(export_dir, run_dir / "export")
    train, test = demo_pairs.iloc[:60], demo_pairs.iloc[60:].reset_index(drop=True)
    columns = ["id_1", "text_1", "image_1", "id_2", "text_2", "image_2", "label"]
    (run_dir / "splits").mkdir()
    train[columns].to_csv(run_dir / "splits" / "train.csv", index=False)
    test[columns].to_csv(run_dir / "splits" / "test.csv", index=False)
    (run_dir / "config.json").write_text(json.dumps(
        {"image_dir": str(demo.image_dir), "modality": "both", "batch_size": 8}))

    assert main([str(run_dir)]) == 0
    assert "majority baseline" in capsys.readouterr().out
    written = json.loads((run_dir / "metrics.json").read_text())
    dataset = make_dataset(test, preprocessor, image_size=(TINY_IMAGE, TINY_IMAGE),
                           seq_length=TINY_SEQ, batch_size=8, training=False)
    expected = evaluate(model, dataset, test["label_idx"].to_numpy(),
                        train["label_idx"].to_numpy())
    assert written["confusion_matrix"] == expected["confusion_matrix"]
    assert written["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert written["majority_baseline"] == expected["majority_baseline"]
    # The plot shows the figures it re-scored.
    np.testing.assert_array_equal(png_pixels((run_dir / "confusion_matrix.png").read_bytes()),
                                  drawn_pixels(confusion_figure(written)))


def test_evaluate_cli_rejects_a_directory_without_export(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert f"mmentail-evaluate: {tmp_path} has no export/saved_model.pb" in captured.err
    assert not captured.out
