"""What encoded image bytes claim to be, read from their headers without decoding them.

Decoding can cost unbounded memory (a 100 kB PNG can claim 100000 x 100000
pixels) and a decode error deep in a tf.data pipeline has lost the file's name.
So the size an image claims is read from its header and checked against
:data:`MAX_IMAGE_PIXELS` before any decode, in the graph (:func:`header_size`,
used by training and serving alike), and every training image file is checked
up front, with its name, by :func:`image_file_problems` (a batch of headers
read by one TensorFlow call, not one call per file).

Example:
    >>> image_file_problem("images/1375936088968200205.jpg")  # a file that is not there
    'not found'
"""

from __future__ import annotations

import concurrent.futures
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from mmentail.schema import MAX_IMAGE_PIXELS

# Leading bytes of each supported format, in the order of the branches of header_size.
IMAGE_MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n", "GIF": b"GIF8",
               "BMP": b"BM", "WebP": b"RIFF"}
# Bytes a format needs further on, as (offset, bytes): RIFF also holds WAV and AVI.
_MAGIC_FURTHER = {"WebP": (8, b"WEBP")}
FORMAT_NAMES = "JPEG, PNG, GIF, BMP or WebP"
_HEAD = 32
# Bytes of a PNG searched for the chunks before its image data.
_PNG_CHUNK_WINDOW = 1 << 16


def image_format(data: bytes) -> str | None:
    """'JPEG', 'PNG', 'GIF', 'BMP' or 'WebP' from the leading bytes, else None."""
    def matches(name: str, magic: bytes) -> bool:
        offset, further = _MAGIC_FURTHER.get(name, (0, b""))
        return data.startswith(magic) and data[offset:offset + len(further)] == further

    return next((name for name, magic in IMAGE_MAGIC.items() if matches(name, magic)), None)


def format_index(image_bytes: tf.Tensor) -> tf.Tensor:
    """Scalar int32: the position of the bytes' format in :data:`IMAGE_MAGIC`, or its length."""
    head = _padded_head(image_bytes)  # substr fails past the end of a short string

    def matches(name: str, magic: bytes) -> tf.Tensor:
        offset, further = _MAGIC_FURTHER.get(name, (0, b""))
        return tf.logical_and(tf.strings.substr(head, 0, len(magic)) == magic,
                              tf.strings.substr(head, offset, len(further)) == further)

    matches = tf.stack([matches(name, magic) for name, magic in IMAGE_MAGIC.items()])
    return tf.cast(tf.argmax(tf.concat([matches, [True]], 0)), tf.int32)


def _padded_head(image_bytes: tf.Tensor) -> tf.Tensor:
    """The first bytes, zero-padded so every header field can be read."""
    return tf.strings.join([tf.strings.substr(image_bytes, 0, _HEAD), "\0" * _HEAD])


def header_size(image_bytes: tf.Tensor, fmt: tf.Tensor | None = None) -> tf.Tensor:
    """(height, width) as int64 [2], read from the header of one encoded image.

    JPEG sizes come from `tf.image.extract_jpeg_shape`, PNG, GIF, BMP and WebP
    sizes from their fixed header fields; unknown formats give (0, 0). A JPEG whose
    header is corrupt raises `InvalidArgumentError`.

    Args:
        image_bytes: scalar string, the encoded image.
        fmt: its :func:`format_index`, when the caller has it already.
    """
    head = _padded_head(image_bytes)

    def field(offset: int, length: int, big_endian: bool) -> tf.Tensor:
        raw = tf.io.decode_raw(tf.strings.substr(head, offset, length), tf.uint8)
        weights = 256 ** np.arange(length, dtype=np.int64)
        return tf.reduce_sum(tf.cast(raw, tf.int64) * (weights[::-1] if big_endian else weights))

    def bmp() -> tf.Tensor:
        height = field(22, 4, False)  # signed: negative for top-down rows
        return tf.stack([tf.where(height >= 2 ** 31, 2 ** 32 - height, height),
                         field(18, 4, False)])

    def webp() -> tf.Tensor:
        chunk = tf.strings.substr(head, 12, 4)
        lossy = tf.stack([field(28, 2, False) % 2 ** 14, field(26, 2, False) % 2 ** 14])
        bits = field(21, 4, False)  # lossless: 14 bits of width - 1, then of height - 1
        lossless = tf.stack([bits // 2 ** 14 % 2 ** 14 + 1, bits % 2 ** 14 + 1])
        extended = tf.stack([field(27, 3, False) + 1, field(24, 3, False) + 1])
        unknown = tf.zeros([2], tf.int64)
        return tf.where(chunk == "VP8 ", lossy, tf.where(
            chunk == "VP8L", lossless, tf.where(chunk == "VP8X", extended, unknown)))

    branches = [lambda: tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2], tf.int64),
                lambda: tf.stack([field(20, 4, True), field(16, 4, True)]),
                lambda: tf.stack([field(8, 2, False), field(6, 2, False)]),
                bmp,
                webp,
                lambda: tf.zeros([2], tf.int64)]
    return tf.switch_case(format_index(image_bytes) if fmt is None else fmt, branches)


