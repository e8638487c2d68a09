"""Cross-validation: its folds, its summary and oof.csv, its resumption, and one real run."""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import run_config, train_args
from mmentail.config.experiment import ExperimentConfig, with_overrides
from mmentail.config.flags import add_config_flags, config_from_args
from mmentail.data.pairs import DataError
from mmentail.data.prepare import read_and_split
from mmentail.data.split import fold_indices, label_counts, split_fold
from mmentail.errors import ConfigError
from mmentail.evaluation.crossval import cross_validate, summarise, write_cv
from mmentail.evaluation.report import predictions_frame, read_predictions, write_predictions
from mmentail.io_utils import atomic_write_json
from mmentail.schema import LABELS
from mmentail.training.run_dir import open_run_dir


def _pairs(counts: dict[str, int]) -> pd.DataFrame:
    labels = [label for label, n in counts.items() for _ in range(n)]
    return pd.DataFrame({"id_1": [f"{i:03d}" for i in range(len(labels))],
                         "id_2": [f"x{i}" for i in range(len(labels))], "label": labels})


def test_folds_are_stratified_disjoint_and_cover_every_pair():
    pairs = _pairs({"Contradictory": 7, "Implies": 12, "NoEntailment": 81})
    folds = fold_indices(pairs["label"], folds=5, seed=3)
    held_out = np.concatenate(folds)
    assert len(held_out) == len(pairs) and sorted(held_out) == list(range(len(pairs)))
    for label, total in label_counts(pairs).items():
        in_fold = [int((pairs["label"].iloc[f] == label).sum()) for f in folds]
        assert sum(in_fold) == total and max(in_fold) - min(in_fold) <= 1, (label, in_fold)
    assert [f.tolist() for f in fold_indices(pairs["label"], 5, seed=3)] == [
        f.tolist() for f in folds]  # the seed fixes the folds
    assert fold_indices(pairs["label"], 5, seed=4)[0].tolist() != folds[0].tolist()


def test_a_fold_tests_its_held_out_pairs_and_validates_on_some_of_the_rest():
    pairs = _pairs({"Contradictory": 7, "Implies": 12, "NoEntailment": 81})
    tests = []
    for fold in (1, 2, 3, 4, 5):
        train, val, test = split_fold(pairs, folds=5, fold=fold, seed=3)
        assert test.index.tolist() == sorted(fold_indices(pairs["label"], 5, 3)[fold - 1])
        assert set(train.index).isdisjoint(val.index) and set(train.index).isdisjoint(
            test.index) and set(val.index).isdisjoint(test.index)
        assert len(train) + len(val) + len(test) == len(pairs)
        assert len(val) == math.ceil(0.05 * (len(train) + len(val))) >= 3  # as split_pairs
        assert all(n > 0 for n in label_counts(train).values())
        tests.append(test)
    assert sorted(pd.concat(tests).index) == list(range(len(pairs)))


def test_too_few_pairs_of_a_label_for_the_folds_are_refused():
    pairs = _pairs({"Contradictory": 3, "Implies": 12, "NoEntailment": 81})
    split_fold(pairs, folds=3, fold=1)  # one per test split, two to train on
    with pytest.raises(DataError, match=r"Contradictory \(3\) for 2-fold .* at least 4"):
        split_fold(pairs, folds=2, fold=1)
    with pytest.raises(DataError, match=r"Contradictory \(3\) for 5-fold .* at least 5"):
        split_fold(pairs, folds=5, fold=1)


