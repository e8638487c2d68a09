"""`mmentail-train`: one run as a sequence of named stages.

    resolve sources -> read + split -> build -> datasets -> fit -> evaluate -> export

Each stage is a public function of the package that owns it; :func:`run`
calls them in order and returns a :class:`RunResult` that tools, notebooks
and tests use.

Examples:
    mmentail-train --preset demo                 # offline, generated data
    mmentail-train --preset keras-io             # real data, TF Hub, ImageNet (internet)
    mmentail-train --preset minilm-offline --data-csv pairs.csv --modality text  # no internet
    mmentail-train --config runs/demo/config.json --output runs/demo-again  # rerun a run
    mmentail-train --preset demo --folds 5 --output runs/demo-cv  # cross-validation

    result = run(resolve_config("demo", {"epochs": 2, "output": "runs/quick"}))
    result.metrics["macro_f1"], result.export_dir
    cross_validate(resolve_config("demo", {"folds": 5}))["mean"]["macro_f1"]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras

from mmentail.cli import run_command
from mmentail.config.experiment import ExperimentConfig
from mmentail.config.flags import add_config_flags, config_from_args
from mmentail.config.presets import resolve_config
from mmentail.data.prepare import Splits, read_and_split, write_splits
from mmentail.evaluation import crossval
from mmentail.evaluation.calibration import (
    Calibration,
    calibration_report,
    fit_calibration,
    log_probabilities,
)
from mmentail.evaluation.decision import DecisionRule, fit_decision_rule, predict_labels
from mmentail.evaluation.metrics import predict_probabilities, summary, test_figures
from mmentail.evaluation.report import predictions_frame, write_predictions, write_report
from mmentail.io_utils import atomic_write_json
from mmentail.pipeline.dataset import split_dataset
from mmentail.pipeline.preprocess import load_preprocessor
from mmentail.sources.resolve import resolve_sources
from mmentail.training.callbacks import BACKUP_DIR, BEST_FILE, TrainingInterrupted
from mmentail.training.distribute import (
    make_strategy,
    mixed_precision_policy,
    precision,
    strategy_name,
    worker_output,
)
from mmentail.training.fit import (
    Trainee,
    build_trainee,
    cross_fitted_probabilities,
    fit,
    training_datasets,
)
from mmentail.training.run_dir import check_writable, open_run_dir

log = logging.getLogger("mmentail")
__all__ = ["RunResult", "run", "cross_validate", "main", "resolve_config"]


@dataclasses.dataclass
class RunResult:
    """What a run produced.

    Attributes:
        config: the resolved configuration (as recorded in `config.json`).
        model: the trained model, raw-feature inputs to probabilities.
        metrics: test figures beside the majority baseline (`metrics.json`).
        output: the run directory this process wrote.
        export_dir: the serving SavedModel, or None when not exported.
        wall_seconds: the run's wall time.
        stage_seconds: each stage's wall time (`timings.json`): where a run's time went.
        predictions: each test pair's ids, label, prediction and probabilities
            (`predictions.csv`).
        calibration: the map fitted after training from `model`'s logits to the
            run's probabilities (:func:`mmentail.evaluation.calibration.calibrated_model`
            makes the Keras model of both).
    """

    config: ExperimentConfig
    model: tf_keras.Model
    metrics: dict[str, Any]
    output: Path
    export_dir: Path | None
    wall_seconds: float
    predictions: pd.DataFrame | None = None
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    calibration: Calibration = dataclasses.field(default_factory=Calibration)


TIMINGS_FILE = "timings.json"


class StageClock:
    """Wall seconds per named stage, in the order the stages ran.

    Example:
        clock = StageClock()
        with clock("fit"):
            ...
        clock.seconds["fit"]
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - started, 2)


