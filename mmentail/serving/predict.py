"""`mmentail-predict`: label a CSV of new pairs with an export, batch by batch.

    mmentail-predict runs/demo/export --data-csv new_pairs.csv --output preds.csv

The CSV has the training schema; its `label` column is optional. Rows and
image headers are checked first, as training checks them
(:func:`mmentail.data.pairs.read_pairs`): a bad row (image missing, corrupt or
too large, empty text, unknown label) stops the command with every bad row
listed by number, or, with `--skip-bad-rows`, is skipped and counted. Images are
read a batch at a time, never all at once. `preds.csv` (written atomically)
holds each pair's ids, the predicted label and the three probabilities, the
true label too when the CSV has one; the figures training prints follow, with
the CSV's own most frequent label as the majority baseline.

With `--runner` (and Beam's pipeline options), the command runs as an Apache
Beam pipeline instead (:mod:`mmentail.serving.beam_predict`): `--output` is
then a directory of prediction shards (`--format csv` or `parquet`) and
dead-letter shards of the rows not labelled.

Example:
    result = predict_csv("runs/demo/export", "new_pairs.csv", "preds.csv")
    result.rows_written, result.figures and result.figures["macro_f1"]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from mmentail.beam_options import add_runner_flag, parse_with_pipeline_args, pipeline_options
from mmentail.cli import run_command
from mmentail.data.pairs import DataError
from mmentail.errors import ConfigError
from mmentail.evaluation.metrics import summary, test_figures
from mmentail.evaluation.report import predictions_frame, write_predictions
from mmentail.evaluation.rerun import pairs_dataset
from mmentail.progress import Progress
from mmentail.schema import LABELS
from mmentail.serving.loaded import LoadedExport, model_error_message, read_pairs_for

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PredictResult:
    """What :func:`predict_csv` did.

    Attributes:
        output: the predictions CSV written.
        rows_read: data rows in the input CSV.
        rows_written: pairs labelled and written.
        skipped_rows: numbers of the rows skipped (1 = the first row after the header).
        problems: what was wrong with them, one line per problem, row number first.
        figures: `mmentail.evaluation.metrics.test_figures` when the CSV has labels.
    """

    output: Path
    rows_read: int
    rows_written: int
    skipped_rows: list[int]
    problems: list[str]
    figures: dict[str, Any] | None


def predict_csv(export: str | Path | LoadedExport, data_csv: str | Path, output: str | Path, *,
                image_dir: str | Path | None = None, batch_size: int = 64,
                skip_bad_rows: bool = False, progress: bool = True) -> PredictResult:
    """Labels every pair of `data_csv` with the export and writes `output`.

    Args:
        export: a serving export's directory, or the export already loaded.
        data_csv: pairs CSV (training's schema; `label` optional).
        output: predictions CSV to write (atomically).
        image_dir: the images (default: `images/` beside the CSV); unused by
            a text-only export.
        batch_size: pairs per model call (and images in memory at once).
        skip_bad_rows: skip and count bad rows instead of failing.
        progress: show a progress bar on stderr.

    Raises:
        DataError: bad rows, listed with their numbers (unless `skip_bad_rows`),
            or no row left to label.
    """
    export, pairs, report = read_pairs_for(export, data_csv, image_dir,
                                           skip_bad_rows=skip_bad_rows)
    skipped = set(report.skipped_rows)
    rows = np.asarray([row for row in range(1, report.rows_read + 1) if row not in skipped])
    probabilities, predicted, failed = _label(export, pairs, rows, batch_size, progress)
    if failed and not skip_bad_rows:
        raise DataError(str(data_csv), list(failed.values()))
    for message in failed.values():
        log.warning("skipping %s", message)
    done = ~np.isnan(probabilities).any(axis=1)
    pairs, probabilities, predicted = (pairs[done].reset_index(drop=True), probabilities[done],
                                       predicted[done])
    problems = [*report.skipped, *failed.values()]
    if pairs.empty:
        raise DataError(str(data_csv), ["no row could be labelled", *problems])
    labels = pairs["label_idx"].to_numpy()
    labelled = bool((labels >= 0).all())
    frame = predictions_frame(pairs, probabilities, predicted)
    output = Path(output)
    write_predictions(output.parent, frame if labelled else frame.drop(columns="label"),
                      output.name)
    return PredictResult(output, report.rows_read, len(pairs), sorted(skipped | set(failed)),
                         problems,
                         test_figures(labels, probabilities, labels, predicted=predicted)
                         if labelled else None)


def _label(export: LoadedExport, pairs: pd.DataFrame, rows: np.ndarray, batch_size: int,
           progress: bool) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Probabilities (NaN where the model refused the row) and label indices (the export's
    `label` output: its decision rule) of every pair, and the refused rows' problems by
    row number."""
    probabilities = np.full((len(pairs), len(LABELS)), np.nan, np.float32)
    predicted = np.zeros(len(pairs), int)
    failed: dict[int, str] = {}

    def describe(at: int) -> str:
        row = pairs.iloc[at]
        return f"row {rows[at]} (ids {row['id_1']}/{row['id_2']})"

    bar = Progress("labelling pairs", len(pairs), "pair", terminal=True) if progress else None
    batches = pairs_dataset(pairs).batch(batch_size).prefetch(1)
    for start, batch in zip(range(0, len(pairs), batch_size), batches):
        size = int(tf.shape(batch["text_1"])[0])
        answered = label_batch(export, batch, size, lambda i: describe(start + i))
        probabilities[start:start + size], predicted[start:start + size] = answered[:2]
        failed.update({int(rows[start + i]): problem for i, problem in answered[2].items()})
        if bar is not None:
            bar.add(size)
    return probabilities, predicted, failed


def label_batch(export: LoadedExport, inputs: Mapping[str, Any], size: int,
                describe: Callable[[int], str]
                ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """One batch through the export; if it refuses the batch, each pair alone, so the
    pairs it takes are labelled and the ones it refuses are named.

    Args:
        export: the loaded export.
        inputs: the four inputs, `size` pairs each (lists of bytes, or tensors).
        size: pairs in the batch.
        describe: a pair's position -> how a problem names it (`row 3 (ids a/b)`).

    Returns:
        Probabilities [size, 3] (NaN where refused), label indices (the export's
        `label` output) and {position: problem} of the refused pairs.
    """
    probabilities = np.full((size, len(LABELS)), np.nan, np.float32)
    predicted = np.zeros(size, int)
    failed: dict[int, str] = {}

    def answer(at: int, columns: Mapping[str, Any]) -> None:
        outputs = export.predict(columns)
        probabilities[at:at + len(outputs["label"])] = outputs["probabilities"]
        predicted[at:at + len(outputs["label"])] = [LABELS.index(label)
                                                    for label in outputs["label"]]

    try:
        answer(0, inputs)
    except tf.errors.InvalidArgumentError:
        for i in range(size):
            try:
                answer(i, {name: values[i:i + 1] for name, values in inputs.items()})
            except tf.errors.InvalidArgumentError as error:
                failed[i] = f"{describe(i)}: {model_error_message(error)}"
    return probabilities, predicted, failed


def add_export_and_pairs_arguments(parser: argparse.ArgumentParser) -> None:
    """The export and the pairs CSV, as `mmentail-predict` and `mmentail-explain` take them."""
    parser.add_argument("export_dir", help="serving export (a run's <output>/export)")
    parser.add_argument("--data-csv", required=True, help="pairs CSV; the label column is "
                        "optional")
    parser.add_argument("--image-dir", help="folder of <id>.<ext> images (default: images/ "
                        "beside the CSV)")


def build_parser() -> argparse.ArgumentParser:
    """`mmentail-predict`'s flags."""
    parser = argparse.ArgumentParser(
        prog="mmentail-predict",
        description="Label a CSV of pairs with a serving export: ids, predicted label and "
                    "probabilities to --output; with labels in the CSV, the test figures.")
    add_export_and_pairs_arguments(parser)
    parser.add_argument("--output", required=True, help="predictions CSV to write; with "
                        "--runner, the directory of prediction and dead-letter shards")
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per model call")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="skip and count bad rows instead of stopping (with --runner, "
                             "bad rows always go to the dead letter)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_runner_flag(parser)
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv",
                        help="with --runner: the prediction shards' format (default csv)")
    return parser


def _predict(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    if args.runner is not None:
        return _predict_on_beam(args)
    if args.format != "csv":
        raise ConfigError("--format parquet needs --runner")
    result = predict_csv(args.export_dir, args.data_csv, args.output,
                         image_dir=args.image_dir, batch_size=args.batch_size,
                         skip_bad_rows=args.skip_bad_rows, progress=not args.no_progress)
    if result.figures is not None:
        print(summary(result.figures))
    shown = ", ".join(map(str, result.skipped_rows[:20]))
    more = ", ..." if len(result.skipped_rows) > 20 else ""
    skipped = (f"; skipped {len(result.skipped_rows)} bad row(s): {shown}{more}"
               if result.skipped_rows else "")
    print(f"labelled {result.rows_written} of {result.rows_read} pairs{skipped}; "
          f"written: {result.output}")
    return 0


def _predict_on_beam(args: argparse.Namespace) -> int:
    from mmentail.serving.beam_predict import DEAD_LETTER_PREFIX, predict_csv_beam

    result = predict_csv_beam(args.export_dir, args.data_csv, args.output,
                              pipeline_options(args.runner, args.pipeline_args,
                                               verbose=args.verbose),
                              image_dir=args.image_dir, batch_size=args.batch_size,
                              output_format=args.format)
    if result.figures is not None:
        print(summary(result.figures))
    print(f"rows read {result.rows_read} = labelled {result.rows_labelled} + dead-lettered "
          f"{result.rows_dead_lettered}; written: {result.output}"
          + (f" (bad rows: {result.output / DEAD_LETTER_PREFIX}-*.csv)"
             if result.rows_dead_lettered else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The `mmentail-predict` command: 0 when `--output` is written, 1 on bad rows (in
    process; with `--runner` they go to the dead letter)."""
    return run_command(build_parser(), _predict, argv, parse=parse_with_pipeline_args)


if __name__ == "__main__":
    sys.exit(main())
