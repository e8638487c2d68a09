"""The stratified train/val/test split, and the checks that the pairs can be split and learned.

Example:
    >>> pairs = pd.DataFrame({"label": ["NoEntailment"] * 80 + ["Implies", "Contradictory"] * 10})
    >>> train, val, test = split_pairs(pairs, seed=42)
    >>> len(train), len(val), len(test), label_counts(test)["Implies"]
    (85, 5, 10, 1)
    >>> [len(test) for test in fold_indices(pairs["label"], folds=4)]
    [25, 25, 25, 25]
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from mmentail.data.pairs import DataError
from mmentail.schema import LABELS

TEST_SIZE, VAL_SIZE = 0.1, 0.05


def label_counts(df: pd.DataFrame) -> dict[str, int]:
    """Rows per label, in :data:`LABELS` order (zeros included)."""
    counts = df["label"].value_counts()
    return {label: int(counts.get(label, 0)) for label in LABELS}


def rows_needed(num_labels: int, test_size: float = TEST_SIZE,
                val_size: float = VAL_SIZE) -> int:
    """The fewest rows a stratified split of `num_labels` labels accepts (its val and
    test splits need at least one row per label).

    Example:
        >>> rows_needed(3)
        46
    """
    rows = num_labels
    while (math.ceil(test_size * rows) < num_labels
           or math.ceil(val_size * (rows - math.ceil(test_size * rows))) < num_labels):
        rows += 1
    return rows


def split_pairs(df: pd.DataFrame, seed: int = 42, test_size: float = TEST_SIZE,
                val_size: float = VAL_SIZE) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Stratified train/val/test split, as in the keras.io example.

    `test_size` of all rows go to test, then `val_size` of the rest to
    validation, each stratified by label with `random_state=seed`. With the
    defaults this reproduces the keras.io example's rows exactly.

    Raises:
        DataError: too few rows, or too few of a label, to stratify; says how many it needs.
    """
    counts = {label: n for label, n in label_counts(df).items() if n}
    needed = rows_needed(len(LABELS), test_size, val_size)
    scarce = [f"{label} ({n})" for label, n in counts.items() if n < 3]
    if len(df) < needed or scarce:
        raise DataError("the pairs", [
            f"{len(df)} pairs ({', '.join(f'{k} {v}' for k, v in counts.items())}) are too few "
            f"to split stratified into train, val ({val_size:.0%}) and test ({test_size:.0%}): "
            f"that needs at least {needed} pairs and at least 3 of each of the "
            f"{len(LABELS)} labels"
            + (f"; too few: {', '.join(scarce)}" if scarce else "")])
    rest, test = train_test_split(df, test_size=test_size, stratify=df["label"].values,
                                  random_state=seed)
    train, val = train_test_split(rest, test_size=val_size, stratify=rest["label"].values,
                                  random_state=seed)
    return train, val, test


def fold_indices(labels: Sequence[str] | np.ndarray | pd.Series, folds: int,
                 seed: int = 42) -> list[np.ndarray]:
    """Row positions of each fold's held-out pairs: stratified by label, shuffled with
    `seed`; the folds are disjoint and together hold every row once.

    Args:
        labels: the label of every row, in row order.
        folds: how many folds (at least 2).
        seed: the shuffle's seed (a run's `seed`), so a fold is the same in every process.
    """
    labels = np.asarray(labels)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [held_out for _, held_out in splitter.split(np.zeros(len(labels)), labels)]


def check_folds(df: pd.DataFrame, folds: int) -> None:
    """Refuses pairs too few to cross-validate: every present label needs a pair in each
    fold's test split and two in each fold's training pairs (one for val, one to learn).

    Raises:
        DataError: naming the scarce labels and how many pairs of each it needs.
    """
    needed = folds  # a fold's test split holds at most ceil(n / folds) pairs of a label
    while needed - math.ceil(needed / folds) < 2:
        needed += 1
    scarce = [f"{label} ({n})" for label, n in label_counts(df).items() if 0 < n < needed]
    if scarce:
        raise DataError("the pairs", [
            f"too few pairs of {', '.join(scarce)} for {folds}-fold cross-validation: each "
            f"label needs at least {needed} pairs (use fewer --folds, or more pairs)"])


def split_fold(df: pd.DataFrame, folds: int, fold: int, seed: int = 42,
               val_size: float = VAL_SIZE) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train/val/test of cross-validation fold `fold` (1..`folds`).

    The fold's held-out pairs (:func:`fold_indices`) are its test split; the
    others are split into train and val as :func:`split_pairs` splits them
    (`val_size` of them, stratified, `random_state=seed`), val taking at least
    one pair per label.

    Raises:
        DataError: too few pairs of a label (see :func:`check_folds`).
    """
    check_folds(df, folds)
    held_out = fold_indices(df["label"], folds, seed)[fold - 1]
    test = df.iloc[held_out]
    rest = df.iloc[np.setdiff1d(np.arange(len(df)), held_out)]
    val_rows = max(math.ceil(val_size * len(rest)), rest["label"].nunique())
    train, val = train_test_split(rest, test_size=val_rows, stratify=rest["label"].values,
                                  random_state=seed)
    return train, val, test


def check_training_labels(train: pd.DataFrame) -> None:
    """Refuses a training split without every label: its model could never predict the
    missing one, and figures over the labels present would flatter it (1.000 macro-F1 on
    a one-label CSV)."""
    missing = [label for label, n in label_counts(train).items() if n == 0]
    if missing:
        raise DataError("training split", [
            f"no {', '.join(missing)} pairs to learn from (labels in training: "
            f"{label_counts(train)}); every label of {list(LABELS)} needs training pairs"])
