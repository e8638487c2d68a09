"""Stage 2 of a run: the resolved configuration's pairs, read, checked and split.

Example:
    splits = read_and_split(config)      # a resolved ExperimentConfig
    write_splits(splits, Path("runs/demo"))
    splits.labels("train")
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mmentail.config.experiment import ExperimentConfig
from mmentail.data.pairs import ReadReport, read_pairs
from mmentail.data.split import (
    check_training_labels,
    label_counts,
    split_fold,
    split_pairs,
)
from mmentail.errors import ConfigError
from mmentail.io_utils import atomic_write_json, atomic_write_text
from mmentail.schema import SPLITS

log = logging.getLogger("mmentail")
# Columns the reader adds to a CSV's own; split CSVs hold the original rows.
_DERIVED_COLUMNS = ("label_idx", "image_1_path", "image_2_path")


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

    def labels(self, split: str) -> np.ndarray:
        """The label indices of a split, in row order."""
        return self.parts()[split]["label_idx"].to_numpy()


def read_and_split(config: ExperimentConfig) -> Splits:
    """Stage 2: the resolved config's pairs, validated and split (or read from shards).

    Every row and image header is checked first (see :func:`read_pairs`);
    TFRecord shards carry their split already. With `folds` > 1 the split is
    fold `fold`'s (:func:`mmentail.data.split.split_fold`).

    Raises:
        ConfigError: a configuration of every fold, which is no single run.
    """
    if config.data.cross_validates:
        raise ConfigError(f"folds {config.data.folds} with fold 0 describes a cross-validation, "
                          "not one run: run it with mmentail-train (or "
                          "mmentail.train.cross_validate), or set fold")
    if config.data.data_tfrecords:
        from mmentail.data.tfrecord import read_splits

        found = read_splits(config.data.data_tfrecords)
        splits = Splits(*(found[name][0] for name in SPLITS),
                        shards={name: found[name][1] for name in SPLITS})
    else:
        report = ReadReport()
        pairs = read_pairs(config.data.data_csv, config.data.image_dir,
                           skip_bad_rows=config.data.skip_bad_rows, report=report)
        val_size = config.data.val_size
        parts = (split_fold(pairs, config.data.folds, config.data.fold, seed=config.seed,
                            val_size=val_size)
                 if config.data.folds > 1 else split_pairs(pairs, seed=config.seed,
                                                           val_size=val_size))
        splits = Splits(*parts, report=report)
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
