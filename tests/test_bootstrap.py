"""Bootstrap intervals of F1, checked against a plain loop over scikit-learn's f1_score."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from mmentail.evaluation.bootstrap import (
    bootstrap_index_blocks,
    bootstrap_indices,
    f1_intervals,
    percentile_interval,
    resampled_f1,
)
from mmentail.schema import LABELS

# 24 test pairs, mostly NoEntailment, as on the real data.
LABELS_TRUE = np.array([0, 0, 0, 1, 1, 1, 1] + [2] * 17)
PREDICTED = np.array([0, 2, 1, 1, 1, 2, 0] + [2] * 14 + [1, 0, 2])


def _hand_intervals(labels, predicted, resamples, seed):
    """The percentile bootstrap, one resample at a time with f1_score."""
    draws = np.random.default_rng(seed).integers(0, len(labels), size=(resamples, len(labels)))
    per_class = np.array([f1_score(labels[rows], predicted[rows], labels=[0, 1, 2],
                                   average=None, zero_division=0) for rows in draws])
    macro = per_class.mean(axis=1)
    return (np.percentile(macro, [2.5, 97.5]),
            {name: np.percentile(per_class[:, i], [2.5, 97.5])
             for i, name in enumerate(LABELS)})


def test_intervals_match_a_plain_loop_over_f1_score():
    intervals = f1_intervals(LABELS_TRUE, PREDICTED, resamples=100, seed=7)
    macro, per_class = _hand_intervals(LABELS_TRUE, PREDICTED, 100, 7)
    assert intervals["macro_f1"] == pytest.approx(macro)
    for name in LABELS:
        assert intervals["per_class_f1"][name] == pytest.approx(per_class[name])
    assert (intervals["confidence"], intervals["resamples"], intervals["seed"]) == (0.95, 100, 7)
    low, high = intervals["macro_f1"]
    assert low < f1_score(LABELS_TRUE, PREDICTED, average="macro") < high


def test_resampled_f1_scores_absent_classes_zero_as_f1_score_does():
    indices = np.array([[21, 22, 23, 20],  # all NoEntailment; the others predicted once
                        [7, 8, 9, 10],  # NoEntailment alone, on both sides
                        np.arange(4)])
    f1 = resampled_f1(LABELS_TRUE, PREDICTED, indices)
    for row, rows in zip(f1, indices):
        expected = f1_score(LABELS_TRUE[rows], PREDICTED[rows], labels=[0, 1, 2],
                            average=None, zero_division=0)
        assert row == pytest.approx(expected)
    assert f1[1].tolist() == [0.0, 0.0, 1.0]


def test_the_seed_fixes_the_interval():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 1500)
    predicted = np.where(rng.random(1500) < 0.7, labels, rng.integers(0, 3, 1500))
    first = f1_intervals(labels, predicted, seed=1)
    assert first["resamples"] == 1000
    assert f1_intervals(labels, predicted, seed=1) == first
    assert f1_intervals(labels, predicted, seed=2)["macro_f1"] != first["macro_f1"]
    assert bootstrap_indices(5, 3, seed=0).shape == (3, 5)


def test_blocks_of_resamples_are_the_single_draw_and_give_the_same_interval(monkeypatch):
    """Scored a block at a time (bounded memory on a large test split), the resamples and
    the interval are exactly those of one draw of all of them."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 700)
    predicted = np.where(rng.random(700) < 0.6, labels, rng.integers(0, 3, 700))
    whole = np.random.default_rng(9).integers(0, 700, size=(1000, 700))
    blocks = list(bootstrap_index_blocks(700, 1000, seed=9, max_cells=7 * 700 + 5))
    assert {len(block) for block in blocks[:-1]} == {7} and len(blocks[-1]) == 1000 % 7
    np.testing.assert_array_equal(np.concatenate(blocks), whole)
    in_one = resampled_f1(labels, predicted, whole)
    expected = {"macro_f1": percentile_interval(in_one.mean(axis=1)),
                "per_class_f1": dict(zip(LABELS, percentile_interval(in_one)))}
    monkeypatch.setattr("mmentail.evaluation.bootstrap.MAX_CELLS", 5 * 700)
    intervals = f1_intervals(labels, predicted, seed=9)
    assert {key: intervals[key] for key in expected} == expected


def test_percentile_interval_per_column():
    values = np.column_stack([np.arange(101.0), np.zeros(101)])
    assert np.allclose(percentile_interval(values), [[2.5, 97.5], [0.0, 0.0]])
    assert np.allclose(percentile_interval(np.arange(101.0), confidence=0.5), [25, 75])
