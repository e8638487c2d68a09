"""RowWriter and RowFile: rows appended and read back by index, and none held in memory."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mmentail.training.row_files import RowFile, RowWriter


def _written(path: Path, values: np.ndarray, batch: int = 3) -> Path:
    with RowWriter(path, len(values), values.shape[1:], values.dtype) as out:
        for start in range(0, len(values), batch):
            out.append(values[start:start + batch])
    return path


def test_rows_read_back_by_int_slice_and_index_array(tmp_path):
    values = np.arange(10 * 2 * 3, dtype=np.float32).reshape(10, 2, 3)
    rows = RowFile(_written(tmp_path / "a.npy", values))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), values)  # a plain .npy file
    assert rows.shape == (10, 2, 3) and len(rows) == 10 and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[4], values[4])
    np.testing.assert_array_equal(rows[2:9:3], values[2:9:3])
    at = np.array([7, 8, 9, 0, -1, 3, 4])  # runs and jumps, a negative index
    np.testing.assert_array_equal(rows[at], values[at])
    np.testing.assert_array_equal(rows[np.array([], np.int64)], values[:0])
    np.testing.assert_array_equal(np.asarray(rows), values)
    with pytest.raises(IndexError):
        rows[np.array([10])]


def test_a_wrong_row_count_or_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="wrote 2 rows, expected 3"):
        with RowWriter(tmp_path / "short.npy", 3, (4,)) as out:
            out.append(np.zeros((2, 4)))
    with RowWriter(tmp_path / "wide.npy", 3, (4,)) as out:
        with pytest.raises(ValueError, match="cannot append"):
            out.append(np.zeros((1, 5)))
        out.append(np.zeros((3, 4)))


def test_rows_stay_readable_after_unlink_and_are_not_held_in_memory(tmp_path):
    """8 MB of rows read twice over add (almost) nothing to this process's resident set:
    they are read into the batch asked for, not mapped."""
    values = np.random.default_rng(0).random((2048, 1024), dtype=np.float32)
    rows = RowFile(_written(tmp_path / "big.npy", values, batch=256))
    os.unlink(tmp_path / "big.npy")

    def resident_kb() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("RssFile:")))

    before = resident_kb()
    for _ in range(2):
        for start in range(0, 2048, 64):
            np.testing.assert_array_equal(rows[np.arange(start, start + 64)],
                                          values[start:start + 64])
    assert resident_kb() - before < 1024  # file-backed pages: a memory map would add 8 MB
