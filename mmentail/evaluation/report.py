"""A run's test report on disk: `metrics.json` and three PNG plots.

Figures are drawn without pyplot, so the caller's matplotlib backend (a
notebook's inline one, say) is left alone.

Example:
    written = write_report("runs/demo", metrics)
    [path.name for path in written]
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmentail.io_utils import atomic_write_bytes, atomic_write_json
from mmentail.schema import LABELS

PLOTS = ("confusion_matrix.png", "per_class.png", "training_curves.png")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def confusion_figure(metrics: dict[str, Any]):
    """The test confusion matrix, counts in the cells, true labels as rows."""
    from matplotlib.figure import Figure

    matrix = np.asarray(metrics["confusion_matrix"])
    figure = Figure(figsize=(4.5, 4))
    ax = figure.subplots()
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set(xticks=range(len(LABELS)), yticks=range(len(LABELS)), xticklabels=LABELS,
           yticklabels=LABELS, xlabel="predicted", ylabel="true",
           title=f"test confusion matrix (macro-F1 {metrics['macro_f1']:.3f})")
    ax.tick_params(axis="x", labelrotation=20)
    return figure


def per_class_figure(metrics: dict[str, Any]):
    """Per-class precision, recall and F1 of the model beside the majority baseline's."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.5))
    axes = figure.subplots(1, 3, sharey=True)
    x = np.arange(len(LABELS))
    for ax, key in zip(axes, ("precision", "recall", "f1")):
        for offset, (name, figures) in ((-0.2, ("model", metrics)),
                                        (0.2, ("majority", metrics["majority_baseline"]))):
            ax.bar(x + offset, [figures["per_class"][label][key] for label in LABELS], 0.4,
                   label=name)
        ax.set(xticks=x, xticklabels=LABELS, title=key, ylim=(0, 1.05))
    axes[0].legend(loc="lower left")
    return figure


def curves_figure(history: pd.DataFrame):
    """Loss, accuracy and macro-F1 per epoch, training beside validation."""
    from matplotlib.figure import Figure

    names = [n for n in ("loss", "accuracy", "macro_f1") if n in history]
    figure = Figure(figsize=(4 * len(names), 3.5))
    for ax, name in zip(np.atleast_1d(figure.subplots(1, len(names))), names):
        ax.plot(history["epoch"] + 1, history[name], label="train")
        if f"val_{name}" in history:
            ax.plot(history["epoch"] + 1, history[f"val_{name}"], label="validation")
        ax.set(xlabel="epoch", title=name)
        ax.legend()
    return figure


def write_plots(run_dir: str | Path, metrics: dict[str, Any]) -> list[Path]:
    """Writes the confusion matrix, the per-class bars and, when the run has a
    `history.csv`, the training curves. Returns the paths written."""
    run_dir = Path(run_dir)
    figures = {PLOTS[0]: confusion_figure(metrics), PLOTS[1]: per_class_figure(metrics)}
    if (run_dir / "history.csv").is_file():
        figures[PLOTS[2]] = curves_figure(pd.read_csv(run_dir / "history.csv"))
    for name, figure in figures.items():
        atomic_write_bytes(run_dir / name, _png(figure))
    return [run_dir / name for name in figures]


def write_report(run_dir: str | Path, metrics: dict[str, Any]) -> list[Path]:
    """`metrics.json` and the plots, in `run_dir`; returns the paths written."""
    atomic_write_json(Path(run_dir) / "metrics.json", metrics)
    return [Path(run_dir) / "metrics.json", *write_plots(run_dir, metrics)]
