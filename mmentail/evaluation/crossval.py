"""Cross-validation: one run per stratified fold, then figures that can rank recipes.

One test split of the real data holds ~15 pairs of each minority label, so the
macro-F1 of one run says little about which of two recipes is better. With
`folds` = K every pair is tested once: fold k's held-out pairs are its test
split (:func:`mmentail.data.split.split_fold`) and the fold is trained as a
normal run in `<output>/fold-<k>/`. At the end `<output>/` gets

    cv.json   every fold's figures (and fitted decision rule and calibration), their
              mean and standard deviation, and the out-of-fold figures pooled over
              all pairs with bootstrap intervals, calibration figures included
    cv.md     the same as a Markdown table
    oof.csv   every pair's out-of-fold prediction (the folds' predictions.csv, with `fold`)

The output directory is a run directory of its own (:func:`open_run_dir`:
locked, its `config.json` compared on a rerun), and a rerun trains only the
folds that are not finished (:func:`is_finished`). All folds share
`cache_dir`, so the frozen encoders' features are computed once for all of them.

The training of a fold is passed in (`train_fold`, :func:`mmentail.train.run`
in `mmentail-train`): this module sits below `train.py` and imports nothing above it.

Example:
    cv = cross_validate(config, lambda fold_config, existing: run(fold_config, existing))
    cv["mean"]["macro_f1"], cv["std"]["macro_f1"]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from mmentail.config.experiment import ExperimentConfig, with_overrides
from mmentail.data.prepare import read_and_split
from mmentail.errors import ConfigError
from mmentail.evaluation.bootstrap import (
    bootstrap_index_blocks,
    f1_intervals,
    percentile_interval,
    resampled_f1,
)
from mmentail.evaluation.calibration import calibration_figures, reliability_bins, softmax
from mmentail.evaluation.metrics import classification_figures, interval_text
from mmentail.evaluation.report import (
    LOGIT_COLUMNS,
    PREDICTIONS,
    PROBABILITY_COLUMNS,
    label_indices,
    read_predictions,
    write_predictions,
)
from mmentail.io_utils import atomic_write_json, atomic_write_text
from mmentail.schema import LABELS
from mmentail.sources.resolve import resolve_sources
from mmentail.training.run_dir import check_writable, is_finished, open_run_dir

log = logging.getLogger("mmentail")
CV_FILES = ("cv.json", "cv.md", "oof.csv")
FIGURES = ("accuracy", "macro_f1", *(f"f1_{label}" for label in LABELS))
TrainFold = Callable[[ExperimentConfig, str], Any]


def fold_config(config: ExperimentConfig, fold: int) -> ExperimentConfig:
    """The run of fold `fold` (1..folds) of a cross-validation config, in `<output>/fold-<k>`."""
    return with_overrides(config, {"output": str(Path(config.output) / f"fold-{fold}"),
                                   "fold": fold})


def cross_validate(config: ExperimentConfig, train_fold: TrainFold,
                   existing: str = "auto") -> dict[str, Any]:
    """Trains every unfinished fold of `config` and writes cv.json, cv.md and oof.csv.

    Args:
        config: a configuration with `folds` >= 2 and `fold` 0.
        train_fold: trains one fold's configuration as a run, given the run
            directory mode ("auto" or "resume"), e.g. :func:`mmentail.train.run`.
        existing: "auto", "resume" or "overwrite", for the whole cross-validation
            (see :func:`mmentail.training.run_dir.open_run_dir`).

    Returns:
        What `cv.json` holds (see :func:`summarise`).
    """
    if not config.data.cross_validates:
        raise ConfigError("cross-validation needs folds of at least 2 and fold 0")
    if config.runtime.strategy == "multi_worker":
        raise ConfigError("folds: cross-validation trains on one machine; use strategy "
                          "mirrored, one_device or tpu")
    output = Path(config.output)
    check_writable(output)
    config = resolve_sources(config)
    run_dir = open_run_dir(output, config.to_json(), existing)
    if run_dir.status == "new":
        read_and_split(fold_config(config, 1))  # a data set that cannot be split claims nothing
    atomic_write_json(output / "config.json", config.to_record())
    for fold in range(1, config.data.folds + 1):
        _train_unless_finished(fold_config(config, fold), train_fold, existing)
    cv, oof = summarise(output, config.data.folds, seed=config.seed)
    write_cv(output, cv, oof)
    run_dir.mark_finished()
    return cv


def _train_unless_finished(config: ExperimentConfig, train_fold: TrainFold,
                           existing: str) -> None:
    fold_dir, folds = Path(config.output), config.data.folds
    if is_finished(fold_dir, config.to_json()) and (fold_dir / PREDICTIONS).is_file():
        log.info("fold %d/%d: finished before, not trained again (%s)",
                 config.data.fold, folds, fold_dir)
        return
    log.info("fold %d/%d: training (%s)", config.data.fold, folds, fold_dir)
    # A fold without a run yet starts one, even when the cross-validation resumes.
    has_run = (fold_dir / "config.json").is_file()
    train_fold(config, "resume" if existing == "resume" and has_run else "auto")


def fold_figures(predictions: pd.DataFrame) -> dict[str, Any]:
    """Accuracy, macro-F1 and each class's F1 of a predictions file (flat, see FIGURES)."""
    figures = classification_figures(*label_indices(predictions))
    return {"accuracy": figures["accuracy"], "macro_f1": figures["macro_f1"],
            **{f"f1_{label}": figures["per_class"][label]["f1"] for label in LABELS}}