def png_may_be_transparent(image_bytes: tf.Tensor) -> tf.Tensor:
    """Scalar bool for one PNG: False only when its header rules transparency out.

    A PNG is opaque when its colour type (IHDR byte 25) has no alpha channel (0
    grey, 2 RGB, 3 palette) and no `tRNS` chunk comes before its image data. Such
    a PNG can be decoded as RGB, skipping the alpha channel and the check of every
    pixel's opacity (a fifth of a 1200x675 photo's decoding time). Only the first
    `_PNG_CHUNK_WINDOW` bytes are searched: a PNG whose image data starts later
    counts as possibly transparent.
    """
    head = _padded_head(image_bytes)
    colour_type = tf.io.decode_raw(tf.strings.substr(head, 25, 1), tf.uint8)[0]
    before_data = tf.strings.split(tf.strings.substr(image_bytes, 0, _PNG_CHUNK_WINDOW), "IDAT",
                                   maxsplit=1)
    opaque = tf.reduce_all([
        tf.reduce_any(colour_type == tf.constant([0, 2, 3], tf.uint8)),
        tf.size(before_data) == 2,  # the image data starts inside the window
        tf.size(tf.strings.split(before_data[0], "tRNS", maxsplit=1)) == 1])
    return tf.logical_not(opaque)


# Traced once (op by op in eager mode is ~10x slower), and called on batches: one
# call per file costs more than reading its header.
_header_sizes_of_bytes = tf.function(
    lambda batch: tf.map_fn(header_size, batch, fn_output_signature=tf.TensorSpec([2], tf.int64)),
    input_signature=[tf.TensorSpec([None], tf.string)])
_CHECK_BATCH = 256
_CHECK_THREADS = 4


def _truncation(fmt: str, data: bytes) -> str | None:
    """Why a complete-looking `fmt` file is cut short, or None if it ends as it should."""
    if fmt == "JPEG" and not _jpeg_reaches_end(data):
        return "no end-of-image marker"
    if fmt == "PNG" and data.rfind(b"IEND") < 0:
        return "no IEND chunk"
    if fmt == "GIF" and not data.rstrip(b"\0").endswith(b";"):
        return "no trailer byte"
    if fmt == "BMP" and len(data) < int.from_bytes(data[2:6], "little"):
        return f"{len(data)} of {int.from_bytes(data[2:6], 'little')} bytes"
    if fmt == "WebP" and len(data) < 8 + int.from_bytes(data[4:8], "little"):
        return f"{len(data)} of {8 + int.from_bytes(data[4:8], 'little')} bytes"
    return None


# In a JPEG's scan data, the 0xFF that starts the next marker: not a stuffed 0xFF 0x00
# and not a restart marker 0xFF 0xD0-0xD7, which both belong to the scan.
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7]")


def _jpeg_reaches_end(data: bytes) -> bool:
    """Walks the JPEG's segments and entropy-coded scans up to the end-of-image marker."""
    pos = 2
    while pos + 1 < len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2:
            return False
        pos += 2 + length
        if marker == 0xDA:  # scan data, searched in C: a photo's holds thousands of 0xFF
            found = _MARKER_AFTER_SCAN.search(data, pos)
            if found is None:
                return False
            pos = found.start()
    return False


