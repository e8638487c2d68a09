"""Reading, validating and splitting CSVs of post pairs.

The CSV schema is the Recognizing Multimodal Entailment one:
`id_1,text_1,image_1,id_2,text_2,image_2,label`. Each image lives at
`<image_dir>/<id>.<extension of the image URL>`. Every row is checked up front
and all problems are reported together, with row numbers, so a bad file costs
one run, not one run per problem.

Example:
    >>> pairs = read_pairs("pairs.csv", image_dir="images")
    >>> train, val, test = split_pairs(pairs, seed=42)
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pandas as pd
from sklearn.model_selection import train_test_split

LABELS = ("Contradictory", "Implies", "NoEntailment")
COLUMNS = ("id_1", "text_1", "image_1", "id_2", "text_2", "image_2", "label")
_ID = re.compile(r"^\d+$")

log = logging.getLogger(__name__)


class DataError(ValueError):
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


def image_extension(url: str) -> str:
    """The extension of an image URL's path, lower-cased and without the dot ('' if none)."""
    return PurePosixPath(urlparse(url).path).suffix.lower().lstrip(".")


def read_pairs(csv_path: str | Path, image_dir: str | Path | None = None, *,
               skip_bad_rows: bool = False,
               report: ReadReport | None = None) -> pd.DataFrame:
    """Reads and validates a pairs CSV.

    Args:
        csv_path: the CSV file.
        image_dir: folder with the images. `None` skips the image checks and
            paths (text-only use).
        skip_bad_rows: drop invalid rows (logged and counted in `report`)
            instead of raising.
        report: filled in with counts and the skipped rows' reasons.

    Returns:
        The rows with ids and texts as strings, plus `label_idx` and, when
        `image_dir` is given, `image_1_path` and `image_2_path`.

    Raises:
        DataError: listing every problem, unless `skip_bad_rows`.
    """
    source = str(csv_path)
    raw = Path(csv_path).read_bytes()
    try:
        decoded = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(source, [f"line {line}: not valid UTF-8 ({e.reason})"]) from None
    try:
        df = pd.read_csv(io.StringIO(decoded), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as e:
        raise DataError(source, [f"malformed CSV: {e}"]) from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(source, [f"missing column(s) {missing}; expected {list(COLUMNS)}"])
    df = df.reset_index(drop=True)

    bad: dict[int, list[str]] = {}
    image_paths = {1: [], 2: []}
    seen_pairs: dict[tuple[str, str], int] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        row = row._asdict()
        problems = []
        for side in (1, 2):
            post_id = row[f"id_{side}"].strip()
            if not _ID.match(post_id):
                hint = " (looks like a float: the id lost its digits)" if re.match(
                    r"^[\d.]+[eE][+-]?\d+$", post_id) else ""
                problems.append(f"id_{side} {post_id!r} is not an integer id{hint}")
            if not row[f"text_{side}"].strip():
                problems.append(f"text_{side} is empty")
            ext = image_extension(row[f"image_{side}"])
            if not ext:
                problems.append(f"image_{side} URL {row[f'image_{side}']!r} has no extension")
            path = Path(image_dir) / f"{post_id}.{ext}" if image_dir is not None else None
            if path is not None and ext and not path.is_file():
                problems.append(f"image_{side} file {path} not found")
            image_paths[side].append(str(path) if path is not None else "")
        if row["label"] not in LABELS:
            problems.append(f"unknown label {row['label']!r}; expected one of {list(LABELS)}")
        key = (row["id_1"].strip(), row["id_2"].strip())
        if key in seen_pairs:
            problems.append(f"duplicate pair {key[0]}/{key[1]} (first seen in row "
                            f"{seen_pairs[key] + 1})")
        else:
            seen_pairs[key] = i
        if problems:
            bad[i] = problems

    messages = [f"row {i + 1} (ids {df.at[i, 'id_1']}/{df.at[i, 'id_2']}): {p}"
                for i, problems in bad.items() for p in problems]
    if bad and not skip_bad_rows:
        raise DataError(source, messages)
    for message in messages:
        log.warning("skipping %s", message)

    df["id_1"] = df["id_1"].str.strip()
    df["id_2"] = df["id_2"].str.strip()
    if image_dir is not None:
        df["image_1_path"] = image_paths[1]
        df["image_2_path"] = image_paths[2]
    df = df.drop(index=list(bad)).reset_index(drop=True)
    df["label_idx"] = df["label"].map(LABELS.index).astype("int64")
    if report is not None:
        report.rows_read = len(df) + len(bad)
        report.rows_kept = len(df)
        report.skipped = messages
    if df.empty:
        raise DataError(source, ["no valid rows"])
    return df


def split_pairs(df: pd.DataFrame, seed: int = 42, test_size: float = 0.1,
                val_size: float = 0.05) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Stratified train/val/test split, as in the keras.io example.

    `test_size` of all rows go to test, then `val_size` of the rest to
    validation, each stratified by label with `random_state=seed`. With the
    defaults this reproduces the keras.io example's rows exactly.
    """
    rest, test = train_test_split(df, test_size=test_size, stratify=df["label"].values,
                                  random_state=seed)
    train, val = train_test_split(rest, test_size=val_size, stratify=rest["label"].values,
                                  random_state=seed)
    return train, val, test


def label_counts(df: pd.DataFrame) -> dict[str, int]:
    """Rows per label, in :data:`LABELS` order (zeros included)."""
    counts = df["label"].value_counts()
    return {label: int(counts.get(label, 0)) for label in LABELS}
