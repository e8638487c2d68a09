"""Calibration: fitting recovers known maps and the figures follow their one definition.

The export's calibrated probabilities against the Keras model's are tested with its
decision rule (`test_decision.py`), the figures of a run and of a cross-validation in
`test_train.py` and `test_crossval.py`."""

from __future__ import annotations

import numpy as np
import pytest

from mmentail.evaluation.bootstrap import bootstrap_indices
from mmentail.evaluation.calibration import (
    BINS,
    Calibration,
    calibration_figures,
    calibration_report,
    classwise_ece,
    ece,
    fit_calibration,
    nll,
    softmax,
)


def _draws(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from their softmax: calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (count, 3)) + np.array([0.0, 0.0, 1.5])
    labels = (softmax(logits).cumsum(axis=1) < rng.random((count, 1))).sum(axis=1)
    return logits, labels


def _naive_ece(values: np.ndarray, targets: np.ndarray) -> float:
    """The definition, bin by bin: the pair-weighted |mean value - mean target| over bins."""
    total = 0.0
    for b in range(BINS):
        low, high = b / BINS, (b + 1) / BINS
        inside = (values >= low) & ((values < high) if b < BINS - 1 else (values <= high))
        if inside.any():
            total += inside.sum() * abs(values[inside].mean() - targets[inside].mean())
    return total / len(values)


def test_temperature_fitting_recovers_a_known_temperature():
    logits, labels = _draws(20000)
    overconfident = 2.5 * logits
    fitted = fit_calibration("temperature", overconfident, labels)
    assert fitted.temperature == pytest.approx(2.5, rel=0.05)
    assert nll(fitted.apply(overconfident), labels) < nll(softmax(overconfident), labels)
    assert ece(fitted.apply(overconfident), labels) < ece(softmax(overconfident), labels) / 2


def test_vector_scaling_recovers_per_label_scales_and_biases():
    logits, labels = _draws(20000, seed=1)
    scale, bias = np.array([3.0, 1.5, 2.0]), np.array([1.0, -0.5, 0.0])
    fitted = fit_calibration("vector", logits * scale + bias, labels)
    np.testing.assert_allclose(fitted.scale, 1 / scale, rtol=0.05)
    expected_bias = -bias / scale
    np.testing.assert_allclose(fitted.bias, expected_bias - expected_bias.mean(), atol=0.05)
    assert fitted.fitted_on == len(labels) and fitted.method == "vector"


def test_ece_and_classwise_ece_follow_their_definition():
    # Two pairs say 0.95 and one of them is right; two say 0.55 and both are right.
    probabilities = np.array([[0.95, 0.05, 0], [0.95, 0, 0.05], [0.55, 0.45, 0],
                              [0.45, 0.55, 0]])
    assert ece(probabilities, [0, 2, 0, 1]) == pytest.approx((0.9 + 0.9) / 4)
    logits, labels = _draws(500, seed=2)
    probabilities = softmax(1.7 * logits)
    top = probabilities.argmax(axis=1)
    assert ece(probabilities, labels) == pytest.approx(
        _naive_ece(probabilities.max(axis=1), (top == labels).astype(float)))
    assert classwise_ece(probabilities, labels) == pytest.approx(np.mean(
        [_naive_ece(probabilities[:, c], (labels == c).astype(float)) for c in range(3)]))


def test_ece_interval_is_the_bootstrap_of_the_same_resampled_pairs():
    logits, labels = _draws(300, seed=3)
    probabilities = softmax(2 * logits)
    figures = calibration_figures(probabilities, labels, seed=5, resamples=200)
    resampled = [ece(probabilities[rows], labels[rows])
                 for rows in bootstrap_indices(len(labels), 200, seed=5)]
    np.testing.assert_allclose(figures["ece_interval"], np.percentile(resampled, [2.5, 97.5]))
    assert figures["nll"] == pytest.approx(nll(probabilities, labels))
    assert figures["accuracy"] == pytest.approx((probabilities.argmax(1) == labels).mean())


def test_label_ece_reads_the_given_labels_probability():
    """With the argmax as labels the label ECE is the top-label ECE; with other labels it
    bins each given label's probability against whether that label is right."""
    logits, labels = _draws(300, seed=6)
    probabilities = softmax(2 * logits)
    top = probabilities.argmax(axis=1)
    figures = calibration_figures(probabilities, labels, predicted=top, resamples=100)
    assert figures["label_ece"] == pytest.approx(figures["ece"])
    given = np.where(np.arange(len(labels)) % 3 == 0, (top + 1) % 3, top)
    figures = calibration_figures(probabilities, labels, predicted=given, resamples=100)
    picked = probabilities[np.arange(len(labels)), given]
    assert figures["label_ece"] == pytest.approx(
        _naive_ece(picked, (given == labels).astype(float)))
    assert figures["label_ece"] != pytest.approx(figures["ece"])
    low, high = figures["label_ece_interval"]
    assert 0 <= low <= high <= 1
    assert "label_ece" not in calibration_figures(probabilities, labels, resamples=10)


def test_no_calibration_is_the_identity_and_a_map_round_trips_through_json():
    logits, labels = _draws(50, seed=4)
    identity = fit_calibration("none", logits, labels)
    np.testing.assert_allclose(identity.apply(logits), softmax(logits), atol=1e-6)
    report = calibration_report(identity, logits, labels)
    assert report["before"]["ece"] == pytest.approx(report["after"]["ece"], abs=1e-6)
    assert sum(report["after"]["bins"]["count"]) == len(labels)
    fitted = fit_calibration("vector", logits, labels)
    assert Calibration.from_json(fitted.to_json()) == fitted
    with pytest.raises(ValueError, match="no pairs"):
        fit_calibration("temperature", np.zeros((0, 3)), [])
    with pytest.raises(ValueError, match="unknown calibration 'platt'"):
        fit_calibration("platt", logits, labels)
