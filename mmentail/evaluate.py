"""Test-set evaluation that tells the truth: per-class figures beside a majority baseline.

On the real data 84% of pairs are NoEntailment, so accuracy alone flatters a
model that always answers NoEntailment. Every evaluation therefore reports
macro-F1, per-class precision/recall/F1 and the confusion matrix, and the same
figures for the majority-class baseline (the training split's most frequent
label) side by side. A run directory gets `metrics.json` and PNG plots.

Examples:
    mmentail-evaluate runs/demo          # re-evaluate a finished run's export

    >>> figures = classification_figures([0, 1, 2, 2], [0, 2, 2, 2])
    >>> figures["accuracy"], figures["confusion_matrix"][1]
    (0.75, [0, 0, 1])
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras

from mmentail.data import LABELS, read_pairs
from mmentail.io_utils import atomic_write_bytes, atomic_write_json

PLOTS = ("confusion_matrix.png", "per_class.png", "training_curves.png")


def classification_figures(labels: Sequence[int] | np.ndarray,
                           predicted: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        labels: true label indices into :data:`mmentail.data.LABELS`.
        predicted: predicted label indices, same length.

    Returns:
        A JSON-ready dict; `confusion_matrix` rows are true labels and columns
        predicted labels, both in :data:`LABELS` order.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    classes = list(range(len(LABELS)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(np.mean(f1)),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(LABELS)},
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
    }


def majority_baseline(train_labels: Sequence[int] | np.ndarray,
                      test_labels: Sequence[int] | np.ndarray) -> dict[str, Any]:
    """Figures of always predicting the most frequent training label (ties: first in LABELS).

    Example:
        >>> majority_baseline([2, 2, 0], [2, 0, 1])["macro_f1"]  # F1 of NoEntailment / 3
        0.1666...
    """
    majority = int(np.argmax(np.bincount(np.asarray(train_labels), minlength=len(LABELS))))
    figures = classification_figures(test_labels, np.full(len(test_labels), majority))
    return {"label": LABELS[majority], **figures}


def minority_recall(figures: dict[str, Any]) -> float:
    """Mean recall over every class but the most supported one (the imbalance remedies' aim)."""
    support = {name: c["support"] for name, c in figures["per_class"].items()}
    majority = max(support, key=support.get)
    return float(np.mean([c["recall"] for name, c in figures["per_class"].items()
                          if name != majority]))


def evaluate(model: tf_keras.Model, dataset: tf.data.Dataset, labels: np.ndarray,
             train_labels: np.ndarray) -> dict[str, Any]:
    """A model's test figures plus `majority_baseline` (see :func:`classification_figures`).

    Args:
        model: maps the dataset's features to class probabilities.
        dataset: unshuffled test batches (features, label) in `labels` order.
        labels: true test label indices.
        train_labels: training label indices, for the majority baseline.
    """
    predicted = np.argmax(model.predict(dataset, verbose=0), axis=-1)
    return {**classification_figures(labels, predicted),
            "majority_baseline": majority_baseline(train_labels, labels)}


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def write_plots(run_dir: str | Path, metrics: dict[str, Any]) -> list[Path]:
    """Writes the confusion matrix, per-class bars (model vs majority) and training curves.

    Training curves come from the run's `history.csv` and are skipped when it
    is absent. Figures are drawn without pyplot, so the caller's matplotlib
    backend (a notebook's inline one, say) is left alone. Returns the paths written.
    """
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    written = []
    matrix = np.asarray(metrics["confusion_matrix"])
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set(xticks=range(len(LABELS)), yticks=range(len(LABELS)), xticklabels=LABELS,
           yticklabels=LABELS, xlabel="predicted", ylabel="true",
           title=f"test confusion matrix (macro-F1 {metrics['macro_f1']:.3f})")
    ax.tick_params(axis="x", labelrotation=20)
    written.append(run_dir / PLOTS[0])
    atomic_write_bytes(written[-1], _figure_png(fig))

    fig = Figure(figsize=(12, 3.5))
    axes = fig.subplots(1, 3, sharey=True)
    x = np.arange(len(LABELS))
    for ax, key in zip(axes, ("precision", "recall", "f1")):
        for offset, (name, figures) in ((-0.2, ("model", metrics)),
                                        (0.2, ("majority", metrics["majority_baseline"]))):
            ax.bar(x + offset, [figures["per_class"][label][key] for label in LABELS], 0.4,
                   label=name)
        ax.set(xticks=x, xticklabels=LABELS, title=key, ylim=(0, 1.05))
    axes[0].legend(loc="lower left")
    written.append(run_dir / PLOTS[1])
    atomic_write_bytes(written[-1], _figure_png(fig))

    history_csv = run_dir / "history.csv"
    if history_csv.is_file():
        history = pd.read_csv(history_csv)
        names = [n for n in ("loss", "accuracy", "macro_f1") if n in history]
        fig = Figure(figsize=(4 * len(names), 3.5))
        axes = fig.subplots(1, len(names))
        for ax, name in zip(np.atleast_1d(axes), names):
            ax.plot(history["epoch"] + 1, history[name], label="train")
            if f"val_{name}" in history:
                ax.plot(history["epoch"] + 1, history[f"val_{name}"], label="validation")
            ax.set(xlabel="epoch", title=name)
            ax.legend()
        written.append(run_dir / PLOTS[2])
        atomic_write_bytes(written[-1], _figure_png(fig))
        return written


def write_report(run_dir: str | Path, metrics: dict[str, Any]) -> None:
    """`metrics.json` and the plots, in `run_dir`."""
    atomic_write_json(Path(run_dir) / "metrics.json", metrics)
    write_plots(run_dir, metrics)


def summary(metrics: dict[str, Any]) -> str:
    """The console summary: the model's figures beside the majority baseline's."""
    baseline = metrics["majority_baseline"]
    lines = [f"test accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}"
             f"   majority baseline ({baseline['label']}): accuracy "
             f"{baseline['accuracy']:.3f}  macro-F1 {baseline['macro_f1']:.3f}",
             f"{'':<14} {'model':^25}   {'majority':^25}",
             f"{'':<14} {'precision  recall     f1':>25}   {'precision  recall     f1':>25}"]
    for name in LABELS:
        cells = ["{precision:>9.3f} {recall:>7.3f} {f1:>6.3f}".format(**m["per_class"][name])
                 for m in (metrics, baseline)]
        lines.append(f"{name:<14} {cells[0]:>25}   {cells[1]:>25}   "
                     f"support {metrics['per_class'][name]['support']}")
    return "\n".join(lines)


def predict_export(export_dir: str | Path, pairs: pd.DataFrame,
                   batch_size: int = 32) -> np.ndarray:
    """Class probabilities of a serving export for rows from :func:`read_pairs`.

    Images are read only when the rows carry image paths (a text-only run's
    rows do not, and its export ignores the image inputs).
    """
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    columns = {"text_1": pairs["text_1"].to_numpy(), "text_2": pairs["text_2"].to_numpy()}
    for key in ("image_1", "image_2"):
        path_column = f"{key}_path"
        columns[key] = (pairs[path_column].to_numpy() if path_column in pairs
                        else np.full(len(pairs), ""))
    has_images = "image_1_path" in pairs

    def read_images(row):
        if has_images:
            row = {**row, "image_1": tf.io.read_file(row["image_1"]),
                   "image_2": tf.io.read_file(row["image_2"])}
        return row

    dataset = tf.data.Dataset.from_tensor_slices(columns).map(read_images).batch(batch_size)
    return np.concatenate([serve(**batch)["probabilities"].numpy() for batch in dataset])


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """Re-evaluates a finished run from its export, splits and config; rewrites its report.

    Args:
        run_dir: a directory written by `mmentail-train` (config.json,
            splits/, export/, optionally history.csv).
    """
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    image_dir = config.get("image_dir") if config.get("modality", "both") != "text" else None
    train = read_pairs(run_dir / "splits" / "train.csv")
    test = read_pairs(run_dir / "splits" / "test.csv", image_dir)
    probabilities = predict_export(run_dir / "export", test, config.get("batch_size", 32))
    labels = test["label_idx"].to_numpy()
    metrics = {**classification_figures(labels, np.argmax(probabilities, axis=-1)),
               "majority_baseline": majority_baseline(train["label_idx"].to_numpy(), labels)}
    write_report(run_dir, metrics)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmentail-evaluate",
        description="Evaluate a finished run's export on its test split: metrics.json, "
                    "plots and a console summary beside the majority baseline.")
    parser.add_argument("run_dir", help="run directory written by mmentail-train")
    args = parser.parse_args(argv)
    if not (Path(args.run_dir) / "export" / "saved_model.pb").is_file():
        parser.error(f"{args.run_dir} has no export/saved_model.pb: not a finished run")
    metrics = evaluate_run(args.run_dir)
    print(summary(metrics))
    print(f"written: {Path(args.run_dir) / 'metrics.json'} and "
          f"{', '.join(PLOTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
