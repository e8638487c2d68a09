"""`mmentail-predict --runner RUNNER`: labelling a CSV of pairs as an Apache Beam pipeline.

    mmentail-predict runs/demo/export --data-csv pairs.csv --output preds/ \\
        --runner DirectRunner --direct_num_workers 2 --direct_running_mode multi_processing

The pipeline reads the CSV's rows (one worker: a quoted text may span lines,
so the file cannot be split at arbitrary bytes), spreads them over the
workers, checks them as the in-process command does
(:func:`mmentail.data.pairs.check_rows`: ids, texts, labels, duplicate pairs,
image headers; the same messages), and labels the good ones with Beam's
`RunInference` and :class:`ExportModelHandler`, which loads the export once
per worker and calls it on batches of up to `batch_size` pairs. The output
directory (written atomically) holds

- `predictions-<i>-of-<n>.csv` (or `.parquet` with `output_format="parquet"`):
  the columns of the in-process `preds.csv` (ids, true label when the CSV
  has one, predicted label, the three probabilities), in no particular order;
- `dead_letter-<i>-of-<n>.csv`: `row,problem`, one line per problem of every
  row that was not labelled (a bad row, or one the model refused), row 1
  being the first after the header.

No row is dropped silently: the pipeline counts rows read, labelled and
dead-lettered, and the run fails unless read = labelled + dead-lettered.

Example:
    result = predict_csv_beam("runs/demo/export", "pairs.csv", "preds",
                              pipeline_options("DirectRunner"))
    result.rows_labelled, result.rows_dead_lettered
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import pandas as pd
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from mmentail.beam_options import counter
from mmentail.data.pairs import DataError, check_rows, pair_key, problem_messages, read_table
from mmentail.errors import MmentailError
from mmentail.evaluation.metrics import test_figures
from mmentail.evaluation.report import PROBABILITY_COLUMNS
from mmentail.io_utils import atomic_directory
from mmentail.schema import COLUMNS, EXPORT_INPUTS, LABELS
from mmentail.serving.loaded import LoadedExport, load_export
from mmentail.serving.predict import label_batch

NAMESPACE = "mmentail-predict"
PREDICTIONS_PREFIX = "predictions"
DEAD_LETTER_PREFIX = "dead_letter"
FORMATS = ("csv", "parquet")


@dataclasses.dataclass
class BeamPredictResult:
    """What :func:`predict_csv_beam` did.

    Attributes:
        output: the directory written.
        rows_read: data rows in the CSV.
        rows_labelled: pairs labelled and written.
        rows_dead_lettered: rows written to the dead letter instead.
        figures: `mmentail.evaluation.metrics.test_figures` of the labelled pairs
            when the CSV has labels.
    """

    output: Path
    rows_read: int
    rows_labelled: int
    rows_dead_lettered: int
    figures: dict[str, Any] | None


class ExportModelHandler(ModelHandler[dict, dict, LoadedExport]):
    """`RunInference`'s handler of a serving export: pairs (checked rows, with their
    image paths) in, each pair's answer or the model's refusal out.

    Args:
        export_dir: the export directory, readable by every worker.
        batch_size: most pairs per model call.

    Example:
        pairs | RunInference(ExportModelHandler("runs/demo/export", 64))
    """

    def __init__(self, export_dir: str, batch_size: int):
        super().__init__(min_batch_size=1, max_batch_size=batch_size)
        self._export_dir = export_dir

    def load_model(self) -> LoadedExport:
        """The export with its SavedModel loaded (once per worker process)."""
        export = load_export(self._export_dir)
        export.signature  # noqa: B018  (loads the SavedModel here, not on the first batch)
        return export

    def run_inference(self, batch: Sequence[dict], model: LoadedExport,
                      inference_args: dict[str, Any] | None = None
                      ) -> Iterable[PredictionResult]:
        """Each pair's `{"probabilities": [3], "predicted": label}`, or `{"problem": ...}`
        for a pair the model refuses (named as the in-process command names it)."""
        inputs = {name: [_input(pair, name) for pair in batch] for name in EXPORT_INPUTS}
        probabilities, predicted, failed = label_batch(
            model, inputs, len(batch),
            lambda i: f"row {batch[i]['index'] + 1} (ids {batch[i]['id_1']}/{batch[i]['id_2']})")
        return [PredictionResult(pair, {"problem": failed[i]} if i in failed else
                                 {"probabilities": probabilities[i],
                                  "predicted": LABELS[predicted[i]]})
                for i, pair in enumerate(batch)]


def _input(pair: dict, name: str) -> bytes:
    """One export input of a checked pair: its text, or its image file's bytes (none
    for a text-only export)."""
    if name.startswith("text"):
        return pair[name].encode("utf-8")
    path = pair[f"{name}_path"]
    return Path(path).read_bytes() if path else b""


def _csv_rows(csv_path: str, labelled: bool) -> Iterator[dict]:
    """The CSV's rows as strings, each with its `index` (0 = the first after the header)."""
    rows_read = Metrics.counter(NAMESPACE, "rows_read")
    for index, row in enumerate(read_table(csv_path, labels_required=False)
                                .to_dict("records")):
        rows_read.inc()
        yield {**row, "index": index, **({} if labelled else {"label": ""})}


