"""Sharded TFRecords of post pairs, for data larger than one machine's memory.

`mmentail-write-tfrecords` validates a pairs CSV, splits it as training does
(:func:`mmentail.data.split_pairs`, same seed, same rows) and writes, into one
directory, written atomically:

- `<split>-<i>-of-<n>.tfrecord` for split in train, val, test: `tf.train.Example`
  records, row `r` of a split in shard `r % n`, with the features

  | feature | type | content |
  | --- | --- | --- |
  | `id_1`, `id_2` | bytes | post ids |
  | `text_1`, `text_2` | bytes | UTF-8 post texts |
  | `image_1`, `image_2` | bytes | the image files' bytes, as stored (JPEG, PNG, GIF, BMP, WebP) |
  | `image_1_file`, `image_2_file` | bytes | the image files' names, for error messages |
  | `label` | bytes | Contradictory, Implies or NoEntailment |
  | `label_idx` | int64 | the label's index in :data:`mmentail.data.LABELS` |

- `<split>.csv`: the split's rows without image bytes (ids, texts, URLs,
  labels), small enough for memory; training reads labels and counts from it.
- `manifest.json`: format version, seed, shard count, rows and label counts per split.

Reading the shards of a split round-robin (interleave with one record from each
shard in turn) gives back the rows in the CSV's order, so a TFRecord run
evaluates exactly the examples, in the same order, as a CSV run. Training
reads take `MAX_OPEN_SHARDS` shards at a time (and, uncached, in a
new shard order every epoch): the same examples, in another order once there
are more shards than that.

Example:
    mmentail-write-tfrecords --data-csv pairs.csv --image-dir images/ --output shards/ --shards 16
    mmentail-train --preset keras-io --data-tfrecords shards/

With `--runner` (and Beam's options), the shards are written by an Apache
Beam pipeline: the same files (:mod:`mmentail.data.tfrecord_beam`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pandas as pd
import tensorflow as tf

from mmentail.beam_options import add_runner_flag, parse_with_pipeline_args, pipeline_options
from mmentail.cli import run_command
from mmentail.data.pairs import read_pairs
from mmentail.data.split import label_counts, split_pairs
from mmentail.errors import ConfigError, MissingFileError
from mmentail.io_utils import atomic_directory, atomic_write_json, atomic_write_text
from mmentail.progress import Progress
from mmentail.schema import COLUMNS, SPLITS

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions

FORMAT_VERSION = 1
_BYTES = ("id_1", "id_2", "text_1", "text_2", "image_1", "image_2", "image_1_file",
          "image_2_file", "label")
# Shards a shuffled (training) read reads from at once.
MAX_OPEN_SHARDS = 8
FEATURES = {**{name: tf.io.FixedLenFeature([], tf.string) for name in _BYTES},
            "label_idx": tf.io.FixedLenFeature([], tf.int64)}


def example_bytes(row: Mapping[str, Any]) -> bytes:
    """One row (with its `image_*_path` and `label_idx`) as a serialized `tf.train.Example`,
    the image files' bytes read as stored; serialized deterministically (features in name
    order), so the same row gives the same bytes in any process."""
    values = {name: str(row[name]).encode() for name in ("id_1", "id_2", "text_1", "text_2",
                                                         "label")}
    for key in ("image_1", "image_2"):
        path = Path(row[f"{key}_path"])
        values[key] = path.read_bytes()
        values[f"{key}_file"] = path.name.encode()
    feature = {name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
               for name, value in values.items()}
    feature["label_idx"] = tf.train.Feature(
        int64_list=tf.train.Int64List(value=[int(row["label_idx"])]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def shard_paths(directory: str | Path, split: str, num_shards: int) -> list[str]:
    """The shard files of `split`, in shard order."""
    return [str(Path(directory) / f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord")
            for i in range(num_shards)]


def write_split(df: pd.DataFrame, directory: str | Path, split: str, num_shards: int) -> None:
    """Writes a split's rows (with `image_*_path` columns) into `num_shards` shards."""
    writers = [tf.io.TFRecordWriter(path) for path in shard_paths(directory, split, num_shards)]
    progress = Progress(f"writing the {split} shards", len(df), "row")
    try:
        for r, (_, row) in enumerate(df.iterrows()):
            writers[r % num_shards].write(example_bytes(row))
            progress.add(1)
    finally:
        for writer in writers:
            writer.close()


