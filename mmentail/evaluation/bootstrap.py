"""Bootstrap intervals of F1: how far a test figure could move on another draw of test pairs.

A test split of a few hundred pairs, most of them NoEntailment, gives a
macro-F1 that moves by several points from one draw of pairs to the next, so
two recipes whose figures differ by less than that cannot be ranked. The
percentile bootstrap resamples the test pairs with replacement and reads the
interval off the resampled figures; the resamples are scored with numpy, a
block of them at a time (1000 resamples of 1500 pairs take milliseconds; of
10,000 pairs, memory stays at a few blocks of `MAX_CELLS` indices).

The same resampled indices applied to two models' predictions of the same
pairs give a paired interval of their difference (`tools/compare.py`).

Example:
    >>> labels, predicted = [0, 1, 2, 2, 2, 1], [0, 1, 2, 2, 1, 1]
    >>> intervals = f1_intervals(labels, predicted, resamples=200, seed=0)
    >>> low, high = intervals["macro_f1"]
    >>> 0 <= low <= high <= 1, sorted(intervals["per_class_f1"])
    (True, ['Contradictory', 'Implies', 'NoEntailment'])
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from mmentail.schema import LABELS

RESAMPLES = 1000
CONFIDENCE = 0.95
# Resample x pair indices scored at once: 1000 resamples of 10,000 test pairs would
# otherwise hold several arrays of 80 MB.
MAX_CELLS = 1 << 21


def bootstrap_index_blocks(count: int, resamples: int = RESAMPLES, seed: int = 0,
                           max_cells: int | None = None) -> Iterator[np.ndarray]:
    """:func:`bootstrap_indices` a block of resamples at a time, at most `max_cells`
    (default `MAX_CELLS`) indices a block, one resample at least: the same draws, in
    bounded memory."""
    rng = np.random.default_rng(seed)
    rows = max(1, (max_cells or MAX_CELLS) // max(count, 1))
    for start in range(0, resamples, rows):
        yield rng.integers(0, count, size=(min(rows, resamples - start), count))


def bootstrap_indices(count: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Row indices of `resamples` draws of `count` rows with replacement, [resamples, count].

    Reusing one draw for two sets of predictions of the same rows pairs them.
    """
    return np.concatenate(list(bootstrap_index_blocks(count, resamples, seed)))


def resampled_f1(labels: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray,
                 indices: np.ndarray, num_classes: int = len(LABELS)) -> np.ndarray:
    """Each class's F1 in each resample, [resamples, classes]; as scikit-learn's
    `f1_score(..., labels=range(num_classes), average=None, zero_division=0)` per row.

    Args:
        labels: true label indices of the rows.
        predicted: predicted label indices of the same rows.
        indices: from :func:`bootstrap_indices`.
        num_classes: classes counted (absent ones score 0).
    """
    true = np.asarray(labels)[indices]
    guess = np.asarray(predicted)[indices]
    offset = np.arange(len(indices))[:, None] * num_classes
    size = len(indices) * num_classes

    def per_class(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        counts = np.bincount((offset + values).ravel(), weights=weights, minlength=size)
        return counts.reshape(len(indices), num_classes)

    hits = per_class(true, (true == guess).ravel().astype(float))
    denominator = per_class(true) + per_class(guess)  # 2 TP + FP + FN
    return np.divide(2 * hits, denominator, out=np.zeros_like(hits),
                     where=denominator > 0)


def percentile_interval(values: np.ndarray,
                        confidence: float = CONFIDENCE) -> list[float] | list[list[float]]:
    """The central `confidence` percentile interval of resampled values (along axis 0).

    Example:
        >>> [round(bound, 6) for bound in percentile_interval(np.arange(101.0))]
        [2.5, 97.5]
    """
    tail = (1 - confidence) / 2 * 100
    return np.percentile(values, [tail, 100 - tail], axis=0).T.tolist()


def f1_intervals(labels: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray,
                 *, resamples: int = RESAMPLES, seed: int = 0,
                 confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Percentile-bootstrap intervals of macro-F1 and of each class's F1 (JSON-ready).

    Args:
        labels: true label indices of the test pairs.
        predicted: predicted label indices of the same pairs.
        resamples: bootstrap draws of the test pairs.
        seed: seed of the draws: the same seed gives the same interval.
        confidence: the interval's coverage.

    Returns:
        `{"macro_f1": [low, high], "per_class_f1": {label: [low, high]},
        "confidence", "resamples", "seed"}`.
    """
    f1 = np.concatenate([resampled_f1(labels, predicted, block)
                         for block in bootstrap_index_blocks(len(labels), resamples, seed)])
    per_class = percentile_interval(f1, confidence)
    return {"macro_f1": percentile_interval(f1.mean(axis=1), confidence),
            "per_class_f1": dict(zip(LABELS, per_class)),
            "confidence": confidence, "resamples": resamples, "seed": seed}
