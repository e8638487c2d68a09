"""Fingerprints of inputs, so that caches are reused exactly when their inputs are unchanged.

A file is identified by its absolute path, size and modification time (cheap,
and any rewrite changes the time); a directory by all its files; a URL by
itself. A split of pairs by its rows and its image files.

Example:
    >>> digest({"rows": "abc", "handle": handle_identity("https://tfhub.dev/x")})
    '46127635dd645fc6f92939b4cd635440'
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

_ROW_COLUMNS = ("id_1", "text_1", "id_2", "text_2", "label")


def file_identity(path: str | Path) -> list[Any]:
    """[absolute path, size, mtime in ns] of a file, or that of every file below a directory."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        return [file_identity(p) for p in sorted(path.rglob("*")) if p.is_file()]
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def handle_identity(handle: str | None) -> Any:
    """A URL (or None, or a name like "imagenet") as itself; a local path by its files."""
    if handle is None or "://" in handle and not handle.startswith("file://"):
        return handle
    local = Path(handle.removeprefix("file://")).expanduser()
    return file_identity(local) if local.exists() else handle


def rows_fingerprint(df: pd.DataFrame) -> str:
    """SHA-256 of a split's rows (ids, texts, labels, order) and of its image files."""
    hasher = hashlib.sha256()
    columns = [c for c in _ROW_COLUMNS if c in df.columns]
    hasher.update(df[columns].to_csv(index=False).encode())
    for column in ("image_1_path", "image_2_path"):
        if column in df.columns:
            for path in df[column]:
                hasher.update(json.dumps(file_identity(path)).encode())
    return hasher.hexdigest()


def weights_digest(weights: Sequence[Any]) -> str:
    """SHA-256 of the values and shapes of model weights (variables or arrays)."""
    hasher = hashlib.sha256()
    for weight in weights:
        value = np.asarray(weight)
        hasher.update(repr((value.shape, value.dtype.str)).encode())
        hasher.update(np.ascontiguousarray(value).tobytes())
    return hasher.hexdigest()


def digest(key: Any) -> str:
    """A short stable hex digest of a JSON-able key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
