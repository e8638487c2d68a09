"""Reading and validating CSVs of post pairs and the image files they name.

The CSV schema is the Recognizing Multimodal Entailment one:
`id_1,text_1,image_1,id_2,text_2,image_2,label`. Each image lives at
`<image_dir>/<id>.<extension of the image URL>`. Every row and every image
file's header is checked up front and all problems are reported together, with
row numbers and file names, so a bad file costs one run, not one run per
problem, and never fails mid-epoch.

Example:
    pairs = read_pairs("pairs.csv", image_dir="images")
    pairs[["id_1", "label", "label_idx"]].head(1)
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import re
from pathlib import Path, PurePosixPath
from typing import Mapping
from urllib.parse import parse_qs, urlparse

import pandas as pd

from mmentail.data.images import image_file_problems
from mmentail.errors import MmentailError
from mmentail.progress import Progress
from mmentail.schema import COLUMNS, LABELS, MAX_IMAGE_PIXELS

_ID = re.compile(r"^\d+$")
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8

log = logging.getLogger(__name__)


class DataError(MmentailError, ValueError):
    """Raised with every problem found in a pairs CSV, one per line."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        shown = "\n".join(f"  - {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{source}: {len(problems)} problem(s):\n{shown}{more}")


@dataclasses.dataclass
class ReadReport:
    """What :func:`read_pairs` kept and what it skipped (with `skip_bad_rows`)."""

    rows_read: int = 0
    rows_kept: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)
    # Row numbers (1 = the first row after the header) of the rows dropped.
    skipped_rows: list[int] = dataclasses.field(default_factory=list)


def image_extension(url: str) -> str:
    """The image type a URL names, lower-cased, without the dot ('' if none).

    Taken from the path's extension, else from a `format=` query parameter
    (`https://pbs.twimg.com/media/Ex?format=jpg&name=small`).
    """
    parsed = urlparse(url)
    ext = PurePosixPath(parsed.path).suffix.lower().lstrip(".")
    return ext or parse_qs(parsed.query).get("format", [""])[0].lower()


def read_pairs(csv_path: str | Path, image_dir: str | Path | None = None, *,
               skip_bad_rows: bool = False, report: ReadReport | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS,
               labels_required: bool = True) -> pd.DataFrame:
    """Reads and validates a pairs CSV, and every image file it names.

    Rows are checked for ids (integers, not floats that lost digits), empty or
    "nan" texts, bytes that are not UTF-8, labels and duplicate pairs. Images are
    found as `<image_dir>/<id>.<extension of the URL>` (or the one `<id>.*`
    file when the URL has no extension) and their headers are checked with
    :func:`mmentail.data.images.image_file_problems`, so a missing, empty, truncated,
    oversized or non-image file is reported with its name before training.
    Extra columns are kept as they are.

    Args:
        csv_path: the CSV file.
        image_dir: folder with the images. `None` skips the image checks and
            paths (text-only use).
        skip_bad_rows: drop invalid rows (logged and counted in `report`)
            instead of raising.
        report: filled in with counts and the skipped rows' reasons.
        max_pixels: largest image (height x width) accepted.
        labels_required: with False, a CSV without a `label` column is read
            too (new pairs to label): its `label` is "" and `label_idx` -1. A
            `label` column that is there is checked either way.

    Returns:
        The rows with ids and texts as strings, plus `label_idx` and, when
        `image_dir` is given, `image_1_path` and `image_2_path`.

    Raises:
        DataError: listing every problem, unless `skip_bad_rows`; a file that
            is no CSV of this schema, or has no valid row, raises regardless.
    """
    source = str(csv_path)
    if image_dir is not None and not Path(image_dir).is_dir():
        raise DataError(source, [f"the image folder {image_dir} does not exist (give "
                                 "--image-dir, or put the images in images/ beside the CSV)"])
    df = read_table(csv_path, labels_required)
    labelled = "label" in df
    df = df if labelled else df.assign(label="")
    bad, image_paths = check_rows(df, image_dir, max_pixels, labelled)
    messages = [message for listed in problem_messages(df, bad).values() for message in listed]
    if bad and not skip_bad_rows:
        raise DataError(source, messages)
    for message in messages:
        log.warning("skipping %s", message)
    df["id_1"], df["id_2"] = df["id_1"].str.strip(), df["id_2"].str.strip()
    if image_dir is not None:
        df["image_1_path"], df["image_2_path"] = image_paths[1], image_paths[2]
    df = df.drop(index=list(bad)).reset_index(drop=True)
    df["label_idx"] = df["label"].map(LABELS.index).astype("int64") if labelled else -1
    if report is not None:
        report.rows_read, report.rows_kept, report.skipped = len(df) + len(bad), len(df), messages
        report.skipped_rows = [i + 1 for i in bad]
    if df.empty:
        raise DataError(source, ["no valid rows"] + messages)
    return df


