"""`mmentail-evaluate`: re-score a finished run from its export and test split.

It serves the test pairs through the exported SavedModel, as a client would
(raw texts and image bytes), so its figures check the export itself: its
calibrated probabilities, the labels of its decision rule and, from its
`logits`, the calibration's figures before and after. The
images come from the recorded image folder, or from the TFRecord shards a
`--data-tfrecords` run read.

Example:
    mmentail-evaluate runs/demo

    metrics = evaluate_run("runs/demo")
    sorted(metrics)[:3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from mmentail.cli import run_command
from mmentail.config.experiment import load_config
from mmentail.data.pairs import read_pairs
from mmentail.errors import MissingFileError
from mmentail.evaluation.calibration import calibration_report
from mmentail.evaluation.metrics import summary, test_figures
from mmentail.evaluation.report import PLOTS, predictions_frame, write_predictions, write_report
from mmentail.schema import EXPORT_INPUTS, LABELS
from mmentail.serving.loaded import LoadedExport, load_export


def pairs_dataset(pairs: pd.DataFrame) -> tf.data.Dataset:
    """The export's inputs for rows from :func:`read_pairs`: texts, and image bytes read
    from `image_*_path` (empty bytes for rows without images: a text-only export ignores them)."""
    columns = {"text_1": pairs["text_1"].to_numpy(), "text_2": pairs["text_2"].to_numpy()}
    has_images = "image_1_path" in pairs
    for key in ("image_1", "image_2"):
        columns[key] = pairs[f"{key}_path"].to_numpy() if has_images else np.full(len(pairs), "")

    def read_images(row):
        if has_images:
            row = {**row, "image_1": tf.io.read_file(row["image_1"]),
                   "image_2": tf.io.read_file(row["image_2"])}
        return row

    return tf.data.Dataset.from_tensor_slices(columns).map(read_images)


def shards_dataset(files: Sequence[str]) -> tf.data.Dataset:
    """The export's inputs read back from TFRecord shards, in the split's row order."""
    from mmentail.data.tfrecord import read_records

    return read_records(files).map(lambda r: {key: r[key] for key in EXPORT_INPUTS})


def predict_export(export: LoadedExport, inputs: tf.data.Dataset, batch_size: int = 32
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Class probabilities, label indices (its `label` output: the run's decision
    rule) and logits (None from an export without them) of a serving export for a
    dataset of its four inputs."""
    empty = np.zeros((0, len(LABELS)), np.float32)
    probabilities, predicted, logits = [empty], [np.zeros(0, int)], [empty]
    for batch in inputs.batch(batch_size):
        outputs = export.predict(batch)
        probabilities.append(outputs["probabilities"])
        predicted.append(np.array([LABELS.index(label) for label in outputs["label"]], int))
        logits.append(outputs.get("logits"))
    if any(values is None for values in logits):
        return np.concatenate(probabilities), np.concatenate(predicted), None
    return np.concatenate(probabilities), np.concatenate(predicted), np.concatenate(logits)


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """Re-evaluates a finished run from its export, splits and config; rewrites its report
    and `predictions.csv`.

    Args:
        run_dir: a directory written by `mmentail-train` (config.json,
            splits/, export/, optionally history.csv).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "export" / "saved_model.pb").is_file():
        raise MissingFileError(f"{run_dir} has no export/saved_model.pb: not a finished run")
    config = load_config(run_dir / "config.json")
    train = read_pairs(run_dir / "splits" / "train.csv")
    if config.data.data_tfrecords:
        from mmentail.data.tfrecord import read_splits

        test, files = read_splits(config.data.data_tfrecords)["test"]
        inputs = shards_dataset(files)
    else:
        image_dir = config.data.image_dir if config.model.modality != "text" else None
        test = read_pairs(run_dir / "splits" / "test.csv", image_dir)
        inputs = pairs_dataset(test)
    export = load_export(run_dir / "export")
    probabilities, predicted, logits = predict_export(export, inputs, config.optim.batch_size)
    labels = test["label_idx"].to_numpy()
    metrics = {**test_figures(labels, probabilities, train["label_idx"].to_numpy(),
                              seed=config.seed, predicted=predicted),
               "decision_rule": export.decision_rule.to_json()}
    if logits is not None:
        metrics["calibration"] = calibration_report(export.calibration, logits, labels,
                                                    predicted=predicted, seed=config.seed)
    write_report(run_dir, metrics)
    write_predictions(run_dir, predictions_frame(test, probabilities, predicted, logits))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmentail-evaluate",
        description="Evaluate a finished run's export on its test split: metrics.json, "
                    "plots and a console summary beside the majority baseline.")
    parser.add_argument("run_dir", help="run directory written by mmentail-train")

    def evaluate(args: argparse.Namespace) -> int:
        print(summary(evaluate_run(args.run_dir)))
        print(f"written: {Path(args.run_dir) / 'metrics.json'}, predictions.csv and "
              f"{', '.join(PLOTS)}")
        return 0

    return run_command(parser, evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