def test_folds_is_a_flag_and_fold_must_be_one_of_them():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    folds_flag = next(a for a in parser._actions if "--folds" in a.option_strings)
    assert folds_flag.help.startswith("cross-validation over K stratified folds")
    config = config_from_args(parser.parse_args(["--preset", "demo", "--folds", "5"]))
    assert config.data.folds == 5 and config.data.cross_validates
    single = with_overrides(config, {"fold": 2})
    assert single.data.fold == 2 and not single.data.cross_validates
    assert not ExperimentConfig().data.cross_validates
    with pytest.raises(ConfigError, match="fold must be 0 or between 1 and folds"):
        with_overrides(config, {"fold": 6})
    with pytest.raises(ConfigError, match="fold must be 0"):
        with_overrides(ExperimentConfig(), {"fold": 1})
    with pytest.raises(ConfigError, match="TFRecord shards"):
        with_overrides(config, {"data_tfrecords": "/shards"})
    with pytest.raises(ConfigError, match="describes a cross-validation"):
        read_and_split(config)


def _fold_predictions(output: Path, folds: int, pairs: pd.DataFrame) -> None:
    """Fake fold runs: fold k predicts its held-out pairs right but every third one."""
    for k, held_out in enumerate(fold_indices(pairs["label"], folds, seed=0), start=1):
        test = pairs.iloc[held_out]
        predicted = test["label"].map(LABELS.index).to_numpy().copy()
        predicted[::3] = (predicted[::3] + 1) % 3
        write_predictions(output / f"fold-{k}", predictions_frame(test, np.eye(3)[predicted]))


def test_summary_gives_each_fold_mean_std_and_every_pair_out_of_fold(tmp_path):
    pairs = _pairs({"Contradictory": 9, "Implies": 12, "NoEntailment": 60})
    _fold_predictions(tmp_path, 3, pairs)
    rule = {"name": "logit_adjusted", "offsets": [1.0, 1.0, 0.0], "tau": 0.5,
            "validation_macro_f1": {"argmax": 0.5, "logit_adjusted": 0.6}}
    (tmp_path / "fold-2" / "metrics.json").write_text(json.dumps({"decision_rule": rule}))
    cv, oof = summarise(tmp_path, 3, seed=1)
    assert [f.get("decision_rule") for f in cv["per_fold"]] == [None, rule, None]
    write_cv(tmp_path, cv, oof)
    written = read_predictions(tmp_path / "oof.csv")
    assert sorted(zip(written["id_1"], written["id_2"])) == sorted(zip(pairs.id_1, pairs.id_2))
    assert sorted(written["fold"].unique()) == [1, 2, 3]
    macro = [f["macro_f1"] for f in cv["per_fold"]]
    assert cv["mean"]["macro_f1"] == pytest.approx(np.mean(macro))
    assert cv["std"]["macro_f1"] == pytest.approx(np.std(macro, ddof=1))
    assert set(cv["mean"]) == {"accuracy", "macro_f1", *(f"f1_{label}" for label in LABELS)}
    assert sum(f["test_pairs"] for f in cv["per_fold"]) == len(pairs)
    assert cv["out_of_fold"]["accuracy"] == pytest.approx(
        (written["label"] == written["predicted"]).mean())
    low, high = cv["out_of_fold"]["bootstrap"]["macro_f1"]
    assert low <= cv["out_of_fold"]["macro_f1"] <= high
    assert json.loads((tmp_path / "cv.json").read_text()) == cv
    table = (tmp_path / "cv.md").read_text()
    assert f"| mean ± std | {len(pairs)} |" in table and "| out-of-fold |" in table


