"""Test figures that tell the truth: per-class figures beside a majority baseline.

On the real data 84% of pairs are NoEntailment, so accuracy alone flatters a
model that always answers NoEntailment. Every evaluation therefore reports
macro-F1, per-class precision/recall/F1 and the confusion matrix, and the same
figures for the majority-class baseline (the training split's most frequent
label) side by side.

Every `metrics.json` also carries a 95% bootstrap interval of macro-F1 and of
each class's F1 (:mod:`mmentail.evaluation.bootstrap`): on a test split of a
few hundred pairs the figures move by several points with the draw of pairs.

Example:
    >>> figures = classification_figures([0, 1, 2, 2], [0, 2, 2, 2])
    >>> figures["accuracy"], figures["confusion_matrix"][1]
    (0.75, [0, 0, 1])
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from mmentail.evaluation.bootstrap import f1_intervals
from mmentail.schema import LABELS


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
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

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


def test_figures(labels: np.ndarray, probabilities: np.ndarray, train_labels: np.ndarray,
                 *, seed: int = 0, predicted: np.ndarray | None = None) -> dict[str, Any]:
    """What `metrics.json` holds: the figures of the predicted labels, their bootstrap
    intervals (`bootstrap`) and the majority baseline.

    Args:
        labels: true test label indices.
        probabilities: predicted class probabilities, [pairs, classes], in `labels` order.
        train_labels: training label indices, for the majority baseline.
        seed: seed of the bootstrap resamples.
        predicted: the predicted label indices (a decision rule's); default: the most
            probable labels.
    """
    if predicted is None:
        predicted = np.argmax(probabilities, axis=-1)
    return {**classification_figures(labels, predicted),
            "bootstrap": f1_intervals(labels, predicted, seed=seed),
            "majority_baseline": majority_baseline(train_labels, labels)}


def predict_probabilities(model: tf_keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
    """Class probabilities of `model` for every example of `dataset`, in its order."""
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)


def evaluate(model: tf_keras.Model, dataset: tf.data.Dataset, labels: np.ndarray,
             train_labels: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """A model's test figures (see :func:`test_figures`).

    Args:
        model: maps the dataset's features to class probabilities.
        dataset: unshuffled test batches (features, label) in `labels` order.
        labels: true test label indices.
        train_labels: training label indices, for the majority baseline.
        seed: seed of the bootstrap resamples.
    """
    return test_figures(labels, predict_probabilities(model, dataset), train_labels, seed=seed)


def interval_text(interval: Sequence[float] | None) -> str:
    """` [0.52, 0.70]`, or nothing for figures written before intervals were."""
    return f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""


def summary(metrics: dict[str, Any]) -> str:
    """The console summary: the model's figures, with their 95% bootstrap intervals,
    beside the majority baseline's."""
    baseline = metrics["majority_baseline"]
    intervals = metrics.get("bootstrap", {})
    lines = [f"test accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}"
             f"{interval_text(intervals.get('macro_f1'))}"
             f"   majority baseline ({baseline['label']}): accuracy "
             f"{baseline['accuracy']:.3f}  macro-F1 {baseline['macro_f1']:.3f}",
             f"{'':<14} {'model':^25}   {'majority':^25}",
             f"{'':<14} {'precision  recall     f1':>25}   {'precision  recall     f1':>25}"]
    for name in LABELS:
        cells = ["{precision:>9.3f} {recall:>7.3f} {f1:>6.3f}".format(**m["per_class"][name])
                 for m in (metrics, baseline)]
        interval = intervals.get("per_class_f1", {}).get(name)
        lines.append(f"{name:<14} {cells[0]:>25}   {cells[1]:>25}   "
                     f"support {metrics['per_class'][name]['support']}"
                     + (f"   f1{interval_text(interval)}" if interval else ""))
    if intervals:
        lines.append(f"[low, high]: {intervals['confidence']:.0%} bootstrap intervals over "
                     f"{intervals['resamples']} resamples of the test pairs")
    return "\n".join(lines)
