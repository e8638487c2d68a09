"""`mmentail-write-tfrecords --runner RUNNER`: the shards written by an Apache Beam pipeline.

The command validates and splits the CSV as without Beam (the rows' texts and
image paths, no image bytes, are held by the launching process); the pipeline
then reads the image files and builds the records on every worker, and writes
each shard on one worker. Each shard holds the same records in the same order
as the in-process writer's (row `r` of a split in shard `r % n`, by row), so
the files are byte for byte the same and training and evaluation read them
unchanged. A shard's records are gathered on its worker before it is written:
use enough shards that one fits in a worker's memory.

Example:
    write_splits_beam({"train": train_rows, ...}, "shards.tmp", 16,
                      pipeline_options("DirectRunner"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import apache_beam as beam
import pandas as pd
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from mmentail.data.tfrecord import example_bytes, shard_paths


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

    Args:
        parts: {split: its rows}, as :func:`mmentail.data.split_pairs` makes them.
        directory: where the shards go, writable by every worker.
        num_shards: shards per split; a shard with no row is written empty.
        options: Beam's pipeline options (:func:`mmentail.beam_options.pipeline_options`).
    """
    rows = [{**row, "split": split, "row": r} for split, part in parts.items()
            for r, row in enumerate(part.to_dict("records"))]
    with beam.Pipeline(options=options) as pipeline:
        _ = (pipeline
             | "rows" >> beam.Create(rows, reshuffle=True)
             | "examples" >> beam.Map(_keyed_example, num_shards)
             | "group shards" >> beam.GroupByKey()
             | "write shards" >> beam.Map(_write_shard, str(directory), num_shards))
    for split in parts:  # shards no row went to (a split smaller than num_shards)
        for path in shard_paths(directory, split, num_shards):
            if not Path(path).exists():
                tf.io.TFRecordWriter(path).close()
