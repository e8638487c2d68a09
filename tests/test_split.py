"""The stratified split and the stage that refuses data it cannot split or learn from."""

from __future__ import annotations

import pandas as pd
import pytest

from mmentail.data.pairs import DataError
from mmentail.data.split import check_training_labels, label_counts, rows_needed, split_pairs


def _pairs(counts: dict[str, int]) -> pd.DataFrame:
    labels = [label for label, n in counts.items() for _ in range(n)]
    return pd.DataFrame({"id_1": [str(i) for i in range(len(labels))], "label": labels})


def test_rows_needed_is_the_fewest_rows_the_stratified_split_accepts():
    assert rows_needed(3) == 46
    train, val, test = split_pairs(_pairs({"NoEntailment": 36, "Implies": 5,
                                           "Contradictory": 5}))
    assert (len(train), len(val), len(test)) == (38, 3, 5)
    with pytest.raises(DataError, match="at least 46 pairs"):
        split_pairs(_pairs({"NoEntailment": 35, "Implies": 5, "Contradictory": 5}))


def test_a_csv_too_small_to_split_says_how_many_rows_it_needs():
    with pytest.raises(DataError, match=r"5 pairs .* too few .* at least 46 pairs"):
        split_pairs(_pairs({"NoEntailment": 3, "Implies": 1, "Contradictory": 1}))
    with pytest.raises(DataError, match=r"too few: Implies \(2\)"):
        split_pairs(_pairs({"NoEntailment": 90, "Implies": 2, "Contradictory": 10}))


def test_split_is_stratified_disjoint_and_covers_every_row():
    pairs = _pairs({"NoEntailment": 168, "Implies": 16, "Contradictory": 16})
    train, val, test = split_pairs(pairs, seed=1)
    assert len(train) + len(val) + len(test) == len(pairs)
    ids = [set(part["id_1"]) for part in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for label, n in label_counts(pairs).items():
        assert abs(label_counts(test)[label] - 0.1 * n) <= 1, label


def test_a_training_split_without_a_label_is_refused():
    with pytest.raises(DataError, match="no Contradictory, Implies pairs to learn from"):
        check_training_labels(_pairs({"NoEntailment": 50}))
    check_training_labels(_pairs({"NoEntailment": 5, "Implies": 1, "Contradictory": 1}))


def test_split_is_stratified_reproducible_and_disjoint():
    labels = ["NoEntailment"] * 845 + ["Implies"] * 78 + ["Contradictory"] * 77
    df = pd.DataFrame({"id_1": [str(i) for i in range(1000)], "label": labels})
    train, val, test = split_pairs(df, seed=42)
    assert (len(train), len(val), len(test)) == (855, 45, 100)
    assert set(train.id_1).isdisjoint(test.id_1) and set(val.id_1).isdisjoint(test.id_1)
    for part in (train, test):
        share = label_counts(part)["NoEntailment"] / len(part)
        assert abs(share - 0.845) < 0.01
    again = split_pairs(df, seed=42)
    assert list(again[2].id_1) == list(test.id_1)
    assert list(split_pairs(df, seed=7)[2].id_1) != list(test.id_1)
