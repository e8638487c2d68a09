"""`mmentail-write-tfrecords --runner RUNNER`: the shards written by an Apache Beam pipeline.

The command validates and splits the CSV as without Beam (the rows' texts and
image paths, no image bytes, are held by the launching process), and hands the
rows to the workers in a JSON-lines file; the pipeline reads it in parallel,
reads the image files and builds the records on every worker, and writes each
shard on one worker. Each shard holds the same records in the same order
as the in-process writer's (row `r` of a split in shard `r % n`, by row), so
the files are byte for byte the same and training and evaluation read them
unchanged. A shard's records are gathered on its worker before it is written:
use enough shards that one fits in a worker's memory.

Example:
    write_splits_beam({"train": train_rows, ...}, "shards.tmp", 16,
                      pipeline_options("DirectRunner"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import apache_beam as beam
import pandas as pd
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from mmentail.data.tfrecord import example_bytes, shard_paths

# The rows handed to the workers, beside the shards while they are written.
ROWS_FILE = ".rows.jsonl"
# What a record is made of (see :func:`mmentail.data.tfrecord.example_bytes`).
_ROW_FIELDS = ("id_1", "id_2", "text_1", "text_2", "label", "label_idx", "image_1_path",
               "image_2_path")


def _keyed_example(row: dict, num_shards: int) -> tuple[tuple[str, int], tuple[int, bytes]]:
    """((split, shard), (row in split, serialized example)) of one row."""
    return (row["split"], row["row"] % num_shards), (row["row"], example_bytes(row))


def _write_shard(keyed: tuple[tuple[str, int], Iterable[tuple[int, bytes]]], directory: str,
                 num_shards: int) -> None:
    (split, shard), records = keyed
    with tf.io.TFRecordWriter(shard_paths(directory, split, num_shards)[shard]) as writer:
        for _, record in sorted(records, key=lambda item: item[0]):
            writer.write(record)


def write_splits_beam(parts: Mapping[str, pd.DataFrame], directory: str | Path,
                      num_shards: int, options: PipelineOptions) -> None:
    """Writes every split's rows (with `image_*_path` columns) into `num_shards` shards each.

    The rows (texts and image paths) reach the workers through a JSON-lines file
    in `directory`, read in parallel and removed at the end.

    Args:
        parts: {split: its rows}, as :func:`mmentail.data.split_pairs` makes them.
        directory: where the shards go, readable and writable by every worker.
        num_shards: shards per split; a shard with no row is written empty.
        options: Beam's pipeline options (:func:`mmentail.beam_options.pipeline_options`).
    """
    rows_file = Path(directory) / ROWS_FILE
    try:
        with open(rows_file, "w", encoding="utf-8") as f:
            for split, part in parts.items():
                for r, row in enumerate(part[list(_ROW_FIELDS)].to_dict("records")):
                    f.write(json.dumps({**row, "split": split, "row": r}) + "\n")
        with beam.Pipeline(options=options) as pipeline:
            _ = (pipeline
                 | "rows" >> beam.io.ReadFromText(str(rows_file))
                 | "parse rows" >> beam.Map(json.loads)
                 | "spread rows" >> beam.Reshuffle()
                 | "examples" >> beam.Map(_keyed_example, num_shards)
                 | "group shards" >> beam.GroupByKey()
                 | "write shards" >> beam.Map(_write_shard, str(directory), num_shards))
    finally:
        rows_file.unlink(missing_ok=True)
    for split in parts:  # shards no row went to (a split smaller than num_shards)
        for path in shard_paths(directory, split, num_shards):
            if not Path(path).exists():
                tf.io.TFRecordWriter(path).close()
