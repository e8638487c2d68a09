"""`.npy` arrays written a batch at a time and read a few rows at a time, never mapped.

The feature cache keeps each split's encoder features in `.npy` files. Memory
maps would serve, but every page a map touches counts in the process's resident
memory until the map goes: after one epoch over a 100k-pair split, its 1.4 GB of
ResNet50V2 features would. Written with `write` and read with `os.pread`, the
rows stay in the kernel's page cache, which the process does not hold.

Example:
    with RowWriter("text.npy", count=3, row_shape=(2,)) as out:
        out.append(np.ones((2, 2), np.float32))
        out.append(np.zeros((1, 2), np.float32))
    RowFile("text.npy")[[2, 0]]   # array([[0., 0.], [1., 1.]], dtype=float32)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

# The most bytes one `pread` asks for (Linux returns at most ~2 GB a call).
_READ_LIMIT = 256 << 20


class RowWriter:
    """Writes a `.npy` file of `count` rows of `row_shape`, appended in order.

    Raises:
        ValueError: on close, when other than `count` rows were appended.
    """

    def __init__(self, path: str | Path, count: int, row_shape: tuple[int, ...],
                 dtype: Any = np.float32):
        self.count, self.row_shape, self.dtype = count, tuple(row_shape), np.dtype(dtype)
        self.written = 0
        self._file = open(path, "wb")
        header = np.lib.format.header_data_from_array_1_0(
            np.empty((0, *self.row_shape), self.dtype))
        header["shape"] = (count, *self.row_shape)
        np.lib.format.write_array_header_1_0(self._file, header)

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, self.dtype)
        if rows.shape[1:] != self.row_shape or self.written + len(rows) > self.count:
            raise ValueError(f"cannot append {rows.shape} after {self.written} rows to "
                             f"{self.count} rows of {self.row_shape}")
        self._file.write(rows.tobytes())
        self.written += len(rows)

    def close(self) -> None:
        self._file.close()
        if self.written != self.count:
            raise ValueError(f"wrote {self.written} rows, expected {self.count}")

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, kind, *_: Any) -> None:
        if kind is None:
            self.close()
        else:
            self._file.close()


class RowFile:
    """The rows of a `.npy` file, read when indexed (an int, a slice or an index array).

    Consecutive indices are read with one `pread`; `np.asarray(rows)` reads all.
    The file stays open, so its rows remain readable after it is unlinked.
    """

    def __init__(self, path: str | Path):
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, self.dtype = read_header(f)
            self._offset = f.tell()
        if fortran_order or not shape:
            raise ValueError(f"{path}: expected a C-ordered array of rows")
        self.shape = shape
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            at = np.arange(*key.indices(len(self)))
        else:
            at = np.asarray(key, dtype=np.int64)
            at = np.where(at < 0, at + len(self), at)
            if at.size and (at.min() < 0 or at.max() >= len(self)):
                raise IndexError(f"index out of range for {len(self)} rows")
        rows = np.empty((at.size, *self.shape[1:]), self.dtype)
        flat = at.reshape(-1)
        run_starts = np.flatnonzero(np.diff(flat, prepend=-2) != 1)
        for start, end in zip(run_starts, [*run_starts[1:], flat.size]):
            self._read_run(int(flat[start]), rows[start:end])
        return rows.reshape(*at.shape, *self.shape[1:])

    def _read_run(self, first: int, into: np.ndarray) -> None:
        """Rows `first`.. into `into` (as many as it holds), a bounded read at a time."""
        buffer = memoryview(into.reshape(-1).view(np.uint8))
        position = self._offset + first * self._row_bytes
        done = 0
        while done < len(buffer):
            read = os.preadv(self._fd, [buffer[done:done + _READ_LIMIT]], position + done)
            if not read:
                raise OSError(f"unexpected end of file after {done} bytes")
            done += read

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
