from __future__ import annotations

import pytest

from helpers import encode_image, write_csv
from mmentail.data.pairs import DataError, ReadReport, image_extension, read_pairs
from mmentail.schema import LABELS


def _row(i: int, label: str = "NoEntailment", **changes) -> dict:
    row = {"id_1": str(1375936088968200205 + 2 * i), "text_1": f"first post {i}",
           "image_1": f"http://pbs.example/media/a{i}.jpg",
           "id_2": str(1375936088968200206 + 2 * i), "text_2": f"second post {i}",
           "image_2": f"http://pbs.example/media/b{i}.png?format=x", "label": label}
    row.update(changes)
    return row


def _images_for(rows, image_dir):
    image_dir.mkdir(exist_ok=True)
    for row in rows:
        for side in (1, 2):
            ext = image_extension(row[f"image_{side}"])
            (image_dir / f"{row[f'id_{side}']}.{ext}").write_bytes(encode_image("red"))


def test_reads_real_schema_with_newlines_emoji_and_big_ids(tmp_path):
    rows = [_row(0, "Implies", text_1="Line one\n\nline two 🏏 https://t.co/x, \"quoted\""),
            _row(1, "Contradictory"), _row(2)]
    csv_path = write_csv(tmp_path / "pairs.csv", rows)
    _images_for(rows, tmp_path / "images")
    df = read_pairs(csv_path, tmp_path / "images")
    assert df.loc[0, "text_1"] == "Line one\n\nline two 🏏 https://t.co/x, \"quoted\""
    assert df.loc[0, "id_1"] == "1375936088968200205"  # 19 digits, not a float
    assert df["label_idx"].tolist() == [1, 0, 2]
    assert df.loc[0, "image_2_path"].endswith("1375936088968200206.png")


def test_reports_every_problem_with_row_numbers(tmp_path):
    rows = [_row(0), _row(1, "Maybe"), _row(2, text_2="   "), _row(3, id_1="1.37593e+18"),
            _row(4, image_1="http://x/no_extension"), _row(0)]
    csv_path = write_csv(tmp_path / "pairs.csv", rows)
    _images_for([rows[0], rows[1], rows[2]], tmp_path / "images")
    with pytest.raises(DataError) as caught:
        read_pairs(csv_path, tmp_path / "images")
    message = str(caught.value)
    assert "row 2" in message and "unknown label 'Maybe'" in message
    assert "row 3" in message and "text_2 is empty" in message
    assert "row 4" in message and "looks like a float" in message
    assert "row 5" in message and "has no extension" in message
    assert "row 6" in message and "duplicate pair" in message and "row 1)" in message
    assert "not found" in message  # rows 4-5 have no image files
    assert len(caught.value.problems) >= 6


def test_skip_bad_rows_counts_what_it_drops(tmp_path):
    rows = [_row(0), _row(1, "Maybe"), _row(2)]
    csv_path = write_csv(tmp_path / "pairs.csv", rows)
    _images_for(rows, tmp_path / "images")
    report = ReadReport()
    df = read_pairs(csv_path, tmp_path / "images", skip_bad_rows=True, report=report)
    assert len(df) == 2 and report.rows_read == 3 and report.rows_kept == 2
    assert len(report.skipped) == 1 and "row 2" in report.skipped[0]


def test_missing_columns_are_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id_1,text_1\n1,a\n")
    with pytest.raises(DataError, match=r"missing column\(s\)"):
        read_pairs(bad)


def test_text_only_reading_needs_no_images(tmp_path):
    csv_path = write_csv(tmp_path / "pairs.csv", [_row(0), _row(1)])
    df = read_pairs(csv_path, image_dir=None)
    assert len(df) == 2 and "image_1_path" not in df


# The split of data/split.py on the real data set's class mix (tests/test_split.py has
# the split's edge cases).
def test_labels_order_is_fixed():
    assert LABELS == ("Contradictory", "Implies", "NoEntailment")