def image_file_problem(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Checks an image file without decoding it; returns what is wrong, or None.

    Catches missing and empty files, files that are no JPEG/PNG/GIF/BMP/WebP
    whatever their extension, sizes over `max_pixels` and files cut short.

    Args:
        path: the image file.
        max_pixels: largest height x width accepted.
    """
    return image_file_problems([path], max_pixels)[0]


def image_file_problems(paths: Sequence[str | Path], max_pixels: int = MAX_IMAGE_PIXELS,
                        on_checked: Callable[[int], Any] | None = None) -> list[str | None]:
    """:func:`image_file_problem` of every file, the headers read `_CHECK_BATCH` at a time.

    Batches are checked on a thread per core (at most `_CHECK_THREADS`, each
    holding one batch's bytes): reading the files and the TensorFlow call release
    the GIL, so the cores share the work (2.5 s -> 1.2 s for 2,800 photos of
    ~0.5 MB on 2 cores).

    Args:
        paths: the image files.
        max_pixels: largest height x width accepted.
        on_checked: called with the number of files each batch checked (progress).
    """
    def check(start: int) -> list[str | None]:
        batch = [Path(path) for path in paths[start:start + _CHECK_BATCH]]
        found = {i: path.read_bytes() for i, path in enumerate(batch) if path.is_file()}
        problems: list[str | None] = ["not found"] * len(batch)
        for i, problem in zip(found, image_bytes_problems(list(found.values()), max_pixels)):
            problems[i] = problem
        return problems

    problems: list[str | None] = []
    threads = min(_CHECK_THREADS, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for batch_problems in pool.map(check, range(0, len(paths), _CHECK_BATCH)):
            problems.extend(batch_problems)
            if on_checked:
                on_checked(len(batch_problems))
    return problems


def image_bytes_problems(images: Sequence[bytes],
                         max_pixels: int = MAX_IMAGE_PIXELS) -> list[str | None]:
    """What is wrong with each of some encoded images, read from their headers, or None.

    The check of :func:`image_file_problem` for bytes, however they came (files,
    a request to the server): empty, no JPEG/PNG/GIF/BMP/WebP, over `max_pixels`,
    cut short. The headers are read by one TensorFlow call for the lot.

    Example:
        >>> image_bytes_problems([b"<html>"])
        ["is not a JPEG, PNG, GIF, BMP or WebP image (starts with b'<html>')"]
    """
    problems = [_format_problem(data) for data in images]
    readable = [i for i, problem in enumerate(problems) if problem is None]
    for i, size in zip(readable, _header_sizes([images[i] for i in readable])):
        problems[i] = _size_problem(images[i], size, max_pixels)
    return problems


def _format_problem(data: bytes) -> str | None:
    if not data:
        return "is empty (0 bytes)"
    if image_format(data) is None:
        return f"is not a {FORMAT_NAMES} image (starts with {data[:8]!r})"
    return None


def _header_sizes(images: list[bytes]) -> list[tuple[int, int] | None]:
    """(height, width) from each image's header; None where the header is corrupt.

    One call for the lot; a corrupt JPEG header fails the batch, whose images
    are then read one by one to tell which.
    """
    if not images:
        return []
    try:
        return [(int(h), int(w)) for h, w in _header_sizes_of_bytes(tf.constant(images)).numpy()]
    except tf.errors.InvalidArgumentError:
        if len(images) == 1:
            return [None]
        return [size for image in images for size in _header_sizes([image])]


def _size_problem(data: bytes, size: tuple[int, int] | None, max_pixels: int) -> str | None:
    """What is wrong with a known-format image of header size `size`, or None."""
    fmt = image_format(data)
    if size is None:
        return f"has a corrupt {fmt} header"
    height, width = size
    if height <= 0 or width <= 0:
        return f"has a corrupt {fmt} header (size {width}x{height})"
    if height * width > max_pixels:
        return f"is {width}x{height} pixels, over the limit of {max_pixels} pixels"
    cut = _truncation(fmt, data)
    return f"is a truncated {fmt} file ({cut})" if cut else None
