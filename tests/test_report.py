from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import drawn_pixels, png_pixels
from mmentail.errors import MissingFileError
from mmentail.evaluation.calibration import Calibration, calibration_report, reliability_figure
from mmentail.evaluation.metrics import classification_figures, majority_baseline, summary
from mmentail.evaluation.report import (
    PLOTS,
    confusion_figure,
    curves_figure,
    label_indices,
    per_class_figure,
    predictions_frame,
    read_predictions,
    write_predictions,
    write_report,
)
from mmentail.schema import LABELS

# Test figures where no two of the classes' numbers, nor a matrix and its transpose, agree.
METRICS = {**classification_figures([0, 0, 1, 1, 1, 2, 2, 2, 2], [0, 2, 1, 1, 0, 2, 2, 2, 1]),
           "majority_baseline": majority_baseline([2, 2], [0, 0, 1, 1, 1, 2, 2, 2, 2])}
HISTORY = pd.DataFrame({"epoch": [0, 1, 2], "loss": [1.0, 0.5, 0.4],
                        "accuracy": [0.5, 0.7, 0.75], "macro_f1": [0.2, 0.4, 0.45],
                        "val_loss": [1.1, 0.6, 0.7], "val_accuracy": [0.4, 0.6, 0.55],
                        "val_macro_f1": [0.1, 0.3, 0.25]})


def test_report_writes_metrics_and_draws_each_plot_from_them(tmp_path):
    """Each PNG decodes to the pixels of its figure drawn from the run's metrics and
    history (what each figure shows is checked below)."""
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6],
                              [0.05, 0.05, 0.9]]))
    metrics = {**classification_figures([0, 1, 2, 2], [0, 2, 2, 2]),
               "majority_baseline": majority_baseline([2, 2], [0, 1, 2, 2]),
               "calibration": calibration_report(Calibration("temperature", (0.5,) * 3),
                                                 logits, [0, 1, 2, 2])}
    HISTORY.to_csv(tmp_path / "history.csv", index=False)
    write_report(tmp_path, metrics)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    history = pd.read_csv(tmp_path / "history.csv")
    figures = (confusion_figure(metrics), per_class_figure(metrics), curves_figure(history),
               reliability_figure(metrics["calibration"]))
    assert len(figures) == len(PLOTS)
    for name, figure in zip(PLOTS, figures):
        pixels = png_pixels((tmp_path / name).read_bytes())
        width, height = figure.get_size_inches() * 100
        assert pixels.shape == (round(height), round(width), 4), name
        assert len(np.unique(pixels.reshape(-1, 4), axis=0)) > 10, name  # not blank
        np.testing.assert_array_equal(pixels, drawn_pixels(figure), err_msg=name)
    text = summary(metrics)
    assert "macro-F1 0.600   majority baseline (NoEntailment)" in text
    assert "macro-F1 0.222" in text
    assert all(name in text for name in LABELS)


def test_the_confusion_plot_shows_the_matrix_with_true_labels_as_rows():
    matrix = np.asarray(METRICS["confusion_matrix"])
    assert not np.array_equal(matrix, matrix.T)
    ax, = confusion_figure(METRICS).axes
    np.testing.assert_array_equal(ax.images[0].get_array(), matrix)
    # Each cell's count is written at (column, row) = (predicted, true).
    assert {text.get_position(): text.get_text() for text in ax.texts} == {
        (j, i): str(count) for (i, j), count in np.ndenumerate(matrix)}
    assert [label.get_text() for label in ax.get_yticklabels()] == list(LABELS)
    assert [label.get_text() for label in ax.get_xticklabels()] == list(LABELS)
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("true", "predicted")
    assert f"macro-F1 {METRICS['macro_f1']:.3f}" in ax.get_title()


def test_the_per_class_plot_shows_the_models_and_the_majority_baselines_figures():
    figure = per_class_figure(METRICS)
    for ax, key in zip(figure.axes, ("precision", "recall", "f1"), strict=True):
        assert ax.get_title() == key
        model, majority = ax.containers
        for bars, name, figures in ((model, "model", METRICS),
                                    (majority, "majority", METRICS["majority_baseline"])):
            assert bars.get_label() == name
            assert [bar.get_height() for bar in bars] == pytest.approx(
                [figures["per_class"][label][key] for label in LABELS])
            # One bar per label, at the label's tick, the model's left of the baseline's.
            centres = [bar.get_x() + bar.get_width() / 2 for bar in bars]
            assert centres == pytest.approx(np.arange(len(LABELS)) + (
                -0.2 if name == "model" else 0.2))
        assert [label.get_text() for label in ax.get_xticklabels()] == list(LABELS)


def test_the_training_curves_are_the_historys_columns_per_epoch():
    figure = curves_figure(HISTORY)
    for ax, name in zip(figure.axes, ("loss", "accuracy", "macro_f1"), strict=True):
        assert ax.get_title() == name
        train, validation = ax.lines
        for line, column, label in ((train, name, "train"),
                                    (validation, f"val_{name}", "validation")):
            assert line.get_label() == label
            assert list(line.get_xdata()) == [1, 2, 3]  # epochs counted from 1
            assert list(line.get_ydata()) == HISTORY[column].tolist(), column
    # Without validation columns, the training curves alone.
    ax, = curves_figure(HISTORY[["epoch", "loss"]]).axes
    assert [line.get_label() for line in ax.lines] == ["train"]


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
