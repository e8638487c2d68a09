from __future__ import annotations

import json

import pandas as pd

from mmentail.evaluation.metrics import classification_figures, majority_baseline, summary
from mmentail.evaluation.report import PLOTS, write_report
from mmentail.schema import LABELS


def test_report_writes_metrics_and_three_pngs(tmp_path):
    metrics = {**classification_figures([0, 1, 2, 2], [0, 2, 2, 2]),
               "majority_baseline": majority_baseline([2, 2], [0, 1, 2, 2])}
    pd.DataFrame({"epoch": [0, 1], "loss": [1.0, 0.5], "accuracy": [0.5, 0.7],
                  "macro_f1": [0.2, 0.4], "val_loss": [1.1, 0.6], "val_accuracy": [0.4, 0.6],
                  "val_macro_f1": [0.1, 0.3]}).to_csv(tmp_path / "history.csv", index=False)
    write_report(tmp_path, metrics)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    for name in PLOTS:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    text = summary(metrics)
    assert "macro-F1 0.600   majority baseline (NoEntailment)" in text
    assert "macro-F1 0.222" in text
    assert all(name in text for name in LABELS)


def test_write_plots_returns_what_it_wrote_with_or_without_history(tmp_path):
    from mmentail.evaluation.report import write_plots

    metrics = {**classification_figures([0, 1, 2], [0, 1, 2]),
               "majority_baseline": majority_baseline([2], [0, 1, 2])}
    written = write_plots(tmp_path, metrics)  # no history.csv: no training curves
    assert written == [tmp_path / PLOTS[0], tmp_path / PLOTS[1]]
    assert all(path.is_file() for path in written)
    assert not (tmp_path / PLOTS[2]).exists()
    assert write_report(tmp_path, metrics) == [tmp_path / "metrics.json", *written]