def _with_first_row(keyed: tuple[tuple[str, str], Iterable[dict]]) -> Iterator[dict]:
    """The rows of one pair, each with `first`: the index of the pair's first row."""
    rows = list(keyed[1])
    first = min(row["index"] for row in rows)
    for row in rows:
        yield {**row, "first": first}


class _CheckRows(beam.DoFn):
    """A batch of rows checked as :func:`mmentail.data.pairs.read_pairs` checks them: good
    rows (ids stripped, image paths added) out, bad ones to `dead_letter` as
    `(row number, [problem messages])`."""

    def __init__(self, image_dir: str | None, max_pixels: int, labelled: bool):
        self._image_dir, self._max_pixels, self._labelled = image_dir, max_pixels, labelled
        self._bad_rows = Metrics.counter(NAMESPACE, "rows_dead_lettered")

    def process(self, batch: list[dict]) -> Iterator[Any]:
        df = pd.DataFrame(batch, index=[row["index"] for row in batch])
        first_rows = {row["index"]: row["first"] for row in batch}
        bad, image_paths = check_rows(df[list(COLUMNS)], self._image_dir, self._max_pixels,
                                      self._labelled, first_rows)
        messages = problem_messages(df, bad)
        for position, row in enumerate(batch):
            if row["index"] in bad:
                self._bad_rows.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_PREFIX,
                                               (row["index"] + 1, messages[row["index"]]))
            else:
                yield {"index": row["index"], "id_1": row["id_1"].strip(),
                       "id_2": row["id_2"].strip(), "text_1": row["text_1"],
                       "text_2": row["text_2"], "label": row["label"],
                       "image_1_path": image_paths[1][position],
                       "image_2_path": image_paths[2][position]}


class _SplitAnswers(beam.DoFn):
    """RunInference's results: labelled pairs out, refused ones to `dead_letter`."""

    def __init__(self):
        self._labelled = Metrics.counter(NAMESPACE, "rows_labelled")
        self._refused = Metrics.counter(NAMESPACE, "rows_dead_lettered")

    def process(self, result: PredictionResult) -> Iterator[Any]:
        pair, answer = result.example, result.inference
        if "problem" in answer:
            self._refused.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_PREFIX,
                                           (pair["index"] + 1, [answer["problem"]]))
        else:
            self._labelled.inc()
            yield {"id_1": pair["id_1"], "id_2": pair["id_2"], "label": pair["label"],
                   "predicted": answer["predicted"],
                   **{column: float(p) for column, p in
                      zip(PROBABILITY_COLUMNS, answer["probabilities"])}}


def prediction_columns(labelled: bool) -> list[str]:
    """The columns of the in-process `preds.csv`: `label` only for a labelled CSV."""
    return ["id_1", "id_2", *(["label"] if labelled else []), "predicted",
            *PROBABILITY_COLUMNS]