def test_summary_gives_the_pooled_calibration_before_and_after(tmp_path):
    """Folds whose predictions carry logits (over-confident) and calibrated probabilities:
    cv.json's `out_of_fold` has the figures of both, with intervals, and each fold's map."""
    from mmentail.evaluation.calibration import Calibration, calibration_figures, softmax

    pairs = _pairs({"Contradictory": 9, "Implies": 12, "NoEntailment": 60})
    rng = np.random.default_rng(0)
    calibration = Calibration("temperature", (0.25,) * 3, (0.0,) * 3, 54, "validation split")
    for k, held_out in enumerate(fold_indices(pairs["label"], 3, seed=0), start=1):
        test = pairs.iloc[held_out]
        truth = test["label"].map(LABELS.index).to_numpy()
        logits = 4 * (np.eye(3)[truth] + rng.normal(0, 0.8, (len(test), 3)))
        calibrated = calibration.apply(logits)
        write_predictions(tmp_path / f"fold-{k}", predictions_frame(
            test, calibrated, calibrated.argmax(axis=1), logits))
        (tmp_path / f"fold-{k}" / "metrics.json").write_text(json.dumps(
            {"calibration": {**calibration.to_json(), "before": {}, "after": {}}}))
    cv, oof = summarise(tmp_path, 3, seed=1)
    assert [f["calibration"] for f in cv["per_fold"]] == [calibration.to_json()] * 3
    pooled = cv["out_of_fold"]["calibration"]
    labels = oof["label"].map(LABELS.index).to_numpy()
    given = oof["predicted"].map(LABELS.index).to_numpy()
    before = calibration_figures(softmax(oof.filter(like="logit_").to_numpy()), labels,
                                 predicted=given, seed=1)
    after = calibration_figures(oof.filter(like="p_").to_numpy(), labels, predicted=given,
                                seed=1)
    assert pooled["method"] == "temperature"
    for figures, expected in ((pooled["before"], before), (pooled["after"], after)):
        assert figures["ece"] == pytest.approx(expected["ece"])
        assert figures["ece_interval"] == pytest.approx(expected["ece_interval"])
        assert figures["nll"] == pytest.approx(expected["nll"], abs=1e-5)
        assert figures["label_ece"] == pytest.approx(expected["label_ece"])
        assert sum(figures["bins"]["count"]) == len(pairs)
    assert pooled["before"]["confidence"] > pooled["after"]["confidence"]
    # A temperature keeps every argmax: macro-F1 unchanged, its paired change 0.
    assert pooled["macro_f1_change"] == 0 and pooled["macro_f1_change_interval"] == [0, 0]
    write_cv(tmp_path, cv, oof)
    assert "out-of-fold calibration (temperature): top-label ECE" in (
        tmp_path / "cv.md").read_text()


def _fake_fold_run(calls: list):
    """Stands in for `mmentail.train.run`: a finished fold run with perfect predictions."""
    def train_fold(config: ExperimentConfig, mode: str) -> None:
        calls.append((config.data.fold, mode))
        output = Path(config.output)
        run_dir = open_run_dir(output, config.to_json(), mode)
        atomic_write_json(output / "config.json", config.to_json())
        test = read_and_split(config).test
        write_predictions(output, predictions_frame(test, np.eye(3)[test["label_idx"]]))
        run_dir.mark_finished()
        run_dir.close()
    return train_fold


def test_a_rerun_trains_only_the_unfinished_folds(demo, tmp_path, caplog):
    # Text only: no image headers to check, so no TensorFlow work at all.
    config = run_config(demo, tmp_path / "cv", folds=3, modality="text")
    calls: list = []
    caplog.set_level(logging.INFO, logger="mmentail")
    cv = cross_validate(config, _fake_fold_run(calls))
    assert calls == [(1, "auto"), (2, "auto"), (3, "auto")]
    assert cv["mean"]["macro_f1"] == 1 and cv["out_of_fold"]["accuracy"] == 1
    assert len(read_predictions(tmp_path / "cv" / "oof.csv")) == 80
    assert "fold 2/3: training" in caplog.text
    # Fold 2 was killed before it finished: only it trains again, resumed.
    (tmp_path / "cv" / "fold-2" / "state.json").write_text('{"status": "running"}')
    calls.clear()
    caplog.clear()
    cross_validate(config, _fake_fold_run(calls), existing="resume")
    assert calls == [(2, "resume")]
    assert "fold 1/3: finished before, not trained again" in caplog.text
    # A fold never started starts anew, and a finished cross-validation trains nothing.
    shutil.rmtree(tmp_path / "cv" / "fold-3")
    calls.clear()
    cross_validate(config, _fake_fold_run(calls), existing="resume")
    cross_validate(config, _fake_fold_run(calls))
    assert calls == [(3, "auto")]
    state = json.loads((tmp_path / "cv" / "state.json").read_text())
    assert state["status"] == "finished"


