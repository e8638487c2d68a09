from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import TINY_IMAGE, TINY_SEQ
from mmentail.evaluate import main

from mmentail.evaluation.metrics import (
    classification_figures,
    evaluate,
    majority_baseline,
    minority_recall,
    summary,
)
from mmentail.evaluation.report import PLOTS, write_report
from mmentail.schema import LABELS

KEYS = {"accuracy", "macro_f1", "per_class", "confusion_matrix"}


def test_figures_per_class_and_confusion_rows_are_true_labels():
    labels = [0, 0, 1, 2, 2, 2]
    predicted = [0, 2, 1, 2, 2, 1]
    figures = classification_figures(labels, predicted)
    assert set(figures) == KEYS
    assert figures["accuracy"] == pytest.approx(4 / 6)
    assert figures["confusion_matrix"] == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    contradictory = figures["per_class"]["Contradictory"]
    assert contradictory == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                             "support": 2}
    assert figures["per_class"]["Implies"]["precision"] == 0.5
    f1s = [figures["per_class"][name]["f1"] for name in LABELS]
    assert figures["macro_f1"] == pytest.approx(np.mean(f1s))


def test_majority_baseline_on_the_real_class_mix_scores_0_30():
    # The demo's (and the real data's) test split: 7 / 7 / 86.
    test = np.array([0] * 7 + [1] * 7 + [2] * 86)
    baseline = majority_baseline(np.array([0] * 60 + [1] * 62 + [2] * 733), test)
    assert baseline["label"] == "NoEntailment"
    assert set(baseline) == KEYS | {"label"}
    assert baseline["accuracy"] == pytest.approx(0.86)
    assert baseline["macro_f1"] == pytest.approx((2 * 0.86 / 1.86) / 3)  # 0.308
    assert baseline["per_class"]["Implies"]["recall"] == 0
    assert minority_recall(baseline) == 0
    # The majority comes from training, not from the test labels.
    assert majority_baseline([1, 1, 0], test)["label"] == "Implies"


def test_minority_recall_is_the_mean_over_the_smaller_classes():
    figures = classification_figures([0, 0, 1, 1, 2, 2, 2], [0, 2, 1, 1, 2, 2, 2])
    assert minority_recall(figures) == pytest.approx((0.5 + 1.0) / 2)


def test_report_writes_metrics_and_three_pngs(tmp_path):
    metrics = {**classification_figures([0, 1, 2, 2], [0, 2, 2, 2]),
               "majority_baseline": majority_baseline([2, 2], [0, 1, 2, 2])}
    pd.DataFrame({"epoch": [0, 1], "loss": [1.0, 0.5], "accuracy": [0.5, 0.7],
                  "macro_f1": [0.2, 0.4], "val_loss": [1.1, 0.6], "val_accuracy": [0.4, 0.6],
                  "val_macro_f1": [0.1, 0.3]}).to_csv(tmp_path / "history.csv", index=False)
    write_report(tmp_path, metrics)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    for name in PLOTS:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    text = summary(metrics)
    assert "macro-F1 0.600   majority baseline (NoEntailment)" in text
    assert "macro-F1 0.222" in text
    assert all(name in text for name in LABELS)


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
    assert (run_dir / "confusion_matrix.png").is_file()


def test_evaluate_cli_rejects_a_directory_without_export(tmp_path):
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
