"""Building, compiling and fitting a run's model: stages 3 to 5 of `mmentail-train`.

With both encoders frozen (and `feature_cache` on) only the model's "head"
is fitted, on encoder features computed once (:mod:`.feature_cache`);
otherwise the whole model is fitted on the input pipeline, fine-tuned
encoders at their own learning rate (:class:`.two_rate.TwoRateModel`).
Either way the full model is what gets evaluated and exported.

Example:
    trainee = build_trainee(config, strategy, splits.labels("train"))
    train_ds, val_ds = training_datasets(config, splits, trainee, strategy, preprocessor)
    fit(config, trainee, train_ds, val_ds, run_dir.path, strategy, splits.labels("train"))
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from mmentail.config.experiment import ExperimentConfig
from mmentail.data.prepare import Splits
from mmentail.model.build import build_model
from mmentail.pipeline.dataset import split_dataset
from mmentail.training.callbacks import (
    HISTORY_FILE,
    EpochSeconds,
    GracefulStop,
    PassStart,
    RunJournal,
    backup,
    best_checkpoint,
    monitor_mode,
    tensorboard,
)
from mmentail.training.distribute import share_chief_weights
from mmentail.training.losses import class_weights, focal_alpha, make_loss
from mmentail.training.optim import optimizer_for
from mmentail.training.two_rate import TwoRateModel

log = logging.getLogger("mmentail")


@dataclasses.dataclass
class Trainee:
    """The run's model and the part of it that `fit` trains.

    Attributes:
        model: the full model, raw inputs to probabilities (evaluated, exported).
        fitted: what is fitted: `model`, or its "head" on cached features.
        pass_step: the optimizer's step when the current training pass began: the
            key of the epoch shuffle (kept by :class:`PassStart` during `fit`).
    """

    model: tf_keras.Model
    fitted: tf_keras.Model
    pass_step: tf.Variable = dataclasses.field(default_factory=lambda: tf.Variable(
        0, dtype=tf.int64, trainable=False, name="pass_step"))

    @property
    def on_features(self) -> bool:
        return self.fitted is not self.model


def fits_on_features(config: ExperimentConfig) -> bool:
    """True when the encoders stay frozen and their features may be cached."""
    return config.runtime.feature_cache and not config.model.fine_tunes_encoders


def compile_metrics() -> list[tf_keras.metrics.Metric]:
    """Accuracy and macro-F1, in float32 whatever the dtype policy: mixed-precision
    metric variables cannot be read across replicas."""
    return [tf_keras.metrics.CategoricalAccuracy(name="accuracy", dtype="float32"),
            tf_keras.metrics.F1Score(average="macro", name="macro_f1", dtype="float32")]


def build_trainee(config: ExperimentConfig, strategy: tf.distribute.Strategy,
                  train_labels: np.ndarray) -> Trainee:
    """Stage 3: the model, built under `strategy` from a fixed seed, and compiled."""
    optim = config.optim
    steps_per_epoch = -(-len(train_labels) // optim.batch_size)
    # Seeded here, not earlier: the initial weights must not depend on what drew
    # random numbers before (generating the demo seeds and draws for its encoder).
    tf_keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_model(config.model, config.seed)
        if config.model.fine_tunes_encoders:
            # Pretrained encoders train at their own, smaller rate.
            model = TwoRateModel.wrap(model, optimizer_for(optim, steps_per_epoch,
                                                           optim.encoder_learning_rate))
        fitted = model.get_layer("head") if fits_on_features(config) else model
        compile_fitted(fitted, config, train_labels)
    return Trainee(model, fitted)


def compile_fitted(fitted: tf_keras.Model, config: ExperimentConfig,
                   train_labels: np.ndarray) -> None:
    """Compiles what a run fits with its loss, optimiser and metrics; call inside the
    strategy's scope."""
    optim = config.optim
    steps_per_epoch = -(-len(train_labels) // optim.batch_size)
    fitted.compile(
        optimizer=optimizer_for(optim, steps_per_epoch, optim.learning_rate),
        loss=make_loss(optim.loss, label_smoothing=optim.label_smoothing,
                       gamma=optim.focal_gamma,
                       alpha=focal_alpha(optim.focal_alpha, train_labels)),
        metrics=compile_metrics(), jit_compile=config.runtime.jit_compile,
        steps_per_execution=config.runtime.steps_per_execution)


def training_datasets(config: ExperimentConfig, splits: Splits, trainee: Trainee,
                      strategy: tf.distribute.Strategy,
                      preprocessor: Any) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Stage 4: what `fit` reads, train reshuffled every epoch, keyed on the optimizer's
    step at the pass's start (`trainee.pass_step`)."""
    step = trainee.pass_step
    if trainee.on_features:
        from mmentail.training.feature_cache import feature_datasets

        return feature_datasets(config, splits, trainee.model, strategy, preprocessor, step)
    return (split_dataset(config, splits, "train", preprocessor, training=True,
                          shuffle_step=step),
            split_dataset(config, splits, "val", preprocessor, training=False))


def fit(config: ExperimentConfig, trainee: Trainee, train: tf.data.Dataset,
        val: tf.data.Dataset, run_path: Path, strategy: tf.distribute.Strategy,
        train_labels: np.ndarray) -> None:
    """Stage 5: fits, resumably, then keeps the best epoch's weights on every worker.

    Raises:
        TrainingInterrupted: on SIGINT/SIGTERM, at the end of a step.
    """
    optim = config.optim
    checkpoint = best_checkpoint(run_path, optim.monitor)
    Path(checkpoint.filepath).parent.mkdir(parents=True, exist_ok=True)
    callbacks = [EpochSeconds(), checkpoint, RunJournal(run_path, checkpoint),
                 tf_keras.callbacks.CSVLogger(str(run_path / HISTORY_FILE), append=True),
                 tensorboard(run_path), backup(run_path), PassStart(trainee.pass_step)]
    if optim.early_stopping:
        callbacks.append(tf_keras.callbacks.EarlyStopping(
            monitor=optim.monitor, mode=monitor_mode(optim.monitor),
            patience=optim.early_stopping))
    log.info("training %d epochs (trainable weights: %d)", optim.epochs,
             sum(int(np.prod(w.shape)) for w in trainee.fitted.trainable_weights))
    with GracefulStop() as stop:
        trainee.fitted.fit(
            train, validation_data=val, epochs=optim.epochs, callbacks=[stop, *callbacks],
            class_weight=class_weights(train_labels) if optim.class_weights else None,
            verbose=2 if not sys.stdout.isatty() else 1)
    if Path(checkpoint.filepath + ".index").exists():
        trainee.fitted.load_weights(checkpoint.filepath)
    # Other workers' checkpoints are temporary: they take the chief's best weights.
    share_chief_weights(trainee.fitted, strategy)


def cross_fitted_probabilities(config: ExperimentConfig, splits: Splits, trainee: Trainee,
                               strategy: tf.distribute.Strategy, preprocessor: Any,
                               folds: int, epochs: int) -> np.ndarray:
    """Probabilities of every training pair from a head that did not train on it.

    The training pairs are split into `folds` stratified shares; for each, a new
    head (the run's, built from the run's seed and compiled the same way) trains
    on the other shares' cached features for `epochs` epochs and predicts the
    share it left out. What calibration is fitted on, beside the validation split:
    many more pairs the run's own model would be scored on as on new ones.

    Args:
        config: the run's configuration (frozen encoders).
        splits: the run's splits.
        trainee: the run's trainee, fitted on features.
        strategy: the run's strategy.
        preprocessor: the text preprocessor (to encode features not yet cached).
        folds: shares of the training pairs (at least 2).
        epochs: epochs each head trains (the run's best epoch's count).

    Returns:
        [training pairs, classes] float32, in the training split's order.
    """
    from sklearn.model_selection import StratifiedKFold

    from mmentail.model.head import build_head
    from mmentail.training.feature_cache import feature_dataset, feature_rows

    features, onehot, at = feature_rows(config, splits, trainee.model, strategy, preprocessor,
                                        names=("train",))
    rows, labels = at["train"], splits.labels("train")
    dims = {name: int(array.shape[1]) for name, array in features.items()}
    # Folds need each label at least `folds` times: fewer folds for rarer labels.
    folds = max(2, min(folds, int(np.bincount(labels).min())))
    shares = StratifiedKFold(folds, shuffle=True, random_state=config.seed).split(rows, labels)
    probabilities = np.zeros((len(rows), onehot.shape[1]), np.float32)
    optim = config.optim
    for k, (train_at, held_out) in enumerate(shares, start=1):
        log.info("calibration: cross-fitting head %d/%d on %d training pairs", k, folds,
                 len(train_at))
        tf_keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            head = build_head(config.model, dims, config.seed)
            compile_fitted(head, config, labels[train_at])
        head.fit(feature_dataset(features, onehot, rows=rows[train_at],
                                 batch_size=optim.batch_size, training=True, seed=config.seed,
                                 shuffle_buffer=config.data.shuffle_buffer),
                 epochs=epochs, verbose=0,
                 class_weight=class_weights(labels[train_at]) if optim.class_weights else None)
        probabilities[held_out] = head.predict(
            feature_dataset(features, onehot, rows=rows[held_out],
                            batch_size=optim.batch_size, training=False), verbose=0)
    return probabilities