def test_a_cross_validation_of_another_configuration_is_refused(demo, tmp_path):
    from mmentail.errors import RunDirError

    settings = {"modality": "text", "folds": 3}
    cross_validate(run_config(demo, tmp_path / "cv", **settings), _fake_fold_run([]))
    with pytest.raises(RunDirError, match="different configuration.*folds"):
        cross_validate(run_config(demo, tmp_path / "cv", **{**settings, "folds": 4}),
                       _fake_fold_run([]))


@pytest.mark.slow  # trains three tiny text-only folds, then one of them again
def test_folds_flag_trains_every_fold_once_and_resumes_the_missing_one(demo, tmp_path,
                                                                       capsys, caplog):
    from mmentail.train import main

    output = tmp_path / "cv"
    args = train_args(demo, output, "--folds", "3", "--modality", "text", epochs=1)
    caplog.set_level(logging.INFO, logger="mmentail")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "3-fold cross-validation" in printed and "| mean ± std | 80 |" in printed
    assert "out-of-fold calibration (vector): top-label ECE" in printed
    cv = json.loads((output / "cv.json").read_text())
    assert [f["calibration"]["method"] for f in cv["per_fold"]] == ["vector"] * 3
    pooled = cv["out_of_fold"]["calibration"]
    assert all(0 <= pooled[when]["ece"] <= 1 and pooled[when]["nll"] > 0
               for when in ("before", "after"))
    # A vector map moves probabilities, not the argmax rule's labels.
    assert pooled["macro_f1_change"] == 0 and pooled["macro_f1_change_interval"] == [0, 0]
    oof = read_predictions(output / "oof.csv")
    csv = pd.read_csv(demo.csv_path, dtype=str)
    assert sorted(zip(oof.id_1, oof.id_2)) == sorted(zip(csv.id_1, csv.id_2))
    assert (oof.set_index(["id_1", "id_2"])["label"].sort_index()
            == csv.set_index(["id_1", "id_2"])["label"].sort_index()).all()
    for k in (1, 2, 3):
        fold = output / f"fold-{k}"
        assert json.loads((fold / "config.json").read_text())["data"]["fold"] == k
        assert (fold / "metrics.json").is_file() and not (fold / "export").exists()
    # All folds hold the same pairs: the encoders ran once, for the first fold.
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 1
    assert caplog.text.count("encoding 80 rows once") == 1
    kept = (output / "fold-1" / "metrics.json").stat().st_mtime_ns
    shutil.rmtree(output / "fold-2")
    caplog.clear()
    assert main(args) == 0
    assert "fold 2/3: training" in caplog.text
    assert all(f"fold {k}/3: finished before" in caplog.text for k in (1, 3))
    assert (output / "fold-1" / "metrics.json").stat().st_mtime_ns == kept
    assert len(read_predictions(output / "oof.csv")) == 80


def test_val_size_sets_the_validation_share_of_a_run_and_of_a_fold(demo, tmp_path):
    for overrides in ({}, {"folds": 3, "fold": 2}):
        config = run_config(demo, tmp_path / "run", val_size=0.25, **overrides)
        splits = read_and_split(config)
        outside_test = len(splits.train) + len(splits.val)
        assert len(splits.val) == math.ceil(0.25 * outside_test)
        default = read_and_split(with_overrides(config, {"val_size": 0.05}))
        assert len(default.val) < len(splits.val) and len(default.test) == len(splits.test)
    for bad in (0.0, 1.0):
        with pytest.raises(ConfigError, match="val_size must be between 0 and 1"):
            with_overrides(ExperimentConfig(), {"val_size": bad})
