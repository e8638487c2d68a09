"""A run's test report on disk: `metrics.json`, `predictions.csv` and the PNG plots.

`predictions.csv` holds every test pair's ids, true and predicted label,
calibrated class probabilities and the model's uncalibrated logits: what
cross-validation gathers into its out-of-fold predictions and what
`tools/compare.py` pairs between two runs.

Figures are drawn without pyplot, so the caller's matplotlib backend (a
notebook's inline one, say) is left alone.

Example:
    written = write_report("runs/demo", metrics)
    [path.name for path in written]
    write_predictions("runs/demo", predictions_frame(splits.test, probabilities))
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmentail.errors import MissingFileError
from mmentail.evaluation.calibration import RELIABILITY_PLOT, reliability_figure
from mmentail.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text
from mmentail.schema import LABELS

PLOTS = ("confusion_matrix.png", "per_class.png", "training_curves.png", RELIABILITY_PLOT)
PREDICTIONS = "predictions.csv"
PAIR_KEYS = ("id_1", "id_2")
PROBABILITY_COLUMNS = tuple(f"p_{label}" for label in LABELS)
LOGIT_COLUMNS = tuple(f"logit_{label}" for label in LABELS)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    # The figures lay themselves out ("tight"): one draw, where `bbox_inches` takes two.
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def confusion_figure(metrics: dict[str, Any]):
    """The test confusion matrix, counts in the cells, true labels as rows."""
    from matplotlib.figure import Figure

    matrix = np.asarray(metrics["confusion_matrix"])
    figure = Figure(figsize=(4.5, 4), layout="tight")
    ax = figure.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set(xticks=range(len(LABELS)), yticks=range(len(LABELS)), xticklabels=LABELS,
           yticklabels=LABELS, xlabel="predicted", ylabel="true",
           title=f"test confusion matrix (macro-F1 {metrics['macro_f1']:.3f})")
    ax.tick_params(axis="x", labelrotation=20)
    return figure


def per_class_figure(metrics: dict[str, Any]):
    """Per-class precision, recall and F1 of the model beside the majority baseline's."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.5), layout="tight")
    axes = figure.subplots(1, 3, sharey=True)
    x = np.arange(len(LABELS))
    for ax, key in zip(axes, ("precision", "recall", "f1")):
        for offset, (name, figures) in ((-0.2, ("model", metrics)),
                                        (0.2, ("majority", metrics["majority_baseline"]))):
            ax.bar(x + offset, [figures["per_class"][label][key] for label in LABELS], 0.4,
                   label=name)
        ax.set(xticks=x, xticklabels=LABELS, title=key, ylim=(0, 1.05))
    axes[0].legend(loc="lower left")
    return figure


def curves_figure(history: pd.DataFrame):
    """Loss, accuracy and macro-F1 per epoch, training beside validation."""
    from matplotlib.figure import Figure

    names = [n for n in ("loss", "accuracy", "macro_f1") if n in history]
    figure = Figure(figsize=(4 * len(names), 3.5), layout="tight")
    for ax, name in zip(np.atleast_1d(figure.subplots(1, len(names))), names):
        ax.plot(history["epoch"] + 1, history[name], label="train")
        if f"val_{name}" in history:
            ax.plot(history["epoch"] + 1, history[f"val_{name}"], label="validation")
        ax.set(xlabel="epoch", title=name)
        ax.legend()
    return figure


def write_plots(run_dir: str | Path, metrics: dict[str, Any]) -> list[Path]:
    """Writes the confusion matrix, the per-class bars, when the run has a
    `history.csv` the training curves, and when `metrics` has `calibration` the
    reliability diagrams. Returns the paths written."""
    run_dir = Path(run_dir)
    figures = {PLOTS[0]: confusion_figure(metrics), PLOTS[1]: per_class_figure(metrics)}
    if (run_dir / "history.csv").is_file():
        figures[PLOTS[2]] = curves_figure(pd.read_csv(run_dir / "history.csv"))
    if "calibration" in metrics:
        figures[RELIABILITY_PLOT] = reliability_figure(metrics["calibration"])
    for name, figure in figures.items():
        atomic_write_bytes(run_dir / name, _png(figure))
    return [run_dir / name for name in figures]