def check_rows(df: pd.DataFrame, image_dir: str | Path | None,
               max_pixels: int = MAX_IMAGE_PIXELS, labelled: bool = True,
               first_rows: Mapping[int, int] | None = None
               ) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """The checks :func:`read_pairs` makes, on rows read as strings (a whole CSV or a
    batch of it): every row's problems and the image paths of both sides.

    Args:
        df: rows with the schema's columns, every cell a string, indexed by row
            position in the CSV (0 = the first row after the header).
        image_dir: folder with the images; `None` skips the image checks.
        max_pixels: largest image (height x width) accepted.
        labelled: check the `label` column.
        first_rows: {row index: index of the first row of the CSV with its pair}
            when `df` is only part of the CSV; default: found in `df`.

    Returns:
        ({row index: problems}, rows with none left out; {side: image paths in
        `df`'s order, "" where there is no image file}).

    Example:
        bad, paths = check_rows(batch, "images", first_rows={7: 7, 9: 7})
    """
    if first_rows is None:
        first_rows = first_rows_of_pairs(df)
    problems: dict[int, list[str]] = {}
    image_paths: dict[int, list[str]] = {1: [], 2: []}
    to_check: list[tuple[int, int, Path]] = []  # (row, side, file)
    for i, row in zip(df.index, df[list(COLUMNS)].itertuples(index=False)):
        problems[i] = _row_problems(row._asdict(), first_rows[i] if first_rows[i] != i else None,
                                    labelled)
        for side in (1, 2):
            post_id = getattr(row, f"id_{side}").strip()
            path, problem = _image_path(image_dir if _ID.match(post_id) else None, post_id,
                                        getattr(row, f"image_{side}"))
            if problem:
                problems[i].append(f"image_{side} {problem}")
            elif path is not None:
                to_check.append((i, side, path))
            image_paths[side].append(str(path) if path is not None else "")
    progress = Progress("checking image headers", len(to_check), "image")
    found = image_file_problems([path for _, _, path in to_check], max_pixels,
                                on_checked=progress.add)
    for (i, side, path), problem in zip(to_check, found):
        if problem:
            problems[i].append(f"image_{side} file {path} {problem}")
    return {i: listed for i, listed in problems.items() if listed}, image_paths


def pair_key(row: Mapping[str, str]) -> tuple[str, str]:
    """The pair a row names: its two ids, stripped."""
    return row["id_1"].strip(), row["id_2"].strip()


def first_rows_of_pairs(df: pd.DataFrame) -> dict[int, int]:
    """{row index: index of the first row of `df` with the same pair}."""
    first: dict[tuple[str, str], int] = {}
    return {i: first.setdefault(pair_key(row), i)
            for i, row in zip(df.index, df[["id_1", "id_2"]].to_dict("records"))}


def problem_messages(df: pd.DataFrame, bad: Mapping[int, list[str]]) -> dict[int, list[str]]:
    """{row index: its problems as :func:`read_pairs` reports them, `row N (ids a/b): ...`}."""
    return {i: [_printable(f"row {i + 1} (ids {df.at[i, 'id_1']}/{df.at[i, 'id_2']}): {p}")
                for p in problems] for i, problems in bad.items()}