def run(config: ExperimentConfig, existing: str = "auto", *, export: bool = True) -> RunResult:
    """Trains, evaluates and (unless `export` is False) exports one run.

    Args:
        config: the run's configuration (e.g. from :func:`resolve_config`).
        existing: what to do with a run already in the output dir: "auto",
            "resume" or "overwrite" (see :func:`mmentail.training.run_dir.open_run_dir`).
        export: write the serving SavedModel to `<output>/export`.

    The strategy comes first (multi-worker and TPU set-up must precede any
    other op); non-chief workers write their outputs to a temporary directory.
    """
    started = time.time()
    clock = StageClock()
    strategy = make_strategy(config.runtime.strategy)
    policy = mixed_precision_policy(strategy) if config.runtime.mixed_precision else "float32"
    with worker_output(strategy, config.output) as output, precision(policy):
        check_writable(output)
        with clock("resolve_sources"):
            config = resolve_sources(config)
        run_dir = open_run_dir(output, config.to_json(), existing)
        with clock("read_and_split"):
            splits = read_and_split(config)
        # Written once the data is good, so a run that failed on its data claims no directory.
        atomic_write_json(output / "config.json", config.to_record())
        write_splits(splits, output)
        with clock("build"):
            # An image-only run loads no text model at all.
            preprocessor = (load_preprocessor(config.model.preprocess_handle)
                            if config.model.modality != "image" else None)
            log.info("strategy %s over %d replica(s)", strategy_name(strategy),
                     strategy.num_replicas_in_sync)
            trainee = build_trainee(config, strategy, splits.labels("train"))
        with clock("datasets"):  # with frozen encoders: their features, encoded once
            train, val = training_datasets(config, splits, trainee, strategy, preprocessor)
        with clock("fit"):
            fit(config, trainee, train, val, output, strategy, splits.labels("train"))
        with clock("evaluate"):
            metrics, predictions = evaluate_and_report(config, trainee, splits, preprocessor,
                                                       output, strategy)
        export_dir = None
        if export:
            with clock("export"):
                export_dir = export_run(config, trainee.model, preprocessor, output,
                                        DecisionRule.from_json(metrics["decision_rule"]),
                                        Calibration.from_json(metrics["calibration"]))
        atomic_write_json(output / TIMINGS_FILE, clock.seconds)
        log.info("stage seconds: %s", ", ".join(f"{k} {v:g}" for k, v in clock.seconds.items()))
        run_dir.mark_finished()
    return RunResult(config, trainee.model, metrics, output, export_dir,
                     round(time.time() - started, 1), predictions, clock.seconds,
                     Calibration.from_json(metrics["calibration"]))