def write_tfrecords(csv_path: str | Path, image_dir: str | Path, output: str | Path, *,
                    num_shards: int = 8, seed: int = 42,
                    pipeline_options: PipelineOptions | None = None) -> dict:
    """Validates, splits and writes a pairs CSV as sharded TFRecords; returns the manifest.

    Args:
        csv_path: pairs CSV (see :func:`mmentail.data.read_pairs`).
        image_dir: folder of `<id>.<ext>` images.
        output: directory to write (replaced atomically).
        num_shards: shards per split; use at least the number of workers that
            will read them, so each worker gets whole files.
        seed: split seed; train with the same `--seed`.
        pipeline_options: write the shards with an Apache Beam pipeline run with
            these options (:mod:`mmentail.data.tfrecord_beam`: the same files);
            default: in this process.
    """
    if num_shards < 1:
        raise ConfigError(f"num_shards must be at least 1, got {num_shards}")
    pairs = read_pairs(csv_path, image_dir)
    parts = dict(zip(SPLITS, split_pairs(pairs, seed=seed)))
    manifest = {"format": FORMAT_VERSION, "source": str(csv_path), "seed": seed,
                "num_shards": num_shards, "splits": {}}
    with atomic_directory(output) as tmp:
        if pipeline_options is not None:
            from mmentail.data.tfrecord_beam import write_splits_beam

            write_splits_beam(parts, tmp, num_shards, pipeline_options)
        for split, part in parts.items():
            if pipeline_options is None:
                write_split(part, tmp, split, num_shards)
            atomic_write_text(tmp / f"{split}.csv", part[list(COLUMNS)].to_csv(index=False))
            manifest["splits"][split] = {"rows": len(part), "labels": label_counts(part)}
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


def parse_example(record: tf.Tensor) -> dict[str, tf.Tensor]:
    """One serialized record -> dict of the :data:`FEATURES`."""
    return tf.io.parse_single_example(record, FEATURES)


def read_records(files: Sequence[str], *, deterministic: bool = True,
                 open_shards: int | None = None,
                 file_order: tf.data.Dataset | None = None) -> tf.data.Dataset:
    """Parsed examples from `files`, read in parallel, one record per open shard in turn.

    By default every shard is open at once and read round-robin, which gives
    back the writer's row order (see module doc): evaluation and prediction
    pair their outputs with the split's rows. A read that is shuffled
    afterwards (training) passes `open_shards`: that many files are read at
    once (the parallel reader opens up to twice as many ahead), so thousands
    of shards take a bounded number of file handles and read buffers. Under
    tf.distribute with several workers, the files are split among them.

    Args:
        files: the shards, in shard order.
        deterministic: keep the order under parallel reads.
        open_shards: read this many shards at once; None: all.
        file_order: the files in the order to read them (e.g. shuffled every
            pass, :func:`mmentail.pipeline.shuffle.shuffled_files`); default `files`.

    Example:
        read_records(shard_paths("shards", "train", 64), open_shards=MAX_OPEN_SHARDS)
    """
    files = list(files)
    if not files:
        raise ValueError("no TFRecord files given")
    cycle = len(files) if open_shards is None else max(1, min(open_shards, len(files)))
    ds = tf.data.Dataset.from_tensor_slices(files) if file_order is None else file_order
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=cycle, block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=deterministic)
    return ds.map(parse_example, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=deterministic)


def read_splits(directory: str | Path) -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """{split: (its rows without image bytes, its shard files)} of a directory written here."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise MissingFileError(f"{directory} has no manifest.json: not written by "
                                "mmentail-write-tfrecords")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise MissingFileError(f"{manifest_path}: format {manifest.get('format')!r}, "
                         f"this version reads format {FORMAT_VERSION}")
    splits = {}
    for split in SPLITS:
        files = shard_paths(directory, split, manifest["num_shards"])
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise MissingFileError(f"{directory}: missing shard(s) {missing}")
        splits[split] = (read_pairs(directory / f"{split}.csv"), files)
    return splits


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmentail-write-tfrecords",
        description="Write a pairs CSV and its images as sharded TFRecords, split as "
                    "mmentail-train splits it.")
    parser.add_argument("--data-csv", required=True, help="pairs CSV")
    parser.add_argument("--image-dir", help="folder of <id>.<ext> images "
                                            "(default: images/ beside the CSV)")
    parser.add_argument("--output", required=True, help="directory to write")
    parser.add_argument("--shards", type=int, default=8, help="shards per split (default 8)")
    parser.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    add_runner_flag(parser)

    def write(args: argparse.Namespace) -> int:
        image_dir = args.image_dir or Path(args.data_csv).parent / "images"
        options = (None if args.runner is None
                   else pipeline_options(args.runner, args.pipeline_args, verbose=args.verbose))
        manifest = write_tfrecords(args.data_csv, image_dir, args.output,
                                   num_shards=args.shards, seed=args.seed,
                                   pipeline_options=options)
        for split, info in manifest["splits"].items():
            print(f"{split}: {info['rows']} rows in {args.shards} shards")
        print(f"written to {args.output}")
        return 0

    return run_command(parser, write, argv, parse=parse_with_pipeline_args)


if __name__ == "__main__":
    sys.exit(main())
