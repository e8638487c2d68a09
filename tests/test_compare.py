"""tools/compare.py on synthetic predictions files: the paired interval and its refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from helpers import load_tool
from mmentail.data.pairs import DataError
from mmentail.errors import MissingFileError
from mmentail.evaluation.report import predictions_frame, write_predictions
from mmentail.schema import LABELS

TRUE = np.array([0] * 6 + [1] * 8 + [2] * 26)


@pytest.fixture(scope="module")
def compare_tool():
    return load_tool("compare")


def _write(directory: Path, predicted: np.ndarray, name: str = "predictions.csv",
           rows: np.ndarray | None = None) -> np.ndarray:
    """A predictions file of the 40 pairs (ids sort in row order), rows in `rows` order."""
    rows = np.arange(len(TRUE)) if rows is None else rows
    pairs = pd.DataFrame({"id_1": [f"{i:04d}" for i in rows], "id_2": [f"{i + 500}" for i in rows],
                          "label": np.asarray(LABELS)[TRUE[rows]]})
    write_predictions(directory, predictions_frame(pairs, np.eye(3)[predicted[rows]]), name)
    return predicted


def _models() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    a = np.where(rng.random(len(TRUE)) < 0.6, TRUE, rng.integers(0, 3, len(TRUE)))
    b = np.where(rng.random(len(TRUE)) < 0.8, TRUE, rng.integers(0, 3, len(TRUE)))
    return a, b


def test_paired_interval_matches_a_hand_computation(compare_tool, tmp_path):
    a, b = _models()
    _write(tmp_path / "a", a)
    # B is a cross-validation: oof.csv, its rows in another order.
    _write(tmp_path / "b", b, "oof.csv", rows=np.random.default_rng(2).permutation(len(TRUE)))
    result = compare_tool.compare(tmp_path / "a", tmp_path / "b", resamples=100, seed=4)

    def f1(predicted, rows=slice(None)):
        return f1_score(TRUE[rows], predicted[rows], labels=[0, 1, 2], average=None,
                        zero_division=0)

    draws = np.random.default_rng(4).integers(0, len(TRUE), size=(100, len(TRUE)))
    differences = np.array([f1(b, rows) - f1(a, rows) for rows in draws])
    assert result["pairs"] == 40
    assert result["a"]["macro_f1"] == pytest.approx(f1(a).mean())
    assert result["b"]["macro_f1"] == pytest.approx(f1(b).mean())
    difference = result["difference"]
    assert difference["macro_f1"] == pytest.approx(f1(b).mean() - f1(a).mean())
    assert difference["intervals"]["macro_f1"] == pytest.approx(
        np.percentile(differences.mean(axis=1), [2.5, 97.5]))
    for i, name in enumerate(LABELS):
        assert difference[name] == pytest.approx(f1(b)[i] - f1(a)[i])
        assert difference["intervals"][name] == pytest.approx(
            np.percentile(differences[:, i], [2.5, 97.5]))
    assert difference["b_better"] == pytest.approx(np.mean(differences.mean(axis=1) > 0))


def test_the_same_predictions_differ_by_exactly_zero(compare_tool, tmp_path, capsys):
    a, _ = _models()
    _write(tmp_path / "a", a)
    _write(tmp_path / "b", a)
    assert compare_tool.main([str(tmp_path / "a"), str(tmp_path / "b"),
                              "--resamples", "50"]) == 0
    printed = capsys.readouterr().out
    assert "40 pairs in both" in printed and "[+0.000, +0.000]" in printed
    assert "macro-F1" in printed and "F1 Contradictory" in printed


def test_different_pairs_or_labels_are_refused(compare_tool, tmp_path, capsys):
    a, b = _models()
    _write(tmp_path / "a", a)
    _write(tmp_path / "fewer", b, rows=np.arange(39))
    with pytest.raises(DataError, match=r"(?s)not predictions of the same pairs.*1 pair\(s\) only "
                                        r"in A, e.g. \['0039', '539'\]"):
        compare_tool.compare(tmp_path / "a", tmp_path / "fewer")
    assert compare_tool.main([str(tmp_path / "a"), str(tmp_path / "fewer")]) == 1
    assert "compare: A and B are not predictions of the same pairs" in capsys.readouterr().err

    relabelled = pd.read_csv(tmp_path / "a" / "predictions.csv", dtype=str)
    relabelled.loc[0, "label"] = "Implies"
    (tmp_path / "relabelled").mkdir()
    relabelled.to_csv(tmp_path / "relabelled" / "predictions.csv", index=False)
    with pytest.raises(DataError, match="1 pair.s. with different labels"):
        compare_tool.compare(tmp_path / "a", tmp_path / "relabelled")
    with pytest.raises(MissingFileError, match="no oof.csv or predictions.csv"):
        compare_tool.compare(tmp_path / "a", tmp_path / "nothing")