def evaluate_and_report(config: ExperimentConfig, trainee: Trainee, splits: Splits,
                        preprocessor: Any, output: Path, strategy: tf.distribute.Strategy,
                        ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Stage 6: the calibration fitted on pairs the model did not train on
    (:func:`fit_run_calibration`), the decision rule fitted on the validation split's
    uncalibrated probabilities (`decision_rule`: calibration never changes a label), the
    test figures of its labels with the calibrated probabilities, and the
    calibration's figures before and after (`metrics.json`, plots) and every test pair's
    prediction (`predictions.csv`, what cross-validation and `tools/compare.py` read).

    A run trained on cached features is tested the same way: the head on the
    test pairs' encoder features (cached too), which is the full model's
    computation without a second trace of the encoders.
    """
    fits_on_val = config.optim.decision_rule != "argmax" or config.optim.calibration != "none"
    names = ("val", "test") if fits_on_val else ("test",)
    if trainee.on_features:
        from mmentail.training.feature_cache import feature_datasets

        datasets = feature_datasets(config, splits, trainee.model, strategy, preprocessor,
                                    names=names)
        probabilities = {name: predict_probabilities(trainee.fitted, dataset)
                         for name, dataset in zip(names, datasets)}
    else:
        probabilities = {name: predict_probabilities(trainee.model, split_dataset(
            config, splits, name, preprocessor, training=False)) for name in names}
    calibration = fit_run_calibration(config, trainee, splits, preprocessor, output,
                                      strategy, probabilities.get("val"))
    # The label from the model's own probabilities, how sure from the calibrated ones.
    rule = fit_decision_rule(config.optim.decision_rule, splits.labels("val"),
                             probabilities.get("val"), splits.labels("train"))
    if rule.name != "argmax":
        log.info("decision rule %s: tau %.1f, validation macro-F1 %.3f (argmax %.3f)",
                 rule.name, rule.tau, rule.validation_macro_f1[rule.name],
                 rule.validation_macro_f1["argmax"])
    predicted = predict_labels(probabilities["test"], rule.offsets)
    logits = {name: np.asarray(log_probabilities(p)) for name, p in probabilities.items()}
    probabilities = {name: calibration.apply(values) for name, values in logits.items()}
    metrics = {**test_figures(splits.labels("test"), probabilities["test"],
                              splits.labels("train"), seed=config.seed, predicted=predicted),
               "decision_rule": rule.to_json(),
               "calibration": calibration_report(calibration, logits["test"],
                                                 splits.labels("test"), predicted=predicted,
                                                 seed=config.seed)}
    calibrated = metrics["calibration"]["after"]
    log.info("calibration %s: test ECE %.3f -> %.3f, NLL %.3f -> %.3f", calibration.method,
             metrics["calibration"]["before"]["ece"], calibrated["ece"],
             metrics["calibration"]["before"]["nll"], calibrated["nll"])
    write_report(output, metrics)
    predictions = predictions_frame(splits.test, probabilities["test"], predicted,
                                    logits["test"])
    write_predictions(output, predictions)
    return metrics, predictions


def fit_run_calibration(config: ExperimentConfig, trainee: Trainee, splits: Splits,
                        preprocessor: Any, output: Path, strategy: tf.distribute.Strategy,
                        val_probabilities: np.ndarray | None) -> Calibration:
    """The run's calibration (`optim.calibration`), fitted for NLL on pairs the model did
    not train on (named in its `data`).

    With frozen encoders and `calibration_folds` >= 2: the validation split and the
    training pairs' cross-fitted probabilities (:func:`cross_fitted_probabilities`,
    heads trained for the run's best epoch's count of epochs); otherwise the
    validation split alone (a few dozen pairs on the real data's 5%).
    """
    method = config.optim.calibration
    if method == "none":
        return Calibration()
    probabilities, labels = [val_probabilities], [splits.labels("val")]
    fitted_on = f"validation split ({len(labels[0])} pairs)"
    folds = config.optim.calibration_folds
    if folds and trainee.on_features:
        best = output / BEST_FILE
        epochs = (json.loads(best.read_text())["epoch"] + 1 if best.is_file()
                  else config.optim.epochs)
        probabilities.append(cross_fitted_probabilities(config, splits, trainee, strategy,
                                                        preprocessor, folds, epochs))
        labels.append(splits.labels("train"))
        fitted_on += (f" + training pairs cross-fitted by {folds} heads of {epochs} epochs "
                      f"({len(labels[1])} pairs)")
    return fit_calibration(method, np.asarray(log_probabilities(np.concatenate(probabilities))),
                           np.concatenate(labels), data=fitted_on)


def cross_validate(config: ExperimentConfig, existing: str = "auto") -> dict[str, Any]:
    """Every fold of a `folds` >= 2 configuration trained by :func:`run` (no export), then
    `cv.json`, `cv.md` and `oof.csv` (see :mod:`mmentail.evaluation.crossval`)."""
    return crossval.cross_validate(
        config, lambda fold_config, mode: run(fold_config, mode, export=False), existing)


def export_run(config: ExperimentConfig, model: tf_keras.Model, preprocessor: Any,
               output: Path, rule: DecisionRule,
               calibration: Calibration = Calibration()) -> Path:
    """Stage 7: the serving SavedModel in `<output>/export`: its `probabilities` are
    calibrated by `calibration`, its `label` output applies `rule` to its `logits`; both
    and the config are in its metadata."""
    from mmentail.serving.export import export_savedmodel

    size = config.model.image_size
    return export_savedmodel(model, preprocessor, output / "export", image_size=(size, size),
                             seq_length=config.model.seq_length,
                             modality=config.model.modality, decision_rule=rule,
                             calibration=calibration, metadata={"config": config.to_json()})


def resume_command(argv: Sequence[str]) -> str:
    """The command that resumes an interrupted run: its own, less `--overwrite`
    (which would move the interrupted run aside and start from scratch)."""
    return "mmentail-train " + shlex.join(arg for arg in argv if arg != "--overwrite")


def resume_hint(stop: TrainingInterrupted, output: str | Path, argv: Sequence[str]) -> str:
    """What happened and the command that resumes the run."""
    return (f"\ntraining stopped by {signal.Signals(stop.signum).name} in epoch "
            f"{stop.epoch + 1} after step {stop.step}; nothing was exported. The state at "
            f"the end of the last finished epoch is kept in {Path(output) / BACKUP_DIR} "
            f"(epoch {stop.epoch + 1} restarts from its beginning). To resume, run the same "
            f"command again:\n  {resume_command(argv)}")


def build_parser() -> argparse.ArgumentParser:
    """`mmentail-train`'s flags: one per configuration field, plus what to do with a
    run already in `--output`."""
    parser = argparse.ArgumentParser(
        prog="mmentail-train", allow_abbrev=False,
        description="Train, evaluate and export a multimodal entailment model. A preset "
                    "(or a recorded config.json) gives every value; a flag overrides it.")
    add_config_flags(parser)
    existing = parser.add_argument_group(
        "the run directory",
        "what to do with a run already in --output; neither: an unfinished run of the same "
        "configuration continues, a finished one is evaluated and exported again"
    ).add_mutually_exclusive_group()
    existing.add_argument("--resume", dest="existing", action="store_const", const="resume",
                          help="continue the run in --output; epochs and strategy may change")
    existing.add_argument("--overwrite", dest="existing", action="store_const",
                          const="overwrite",
                          help="move any run in --output aside (to <output>.replaced-<time>) "
                               "and start a new one")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def train(args: argparse.Namespace) -> int:
        config = config_from_args(args)
        try:
            if config.data.cross_validates:
                cv = cross_validate(config, args.existing or "auto")
                print("\n" + crossval.cv_summary(cv, config.output))
                return 0
            result = run(config, args.existing or "auto")
        except TrainingInterrupted as stop:
            # A cross-validation keeps its finished folds; the stopped fold has the backup.
            where = (Path(config.output) / "fold-<k>" if config.data.cross_validates
                     else config.output)
            print(resume_hint(stop, where, argv))
            return 128 + stop.signum
        print("\n" + summary(result.metrics))
        print(f"run directory: {result.output}\nexport: {result.export_dir}\n"
              f"wall time: {result.wall_seconds} s")
        return 0

    return run_command(build_parser(), train, argv)


if __name__ == "__main__":
    sys.exit(main())

