"""A corpus of bad pairs CSVs and image files.

Each case either loads correctly (and decodes to the right pixels), or fails
with a DataError naming the row and file, or, with `skip_bad_rows`, is dropped
and counted. Images are made with Pillow, small; the "huge" ones only claim
huge sizes in a header a few kB long.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from helpers import (
    TINY_IMAGE,
    TINY_SEQ,
    encode_image,
    random_image_bytes,
    save_image,
    train_args,
    write_csv,
)
from mmentail.data.images import image_file_problem
from mmentail.data.pairs import DataError, ReadReport, read_pairs
from mmentail.pipeline.dataset import make_dataset
from mmentail.pipeline.preprocess import decode_image

BAD_ROW = 4  # the case's row, after three good ones


def _row(i: int, **changes) -> dict:
    row = {"id_1": str(1375936088968200205 + 2 * i), "text_1": f"first post {i}",
           "image_1": f"http://pbs.example/media/a{i}.jpg",
           "id_2": str(1375936088968200206 + 2 * i), "text_2": f"second post {i}",
           "image_2": f"http://pbs.example/media/b{i}.png", "label": "Implies"}
    row.update(changes)
    return row


def png_claiming(width: int, height: int) -> bytes:
    """A valid, all-black 1-bit PNG of width x height, compressed to a few kB."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0,
                                                             0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header is patched to claim width x height."""
    data = bytearray(random_image_bytes(0, (16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode_image("red", (8, 8), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode_image("red", (8, 8), "BMP"))
    data[18:26] = struct.pack("<ii", width, -height)  # negative: top-down rows
    return bytes(data)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (12, 12), colour) for colour in ("red", "blue", "blue")]
    return save_image(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


_JPEG = random_image_bytes(1, (64, 48))
_PNG = random_image_bytes(2, (64, 48), "PNG")

# name -> (file name extension, bytes or None for no file, expected RGB mean or error regex)
IMAGE_CASES = {
    "missing file": ("jpg", None, "not found"),
    "zero bytes": ("jpg", b"", r"is empty \(0 bytes\)"),
    "truncated JPEG": ("jpg", _JPEG[:len(_JPEG) // 2],
                       r"is a truncated JPEG file \(no end-of-image"),
    "JPEG cut after its header": ("jpg", _JPEG[:700], "is a truncated JPEG"),
    "truncated PNG": ("png", _PNG[:len(_PNG) // 2], r"is a truncated PNG file \(no IEND"),
    "truncated GIF": ("gif", _animated_gif()[:-40], "is a truncated GIF"),
    "truncated BMP": ("bmp", encode_image("red", (20, 20), "BMP")[:300], "is a truncated BMP"),
    "corrupt JPEG header": ("jpg", b"\xff\xd8\xff\xe0" + b"\x13" * 200,
                            "has a corrupt JPEG header"),
    "HTML page saved as .jpg": ("jpg", b"<!DOCTYPE html><html>rate limited</html>",
                                r"is not a JPEG, PNG, GIF, BMP or WebP image "
                                r"\(starts with b'<!DOCTYP"),
    "huge PNG 10000x10000": ("png", png_claiming(10_000, 10_000),
                             "is 10000x10000 pixels, over the limit of 40000000"),
    "huge JPEG header": ("jpg", jpeg_claiming(60_000, 50_000), "is 60000x50000 pixels"),
    "huge GIF header": ("gif", gif_claiming(65_000, 65_000), "is 65000x65000 pixels"),
    "huge BMP header": ("bmp", bmp_claiming(30_000, 20_000), "is 30000x20000 pixels"),
    # Loaded: the expected mean colour after decoding.
    "PNG with alpha (transparent red)": ("png", encode_image((255, 0, 0, 0), mode="RGBA"),
                                         (255, 255, 255)),
    "PNG with half-transparent blue": ("png", encode_image((0, 0, 255, 128), mode="RGBA"),
                                       (127, 127, 255)),
    "palette PNG with transparency": (
        "png", save_image(Image.new("P", (10, 10), 0), "PNG", transparency=0), (255, 255, 255)),
    "grayscale PNG": ("png", encode_image(100, mode="L"), (100, 100, 100)),
    "grayscale JPEG": ("jpg", encode_image(100, fmt="JPEG", mode="L"), (100, 100, 100)),
    "CMYK JPEG (red)": ("jpg", encode_image((0, 255, 255, 0), fmt="JPEG", mode="CMYK"),
                        (255, 0, 0)),
    "16-bit PNG": ("png", save_image(Image.fromarray(np.full((10, 10), 40000, np.uint16)), "PNG"),
                   (156, 156, 156)),
    "animated GIF (first frame red)": ("gif", _animated_gif(), (255, 0, 0)),
    "PNG saved as .jpg": ("jpg", encode_image((0, 200, 0)), (0, 200, 0)),
    "BMP": ("bmp", encode_image((0, 0, 200), fmt="BMP"), (0, 0, 200)),
}


def _write_case(tmp_path: Path, rows: list[dict], image_cases: dict[int, tuple] = ()) -> Path:
    """Writes good images for every row but those `image_cases` replaces (row -> case)."""
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    for i, row in enumerate(rows):
        for side, ext in ((1, "jpg"), (2, "png")):
            (image_dir / f"{row[f'id_{side}'].strip()}.{ext}").write_bytes(
                encode_image("red", fmt="JPEG" if ext == "jpg" else "PNG"))
        if i in dict(image_cases):
            ext, data, _ = dict(image_cases)[i]
            target = image_dir / f"{row['id_1']}.jpg"
            target.unlink()
            if data is not None:
                target.with_suffix(f".{ext}").write_bytes(data)
    return image_dir


def _rows_with_case(case_row: dict) -> list[dict]:
    return [_row(0), _row(1), _row(2), case_row]


@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_image_case(name, tmp_path):
    ext, data, expected = IMAGE_CASES[name]
    rows = _rows_with_case(_row(3, image_1=f"http://pbs.example/media/x.{ext}"))
    image_dir = _write_case(tmp_path, rows, {3: IMAGE_CASES[name]})
    csv_path = write_csv(tmp_path / "pairs.csv", rows)
    if isinstance(expected, str):
        file_name = f"{rows[3]['id_1']}.{ext}"
        with pytest.raises(DataError, match=f"row {BAD_ROW} .*image_1 file .*{file_name} "
                                            f"{expected}") as caught:
            read_pairs(csv_path, image_dir)
        assert len(caught.value.problems) == 1  # the good rows raise nothing
        report = ReadReport()
        kept = read_pairs(csv_path, image_dir, skip_bad_rows=True, report=report)
        assert len(kept) == 3 and report.rows_read == 4 and len(report.skipped) == 1
        assert rows[3]["id_1"] not in set(kept["id_1"])
    else:
        pairs = read_pairs(csv_path, image_dir)
        path = pairs.loc[3, "image_1_path"]
        assert path.endswith(f".{ext}")
        image = decode_image(tf.constant(Path(path).read_bytes()), (8, 8), path)
        np.testing.assert_allclose(image.numpy().mean(axis=(0, 1)), expected, atol=3)


def test_loadable_images_go_through_the_training_pipeline(tmp_path):
    loadable = {name: case for name, case in IMAGE_CASES.items()
                if not isinstance(case[2], str)}
    rows = [_row(i, image_1=f"http://pbs.example/media/x.{case[0]}")
            for i, case in enumerate(loadable.values())]
    image_dir = _write_case(tmp_path, rows, dict(enumerate(loadable.values())))
    pairs = read_pairs(write_csv(tmp_path / "pairs.csv", rows), image_dir)
    ds = make_dataset(pairs, None, image_size=(TINY_IMAGE, TINY_IMAGE), seq_length=TINY_SEQ,
                      batch_size=64, training=False, modality="image", cache=False)
    features, _ = next(iter(ds))
    means = features["image_1"].numpy().mean(axis=(1, 2))
    expected = np.array([case[2] for case in loadable.values()], dtype=np.float32)
    np.testing.assert_allclose(means, expected, atol=3)


def test_image_limit_is_configurable(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_claiming(10_000, 10_000))
    assert image_file_problem(path, max_pixels=10 ** 8) is None
    assert "over the limit of 1000 pixels" in image_file_problem(path, max_pixels=1000)


# name -> (rows or raw CSV bytes, expected problem regex for row 4, or a check of the loaded rows)
def _check_extra_columns(pairs):
    assert pairs.loc[3, "retweets"] == "12" and pairs.loc[3, "note"] == "kept"


def _check_quoted_newlines(pairs):
    assert pairs.loc[3, "text_1"] == 'Line one,\n\n"line" two\r\nend'


def _check_found_by_query(pairs):
    assert pairs.loc[3, "image_1_path"].endswith(f"{pairs.loc[3, 'id_1']}.jpg")


CSV_CASES = {
    "unknown label": (_row(3, label="implies"), r"unknown label 'implies'"),
    "empty text": (_row(3, text_2="  "), "text_2 is empty"),
    "NaN text": (_row(3, text_1="NaN"), r"text_1 is 'NaN', a missing value"),
    "float id in scientific notation": (_row(3, id_2="1.37593608896820e+18"),
                                        r"id_2 '1.37593608896820e\+18' is not an integer id "
                                        r"\(looks like a float"),
    "duplicate pair": (_row(0), r"duplicate pair .* \(first seen in row 1\)"),
    "image URL without extension, format= query": (
        _row(3, image_1="https://pbs.twimg.com/media/Ex1?format=jpg&name=small"),
        _check_found_by_query),
    "extra columns": ({**_row(3), "retweets": "12", "note": "kept"}, _check_extra_columns),
    "quoted newlines": (_row(3, text_1='Line one,\n\n"line" two\r\nend'), _check_quoted_newlines),
}


@pytest.mark.parametrize("name", sorted(CSV_CASES))
def test_csv_case(name, tmp_path):
    case_row, expected = CSV_CASES[name]
    rows = _rows_with_case(case_row)
    image_dir = _write_case(tmp_path, rows)
    csv_path = write_csv(tmp_path / "pairs.csv", rows, header=list(case_row))
    if isinstance(expected, str):
        with pytest.raises(DataError, match=f"row {BAD_ROW} .*{expected}") as caught:
            read_pairs(csv_path, image_dir)
        assert len(caught.value.problems) == 1
        report = ReadReport()
        assert len(read_pairs(csv_path, image_dir, skip_bad_rows=True, report=report)) == 3
        assert report.rows_read == 4 and len(report.skipped) == 1
    else:
        pairs = read_pairs(csv_path, image_dir)
        assert len(pairs) == 4
        expected(pairs)


def test_url_without_extension_needs_exactly_one_file(tmp_path):
    rows = _rows_with_case(_row(3, image_1="http://pbs.example/media/abc"))
    image_dir = _write_case(tmp_path, rows)
    pairs = read_pairs(write_csv(tmp_path / "pairs.csv", rows), image_dir)
    image = image_dir / f"{rows[3]['id_1']}.jpg"
    assert pairs.loc[3, "image_1_path"] == str(image)
    image.with_suffix(".png").write_bytes(encode_image("blue"))
    with pytest.raises(DataError, match="row 4 .*has no extension and 2 files match"):
        read_pairs(tmp_path / "pairs.csv", image_dir)
    image.unlink()
    image.with_suffix(".png").unlink()
    with pytest.raises(DataError, match="row 4 .*image_1 URL 'http://pbs.example/media/abc' "
                                        "has no extension and 0 files match"):
        read_pairs(tmp_path / "pairs.csv", image_dir)


def test_non_utf8_bytes_are_a_row_problem_with_the_bytes_shown(tmp_path):
    rows = _rows_with_case(_row(3))
    image_dir = _write_case(tmp_path, rows)
    csv_path = write_csv(tmp_path / "pairs.csv", rows)
    raw = csv_path.read_bytes().replace(b"second post 3", b"caf\xe9 \xff post")
    csv_path.write_bytes(b"\xef\xbb\xbf" + raw)  # with a BOM, which is fine
    with pytest.raises(DataError, match=r"row 4 .*text_2 is not valid UTF-8 "
                                        r"\(bytes 0xe9, 0xff\)") as caught:
        read_pairs(csv_path, image_dir)
    assert len(caught.value.problems) == 1
    assert len(read_pairs(csv_path, image_dir, skip_bad_rows=True)) == 3


_HEADER = b"id_1,text_1,image_1,id_2,text_2,image_2,label"


@pytest.mark.parametrize("content, expected", [
    (b"", "the file is empty"),
    (_HEADER + b"\n", "no valid rows"),
    (b"id_1,text_1,label\n1,a,Implies\n", r"missing column\(s\) \['image_1', 'id_2'"),
    (_HEADER + b"\n1,a,x.jpg,2,b,y.jpg,Implies,extra\n",
     "malformed CSV: .*Expected 7 fields in line 2, saw 8"),
    (_HEADER + b",label\n", r"repeated column\(s\) \['label'\]"),
])
def test_whole_file_problems(tmp_path, content, expected):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_bytes(content)
    with pytest.raises(DataError, match=expected):
        read_pairs(csv_path, tmp_path, skip_bad_rows=True)


@pytest.mark.slow  # trains
def test_training_skips_bad_rows_counts_and_records_them(demo, tmp_path, capsys):
    from mmentail.train import main

    pairs = pd.read_csv(demo.csv_path, dtype=str, keep_default_na=False)
    bad = pairs.iloc[:2].copy()
    bad["id_1"] = ["99", "1.2e+18"]
    bad["label"] = ["Implies", "Maybe"]
    csv_path = tmp_path / "pairs.csv"
    pd.concat([pairs, bad]).to_csv(csv_path, index=False)
    args = train_args(demo, tmp_path / "run", "--data-csv", str(csv_path), "--batch-size", "32",
                      epochs=1)
    # A data problem ends the command with its message, naming every problem.
    assert main(args) == DataError.exit_code == 1
    error = capsys.readouterr().err
    assert "mmentail-train: " in error and "3 problem" in error
    assert "Maybe" in error and "Traceback" not in error
    assert not (tmp_path / "run" / "config.json").exists()
    assert main(args + ["--skip-bad-rows"]) == 0
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["rows_read"] == len(pairs) + 2 and report["rows_kept"] == len(pairs)
    assert len(report["skipped"]) == 3  # the second bad row has two problems
    assert any(f"row {len(pairs) + 1} " in s and "99." in s and "not found" in s
               for s in report["skipped"])
    assert any("Maybe" in s for s in report["skipped"])
