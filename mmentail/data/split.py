"""The stratified train/val/test split, and the run stage that reads, checks and splits pairs.

Example:
    >>> pairs = read_pairs("pairs.csv", "images")
    >>> train, val, test = split_pairs(pairs, seed=42)
    >>> len(test) / len(pairs)  # about 0.1
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from mmentail.config.experiment import ExperimentConfig
from mmentail.data.pairs import DataError, ReadReport, read_pairs
from mmentail.io_utils import atomic_write_json, atomic_write_text
from mmentail.schema import LABELS

log = logging.getLogger("mmentail")
SPLITS = ("train", "val", "test")
TEST_SIZE, VAL_SIZE = 0.1, 0.05
# Columns the reader adds to a CSV's own; split CSVs hold the original rows.
_DERIVED_COLUMNS = ("label_idx", "image_1_path", "image_2_path")


def label_counts(df: pd.DataFrame) -> dict[str, int]:
    """Rows per label, in :data:`LABELS` order (zeros included)."""
    counts = df["label"].value_counts()
    return {label: int(counts.get(label, 0)) for label in LABELS}


def rows_needed(num_labels: int, test_size: float = TEST_SIZE,
                val_size: float = VAL_SIZE) -> int:
    """The fewest rows a stratified split gives every label a place in val and test.

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
    needed = rows_needed(len(counts), test_size, val_size)
    scarce = [f"{label} ({n})" for label, n in counts.items() if n < 3]
    if len(df) < needed or scarce:
        raise DataError("split", [
            f"{len(df)} pairs ({', '.join(f'{k} {v}' for k, v in counts.items())}) are too few "
            f"to split stratified into train, val ({val_size:.0%}) and test ({test_size:.0%}): "
            f"that needs at least {needed} pairs and at least 3 of each label"
            + (f"; too few: {', '.join(scarce)}" if scarce else "")])
    rest, test = train_test_split(df, test_size=test_size, stratify=df["label"].values,
                                  random_state=seed)
    train, val = train_test_split(rest, test_size=val_size, stratify=rest["label"].values,
                                  random_state=seed)
    return train, val, test


@dataclasses.dataclass
class Splits:
    """A run's pairs, split; `shards` names each split's TFRecord files when read from them."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    report: ReadReport = dataclasses.field(default_factory=ReadReport)
    shards: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def labels(self, split: str) -> "pd.Series":
        return self.parts()[split]["label_idx"].to_numpy()


def check_training_labels(train: pd.DataFrame) -> None:
    """Refuses a training split without every label: its model could never predict the
    missing one, and figures over the labels present would flatter it (1.000 macro-F1 on
    a one-label CSV)."""
    missing = [label for label, n in label_counts(train).items() if n == 0]
    if missing:
        raise DataError("training split", [
            f"no {', '.join(missing)} pairs to learn from (labels in training: "
            f"{label_counts(train)}); every label of {list(LABELS)} needs training pairs"])


def read_and_split(config: ExperimentConfig) -> Splits:
    """Stage 2: the resolved config's pairs, validated and split (or read from shards).

    Every row and image header is checked first (see :func:`read_pairs`);
    TFRecord shards carry their split already.
    """
    if config.data.data_tfrecords:
        from mmentail.data.tfrecord import read_splits

        found = read_splits(config.data.data_tfrecords)
        splits = Splits(*(found[name][0] for name in SPLITS),
                        shards={name: found[name][1] for name in SPLITS})
    else:
        report = ReadReport()
        pairs = read_pairs(config.data.data_csv, config.data.image_dir,
                           skip_bad_rows=config.data.skip_bad_rows, report=report)
        splits = Splits(*split_pairs(pairs, seed=config.seed), report=report)
    check_training_labels(splits.train)
    pairs = pd.concat(list(splits.parts().values()))
    log.info("%d pairs %s -> train %d, val %d, test %d", len(pairs), label_counts(pairs),
             len(splits.train), len(splits.val), len(splits.test))
    return splits


def write_splits(splits: Splits, output: Path) -> None:
    """Writes each split's original rows to `splits/<name>.csv` and `data_report.json`."""
    atomic_write_json(output / "data_report.json", dataclasses.asdict(splits.report))
    report = splits.report
    if report.skipped:
        log.warning("skipped %d of %d rows (%d problems, listed in %s)",
                    report.rows_read - report.rows_kept, report.rows_read,
                    len(report.skipped), output / "data_report.json")
    for name, part in splits.parts().items():
        columns = [c for c in part.columns if c not in _DERIVED_COLUMNS]
        atomic_write_text(output / "splits" / f"{name}.csv", part[columns].to_csv(index=False))
