"""Test figures that tell the truth: per-class figures beside a majority baseline.

On the real data 84% of pairs are NoEntailment, so accuracy alone flatters a
model that always answers NoEntailment. Every evaluation therefore reports
macro-F1, per-class precision/recall/F1 and the confusion matrix, and the same
figures for the majority-class baseline (the training split's most frequent
label) side by side.

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