def _fitted(metrics_path: Path) -> dict[str, Any]:
    """`{"decision_rule": ..., "calibration": ...}` of a fold's metrics.json: the rule when
    it records a fitted one, the calibration's method and fitted values when it has one."""
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    rule, calibration = metrics.get("decision_rule"), metrics.get("calibration")
    fitted = {"decision_rule": rule} if rule and rule["name"] != "argmax" else {}
    if calibration:
        fitted["calibration"] = {k: v for k, v in calibration.items()
                                 if k not in ("before", "after")}
    return fitted


def pooled_calibration(oof: pd.DataFrame, *, seed: int = 0) -> dict[str, Any]:
    """The calibration figures of pooled out-of-fold predictions, before (softmax of their
    logits) and after (their probabilities), and the macro-F1 of the labels they give
    before and after with the paired-bootstrap interval of the change.

    The labels before are the logits' argmax; the labels after are the folds' own
    (their decision rule's, on the logits: with `argmax` the same labels).
    """
    labels, predicted = label_indices(oof)
    before = softmax(oof[list(LOGIT_COLUMNS)].to_numpy())
    after = oof[list(PROBABILITY_COLUMNS)].to_numpy()
    unadjusted = before.argmax(axis=1)
    change = np.concatenate([resampled_f1(labels, predicted, block).mean(axis=1)
                             - resampled_f1(labels, unadjusted, block).mean(axis=1)
                             for block in bootstrap_index_blocks(len(labels), seed=seed)])
    macro = {name: classification_figures(labels, guess)["macro_f1"]
             for name, guess in (("before", unadjusted), ("after", predicted))}
    return {"before": {**calibration_figures(before, labels, predicted=predicted, seed=seed),
                       "bins": reliability_bins(before, labels),
                       "macro_f1": macro["before"]},
            "after": {**calibration_figures(after, labels, predicted=predicted, seed=seed),
                      "bins": reliability_bins(after, labels), "macro_f1": macro["after"]},
            "macro_f1_change": macro["after"] - macro["before"],
            "macro_f1_change_interval": percentile_interval(change)}


