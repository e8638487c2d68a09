from __future__ import annotations

import numpy as np
import pytest

from mmentail.evaluation.bootstrap import f1_intervals
from mmentail.evaluation.metrics import (
    classification_figures,
    majority_baseline,
    minority_recall,
    summary,
)
from mmentail.evaluation.metrics import test_figures as metrics_of  # not a test to collect
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


def test_test_figures_add_bootstrap_intervals_and_summary_prints_them():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    probabilities = np.eye(3)[[0, 2, 1, 1, 2, 2, 0, 2]] * 0.8 + 0.2 / 3
    metrics = metrics_of(labels, probabilities, np.array([2, 2, 1]), seed=5)
    predicted = probabilities.argmax(axis=1)
    assert {k: v for k, v in metrics.items() if k in KEYS} == classification_figures(
        labels, predicted)
    assert metrics["bootstrap"] == f1_intervals(labels, predicted, seed=5)
    assert metrics["majority_baseline"]["label"] == "NoEntailment"
    low, high = metrics["bootstrap"]["macro_f1"]
    text = summary(metrics)
    assert f"macro-F1 {metrics['macro_f1']:.3f} [{low:.2f}, {high:.2f}]   majority" in text
    implies = metrics["bootstrap"]["per_class_f1"]["Implies"]
    assert f"f1 [{implies[0]:.2f}, {implies[1]:.2f}]" in text
    assert "95% bootstrap intervals over 1000 resamples" in text
