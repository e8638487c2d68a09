from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mmentail.errors import MissingFileError
from mmentail.evaluation.metrics import classification_figures, majority_baseline, summary
from mmentail.evaluation.report import (
    PLOTS,
    label_indices,
    predictions_frame,
    read_predictions,
    write_predictions,
    write_report,
)
from mmentail.schema import LABELS


def test_report_writes_metrics_and_its_pngs(tmp_path):
    from mmentail.evaluation.calibration import Calibration, calibration_report

    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6],
                              [0.05, 0.05, 0.9]]))
    metrics = {**classification_figures([0, 1, 2, 2], [0, 2, 2, 2]),
               "majority_baseline": majority_baseline([2, 2], [0, 1, 2, 2]),
               "calibration": calibration_report(Calibration("temperature", (0.5,) * 3),
                                                 logits, [0, 1, 2, 2])}
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


def test_write_plots_returns_what_it_wrote_with_or_without_history(tmp_path):
    from mmentail.evaluation.report import write_plots

    metrics = {**classification_figures([0, 1, 2], [0, 1, 2]),
               "majority_baseline": majority_baseline([2], [0, 1, 2])}
    written = write_plots(tmp_path, metrics)  # no history.csv: no training curves
    assert written == [tmp_path / PLOTS[0], tmp_path / PLOTS[1]]
    assert all(path.is_file() for path in written)
    assert not (tmp_path / PLOTS[2]).exists()
    assert write_report(tmp_path, metrics) == [tmp_path / "metrics.json", *written,
                                                tmp_path / "logs" / "test"]
    assert list((tmp_path / "logs" / "test").glob("events.out.tfevents.*"))


def test_predictions_file_round_trips_with_text_ids(tmp_path):
    pairs = pd.DataFrame({"id_1": ["007", "8"], "id_2": ["1", "2"], "text_1": ["a", "b"],
                          "label": ["Implies", "NoEntailment"]})
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    path = write_predictions(tmp_path, predictions_frame(pairs, probabilities))
    assert path == tmp_path / "predictions.csv"
    read = read_predictions(path)
    assert list(read.columns) == ["id_1", "id_2", "label", "predicted", "p_Contradictory",
                                  "p_Implies", "p_NoEntailment"]
    assert read["id_1"].tolist() == ["007", "8"]  # ids stay text
    assert read["predicted"].tolist() == ["Implies", "Contradictory"]
    assert read[["p_Contradictory", "p_Implies", "p_NoEntailment"]].to_numpy() == (
        pytest.approx(probabilities))
    labels, predicted = label_indices(read)
    assert labels.tolist() == [1, 2] and predicted.tolist() == [1, 0]
    (tmp_path / "other.csv").write_text("id_1,label\n1,Implies\n")
    with pytest.raises(MissingFileError, match="not a predictions file: no id_2"):
        read_predictions(tmp_path / "other.csv")
    with pytest.raises(MissingFileError, match="cannot read predictions"):
        read_predictions(tmp_path / "missing.csv")