def summarise(output: Path, folds: int, *, seed: int = 0) -> tuple[dict[str, Any],
                                                                    pd.DataFrame]:
    """The figures of every fold's predictions, their mean and sample standard
    deviation, and the pooled out-of-fold figures with bootstrap intervals.

    Returns:
        (what `cv.json` holds, the out-of-fold predictions with their `fold`).
    """
    frames, per_fold = [], []
    for fold in range(1, folds + 1):
        predictions = read_predictions(output / f"fold-{fold}" / PREDICTIONS)
        frames.append(predictions.assign(fold=fold))
        per_fold.append({"fold": fold, "test_pairs": len(predictions),
                         **fold_figures(predictions),
                         **_fitted(output / f"fold-{fold}" / "metrics.json")})
    table = pd.DataFrame(per_fold)
    oof = pd.concat(frames, ignore_index=True)
    labels, predicted = label_indices(oof)
    cv = {"folds": folds, "per_fold": per_fold,
          "mean": {name: float(table[name].mean()) for name in FIGURES},
          "std": {name: float(table[name].std(ddof=1)) for name in FIGURES},
          "out_of_fold": {**classification_figures(labels, predicted),
                          "bootstrap": f1_intervals(labels, predicted, seed=seed)}}
    if set(LOGIT_COLUMNS) <= set(oof.columns):  # folds written before calibration have none
        methods = {f.get("calibration", {}).get("method", "none") for f in per_fold}
        cv["out_of_fold"]["calibration"] = {"method": ", ".join(sorted(methods)),
                                            **pooled_calibration(oof, seed=seed)}
    return cv, oof


def cv_table(cv: dict[str, Any]) -> str:
    """cv.json as a Markdown table: a row per fold, mean ± std, and the pooled
    out-of-fold figures (macro-F1 with its 95% bootstrap interval)."""
    header = ["fold", "test pairs", "accuracy", "macro-F1", *(f"F1 {label}" for label in LABELS)]
    rows = [[str(f["fold"]), str(f["test_pairs"]), *(f"{f[name]:.3f}" for name in FIGURES)]
            for f in cv["per_fold"]]
    rows.append(["mean ± std", str(sum(f["test_pairs"] for f in cv["per_fold"])),
                 *(f"{cv['mean'][name]:.3f} ± {cv['std'][name]:.3f}" for name in FIGURES)])
    oof = cv["out_of_fold"]
    rows.append(["out-of-fold", str(sum(c["support"] for c in oof["per_class"].values())),
                 f"{oof['accuracy']:.3f}",
                 f"{oof['macro_f1']:.3f}{interval_text(oof['bootstrap']['macro_f1'])}",
                 *(f"{oof['per_class'][label]['f1']:.3f}" for label in LABELS)])
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    table = "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    calibration = oof.get("calibration")
    if not calibration:
        return table
    before, after = calibration["before"], calibration["after"]
    return (f"{table}\n\nout-of-fold calibration ({calibration['method']}): top-label ECE "
            f"{before['ece']:.3f}{interval_text(before['ece_interval'])} -> "
            f"{after['ece']:.3f}{interval_text(after['ece_interval'])}, classwise ECE "
            f"{before['classwise_ece']:.3f} -> {after['classwise_ece']:.3f}, label ECE "
            f"{before['label_ece']:.3f} -> {after['label_ece']:.3f}, NLL "
            f"{before['nll']:.3f} -> {after['nll']:.3f}, Brier {before['brier']:.3f} -> "
            f"{after['brier']:.3f}; macro-F1 {before['macro_f1']:.3f} -> "
            f"{after['macro_f1']:.3f} ({calibration['macro_f1_change']:+.3f}"
            f"{interval_text(calibration['macro_f1_change_interval'])} paired)")


def write_cv(output: Path, cv: dict[str, Any], oof: pd.DataFrame) -> None:
    """Writes cv.json, cv.md and oof.csv to `output`, each atomically."""
    atomic_write_json(output / "cv.json", cv)
    atomic_write_text(output / "cv.md",
                      f"# {cv['folds']}-fold cross-validation\n\n{cv_table(cv)}\n\n"
                      "Mean ± sample standard deviation over the folds; out-of-fold: every "
                      "pair's prediction by the fold that held it out, pooled, with the 95% "
                      "bootstrap interval of macro-F1.\n")
    write_predictions(output, oof, name="oof.csv")


def cv_summary(cv: dict[str, Any], output: str | Path) -> str:
    """The console summary of a cross-validation: its table and where its files are."""
    return (f"{cv['folds']}-fold cross-validation\n{cv_table(cv)}\n"
            f"written: {', '.join(str(Path(output) / name) for name in CV_FILES)}")