def log_test_figures(run_dir: str | Path, metrics: dict[str, Any],
                     confusion_png: bytes | None = None,
                     reliability_png: bytes | None = None) -> Path:
    """The test macro-F1, accuracy and confusion matrix (as an image) for TensorBoard,
    in `<run_dir>/logs/test` beside the training curves, and with `calibration` its
    ECE and NLL before and after and the reliability diagrams; returns that directory.
    `confusion_png`, `reliability_png`: the figures already drawn (:func:`write_plots`),
    else drawn here."""
    import tensorflow as tf

    from mmentail.training.callbacks import LOGS_DIR

    log_dir = Path(run_dir) / LOGS_DIR / "test"
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for name in ("macro_f1", "accuracy"):
            tf.summary.scalar(f"test_{name}", metrics[name], step=0)
        image = tf.io.decode_png(confusion_png or _png(confusion_figure(metrics)), channels=3)
        tf.summary.image("test_confusion_matrix", image[tf.newaxis], step=0)
        calibration = metrics.get("calibration")
        if calibration:
            for when in ("before", "after"):
                for name in ("ece", "classwise_ece", "nll"):
                    tf.summary.scalar(f"test_{name}_{when}_calibration",
                                      calibration[when][name], step=0)
            image = tf.io.decode_png(reliability_png or _png(reliability_figure(calibration)),
                                     channels=3)
            tf.summary.image("test_reliability", image[tf.newaxis], step=0)
    writer.close()
    return log_dir


def write_report(run_dir: str | Path, metrics: dict[str, Any]) -> list[Path]:
    """`metrics.json`, the plots and the TensorBoard test figures, in `run_dir`;
    returns the paths written."""
    atomic_write_json(Path(run_dir) / "metrics.json", metrics)
    plots = write_plots(run_dir, metrics)  # the confusion matrix first
    reliability = [path.read_bytes() for path in plots if path.name == RELIABILITY_PLOT]
    return [Path(run_dir) / "metrics.json", *plots,
            log_test_figures(run_dir, metrics, confusion_png=plots[0].read_bytes(),
                             reliability_png=(reliability or [None])[0])]


def predictions_frame(pairs: pd.DataFrame, probabilities: np.ndarray,
                      predicted: np.ndarray | None = None,
                      logits: np.ndarray | None = None) -> pd.DataFrame:
    """One row per pair: ids, true `label`, `predicted` label, the class probabilities
    and, when given, the uncalibrated logits (`logit_<label>`).

    Args:
        pairs: the evaluated rows (with `id_1`, `id_2`, `label`), in prediction order.
        probabilities: [pairs, classes] in :data:`LABELS` order.
        predicted: label indices (a decision rule's); default: the most probable labels.
        logits: [pairs, classes], the logits the probabilities were calibrated from.
    """
    probabilities = np.asarray(probabilities)
    if predicted is None:
        predicted = probabilities.argmax(axis=-1)
    frame = pd.DataFrame({"id_1": pairs["id_1"].astype(str).to_numpy(),
                          "id_2": pairs["id_2"].astype(str).to_numpy(),
                          "label": pairs["label"].to_numpy(),
                          "predicted": np.asarray(LABELS)[predicted]})
    for i, column in enumerate(PROBABILITY_COLUMNS):
        frame[column] = probabilities[:, i]
    if logits is not None:
        for i, column in enumerate(LOGIT_COLUMNS):
            frame[column] = np.asarray(logits)[:, i]
    return frame


def write_predictions(run_dir: str | Path, predictions: pd.DataFrame,
                      name: str = PREDICTIONS) -> Path:
    """Writes `predictions` (from :func:`predictions_frame`) atomically; returns the path."""
    path = Path(run_dir) / name
    atomic_write_text(path, predictions.to_csv(index=False, float_format="%.6g"))
    return path


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions file written by :func:`write_predictions`, ids read as text.

    Raises:
        MissingFileError: no such file, or not a predictions file.
    """
    try:
        frame = pd.read_csv(path, dtype={"id_1": str, "id_2": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise MissingFileError(f"cannot read predictions {path}: {e}") from None
    missing = [c for c in (*PAIR_KEYS, "label", "predicted", *PROBABILITY_COLUMNS)
               if c not in frame.columns]
    if missing:
        raise MissingFileError(f"{path} is not a predictions file: no {', '.join(missing)}")
    unknown = sorted(set(frame["label"]).union(frame["predicted"]) - set(LABELS), key=str)
    if unknown:
        raise MissingFileError(f"{path}: labels {unknown} are none of {list(LABELS)}")
    return frame


def label_indices(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) label indices of a predictions file's rows."""
    index = {label: i for i, label in enumerate(LABELS)}
    return (predictions["label"].map(index).to_numpy(),
            predictions["predicted"].map(index).to_numpy())