def read_table(csv_path: str | Path, labels_required: bool = True,
               max_rows: int | None = None) -> pd.DataFrame:
    """The CSV's rows, every cell a string, under a header that has the schema's columns
    (`label` aside, unless `labels_required`); no check of the cells.

    Args:
        csv_path: the CSV file.
        labels_required: a missing `label` column is an error.
        max_rows: read only this many rows after the header (0: the header alone).

    Raises:
        DataError: an empty or malformed file, or columns missing or repeated.
    """
    source = str(csv_path)
    try:
        # Undecodable bytes are kept as surrogates and reported by row: cells are
        # Python strings (dtype object), since pandas' string dtype stores them in
        # Arrow when pyarrow is installed, which refuses surrogates. With
        # header=None a row with more fields than the header is an error: pandas
        # would otherwise take the first column as an index and shift the rest.
        table = pd.read_csv(csv_path, dtype=object, keep_default_na=False, header=None,
                            encoding="utf-8-sig", encoding_errors="surrogateescape",
                            nrows=None if max_rows is None else max_rows + 1)
    except pd.errors.EmptyDataError:
        raise DataError(source, ["the file is empty"]) from None
    except pd.errors.ParserError as e:
        raise DataError(source, [f"malformed CSV: {e}"]) from None
    header = [str(name).strip() for name in table.iloc[0]]
    missing = [c for c in COLUMNS if c not in header and (labels_required or c != "label")]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if missing or repeated:
        raise DataError(source, [f"missing column(s) {missing}, repeated column(s) {repeated}; "
                                 f"expected {list(COLUMNS)}"])
    return table.iloc[1:].set_axis(header, axis=1).reset_index(drop=True)


def _row_problems(row: dict[str, str], first_row: int | None,
                  labelled: bool = True) -> list[str]:
    """What is wrong with a row's cells (images aside); `first_row`: the index of an
    earlier row with the same pair, if any."""
    problems = [f"{column} is not valid UTF-8 ({_undecodable(value)})"
                for column, value in row.items() if _SURROGATE.search(value)]
    for side in (1, 2):
        post_id = row[f"id_{side}"].strip()
        if not _ID.match(post_id):
            hint = " (looks like a float: the id lost its digits)" if re.match(
                r"^[\d.]+[eE][+-]?\d+$", post_id) else ""
            problems.append(f"id_{side} {post_id!r} is not an integer id{hint}")
        text = row[f"text_{side}"].strip()
        if not text:
            problems.append(f"text_{side} is empty")
        elif text.lower() == "nan":
            problems.append(f"text_{side} is {text!r}, a missing value written out")
    if labelled and row["label"] not in LABELS:
        problems.append(f"unknown label {row['label']!r}; expected one of {list(LABELS)}")
    if first_row is not None:
        id_1, id_2 = pair_key(row)
        problems.append(f"duplicate pair {id_1}/{id_2} (first seen in row {first_row + 1})")
    return problems


def _printable(message: str) -> str:
    """`message` with undecodable bytes written as escapes, safe to print and log."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def _undecodable(value: str) -> str:
    """The bytes of `value` that are not UTF-8, as hex, e.g. 'byte 0xe9'."""
    found = [f"0x{ord(c) - 0xDC00:02x}" for c in _SURROGATE.findall(value)]
    return f"byte{'s' if len(found) > 1 else ''} {', '.join(found[:4])}"


def _image_path(image_dir: str | Path | None, post_id: str,
                url: str) -> tuple[Path | None, str | None]:
    """The image file of a post, or what stops finding it (None if nothing)."""
    if image_dir is None:
        return None, None
    ext = image_extension(url)
    if ext:
        return Path(image_dir) / f"{post_id}.{ext}", None
    found = sorted(Path(image_dir).glob(f"{glob.escape(post_id)}.*"))
    if len(found) != 1:
        return None, (f"URL {url!r} has no extension and {len(found)} files match "
                      f"{post_id}.* in {image_dir}")
    return found[0], None