def _csv_line(values: Sequence[Any]) -> str:
    """One CSV line as pandas writes the in-process file (floats as `%.6g`)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(
        [f"{value:.6g}" if isinstance(value, float) else value for value in values])
    return buffer.getvalue()


def _parquet_schema(columns: Sequence[str]) -> Any:
    import pyarrow as pa

    return pa.schema([(column, pa.float32() if column in PROBABILITY_COLUMNS else pa.string())
                      for column in columns])


def predict_csv_beam(export_dir: str | Path, data_csv: str | Path, output: str | Path,
                     options: PipelineOptions, *, image_dir: str | Path | None = None,
                     batch_size: int = 64, output_format: str = "csv") -> BeamPredictResult:
    """Labels every pair of `data_csv` with the export in a Beam pipeline; see the module doc.

    Args:
        export_dir: the serving export, readable by every worker.
        data_csv: pairs CSV (training's schema; `label` optional).
        output: directory to write (replaced atomically): prediction and dead-letter shards.
        options: Beam's pipeline options (:func:`mmentail.beam_options.pipeline_options`).
        image_dir: the images (default: `images/` beside the CSV); unused by a
            text-only export.
        batch_size: most pairs per model call.
        output_format: `csv` or `parquet` (the predictions; the dead letter is CSV).

    Raises:
        DataError: the CSV is no pairs CSV, the image folder is missing, or no row
            could be labelled.
        MmentailError: the counts do not add up (rows read != labelled + dead-lettered).
    """
    if output_format not in FORMATS:
        raise MmentailError(f"unknown output format {output_format!r}; expected one of "
                            f"{list(FORMATS)}")
    export = load_export(export_dir)  # its metadata: the model loads on the workers
    if export.modality == "text":
        image_dir = None
    elif image_dir is None:
        image_dir = Path(data_csv).parent / "images"
    if image_dir is not None and not Path(image_dir).is_dir():
        raise DataError(str(data_csv), [f"the image folder {image_dir} does not exist (give "
                                        "--image-dir, or put the images in images/ beside "
                                        "the CSV)"])
    labelled = "label" in read_table(data_csv, labels_required=False, max_rows=0)
    columns = prediction_columns(labelled)
    with atomic_directory(output) as tmp:
        pipeline = beam.Pipeline(options=options)
        rows = (pipeline
                | "csv" >> beam.Create([str(data_csv)])
                | "read rows" >> beam.FlatMap(_csv_rows, labelled)
                | "spread rows" >> beam.Reshuffle())
        checked = (rows
                   | "key by pair" >> beam.Map(lambda row: (pair_key(row), row))
                   | "group pairs" >> beam.GroupByKey()
                   | "mark duplicates" >> beam.FlatMap(_with_first_row)
                   | "batch rows" >> beam.BatchElements(min_batch_size=1,
                                                        max_batch_size=batch_size)
                   | "check rows" >> beam.ParDo(_CheckRows(
                       None if image_dir is None else str(image_dir), export.max_pixels,
                       labelled)).with_outputs(DEAD_LETTER_PREFIX, main="good"))
        answered = (checked.good
                    | "label" >> RunInference(ExportModelHandler(str(export_dir), batch_size))
                    | "split answers" >> beam.ParDo(_SplitAnswers()).with_outputs(
                        DEAD_LETTER_PREFIX, main="labelled"))
        prefix = str(tmp / PREDICTIONS_PREFIX)
        if output_format == "parquet":
            _ = (answered.labelled
                 | "keep columns" >> beam.Map(lambda row: {c: row[c] for c in columns})
                 | "write parquet" >> beam.io.WriteToParquet(
                     prefix, _parquet_schema(columns), file_name_suffix=".parquet"))
        else:
            _ = (answered.labelled
                 | "csv lines" >> beam.Map(lambda row: _csv_line([row[c] for c in columns]))
                 | "write csv" >> beam.io.WriteToText(prefix, file_name_suffix=".csv",
                                                      header=",".join(columns)))
        _ = ((checked[DEAD_LETTER_PREFIX], answered[DEAD_LETTER_PREFIX])
             | "dead letters" >> beam.Flatten()
             | "dead letter lines" >> beam.FlatMap(
                 lambda bad: [_csv_line([bad[0], message]) for message in bad[1]])
             | "write dead letters" >> beam.io.WriteToText(
                 str(tmp / DEAD_LETTER_PREFIX), file_name_suffix=".csv", header="row,problem"))
        result = pipeline.run()
        result.wait_until_finish()
        read, done, dead = (counter(result, NAMESPACE, name) for name in
                            ("rows_read", "rows_labelled", "rows_dead_lettered"))
        if read != done + dead:
            raise MmentailError(f"{data_csv}: {read} rows read, but {done} labelled and "
                                f"{dead} dead-lettered: {read - done - dead} unaccounted for")
        if done == 0:
            raise DataError(str(data_csv), [f"no row could be labelled ({dead} "
                                            "dead-lettered)"])
        figures = None
        if labelled:
            predictions = read_prediction_shards(tmp, output_format)
            labels = predictions["label"].map(LABELS.index).to_numpy()
            figures = test_figures(labels, predictions[list(PROBABILITY_COLUMNS)].to_numpy(),
                                   labels, predicted=predictions["predicted"]
                                   .map(LABELS.index).to_numpy())
    return BeamPredictResult(Path(output), read, done, dead, figures)


def read_prediction_shards(directory: str | Path, output_format: str = "csv") -> pd.DataFrame:
    """Every prediction shard of a directory written by :func:`predict_csv_beam`, ids as
    text, in no particular order."""
    files = sorted(Path(directory).glob(f"{PREDICTIONS_PREFIX}-*.{output_format}"))
    if output_format == "parquet":
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return pd.concat([pd.read_csv(f, dtype={"id_1": str, "id_2": str}) for f in files],
                     ignore_index=True)


def read_dead_letter_shards(directory: str | Path) -> pd.DataFrame:
    """Every dead-letter shard of a directory written by :func:`predict_csv_beam`:
    `row`, `problem`, in no particular order."""
    files = sorted(Path(directory).glob(f"{DEAD_LETTER_PREFIX}-*.csv"))
    return pd.concat([pd.read_csv(f, dtype={"problem": str}) for f in files],
                     ignore_index=True)
