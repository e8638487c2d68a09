"""The Keras callbacks of a resumable run: backup, best checkpoint, journal, clean stops.

`tf_keras.callbacks.BackupAndRestore` keeps the training state of the last
finished epoch in `<output>/backup` (weights, optimizer state and step
counter, epoch, and the dropout layers' random state, see :mod:`mmentail.rng`);
these add what it leaves out:

- the best value of the monitored metric, which `ModelCheckpoint` keeps in
  memory only (:class:`RunJournal` persists it to `checkpoints/best.json`);
- `history.csv` rows of an epoch that is being redone (:class:`RunJournal`);
- SIGINT/SIGTERM: :class:`GracefulStop` ends training at the next step with
  :class:`TrainingInterrupted`, before the unfinished epoch is recorded;
- the epoch shuffle's key, the optimizer step at the start of each pass, held
  still while the pass runs (:class:`PassStart`);
- each epoch's wall seconds, training and validation, as the `seconds` column of
  `history.csv` (:class:`EpochSeconds`).

Example:
    checkpoint = best_checkpoint(run_dir.path, "val_macro_f1")
    with GracefulStop() as stop:
        model.fit(..., callbacks=[stop, checkpoint, RunJournal(run_dir.path, checkpoint),
                                  csv_logger, backup(run_dir.path)])
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from mmentail.io_utils import atomic_write_json

log = logging.getLogger("mmentail")

BACKUP_DIR = "backup"
BEST_FILE = Path("checkpoints") / "best.json"
HISTORY_FILE = "history.csv"
LOGS_DIR = "logs"


def monitor_mode(monitor: str) -> str:
    """"min" for a loss, "max" for any other metric (accuracy, macro-F1)."""
    return "min" if monitor.endswith("loss") else "max"


def tensorboard(run_path: Path) -> tf_keras.callbacks.TensorBoard:
    """Every epoch's losses and metrics (macro-F1 included) in `<output>/logs/{train,
    validation}`, for `tensorboard --logdir <output>/logs`."""
    return tf_keras.callbacks.TensorBoard(str(run_path / LOGS_DIR), write_graph=False,
                                          update_freq="epoch", profile_batch=0)


def backup(run_path: Path) -> tf_keras.callbacks.BackupAndRestore:
    """The callback that saves and restores the training state; put it last."""
    # Kept when fit ends: a run killed while evaluating or exporting, or
    # resumed with more epochs, restarts from it instead of from scratch.
    callback = tf_keras.callbacks.BackupAndRestore(str(run_path / BACKUP_DIR),
                                                   delete_checkpoint=False)
    # Its checkpoint works on one device too; its guard only lists the
    # strategies it was written for.
    callback._supported_strategies += (tf.distribute.OneDeviceStrategy,)
    return callback


def best_checkpoint(run_path: Path, monitor: str) -> tf_keras.callbacks.ModelCheckpoint:
    """The callback that keeps the weights of the best epoch by `monitor`.

    Of epochs tied at the best value it keeps the latest: a small validation
    set's macro-F1 often reaches its maximum (1.0 on the demo) many epochs
    before training has fitted what the test set needs. It starts from the
    best value recorded by an earlier process of this run.
    """
    mode = monitor_mode(monitor)
    # TF checkpoint format (no .h5): it keys weights by object, which hub
    # layers and distributed variables need.
    checkpoint = tf_keras.callbacks.ModelCheckpoint(
        str(run_path / BEST_FILE.with_suffix("")), monitor=monitor, mode=mode,
        save_best_only=True, save_weights_only=True,
        initial_value_threshold=_recorded_best(run_path / BEST_FILE))
    checkpoint.monitor_op = np.greater_equal if mode == "max" else np.less_equal
    return checkpoint


class RunJournal(tf_keras.callbacks.Callback):
    """Persists the best monitored value and drops history rows of redone epochs.

    Place it after `checkpoint` and before `CSVLogger(append=True)` and
    `BackupAndRestore` in the callback list.
    """

    def __init__(self, run_path: Path, checkpoint: tf_keras.callbacks.ModelCheckpoint):
        super().__init__()
        self._history, self._best = run_path / HISTORY_FILE, run_path / BEST_FILE
        self._checkpoint = checkpoint
        self._first_epoch: int | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self._first_epoch is None:
            self._first_epoch = epoch
            if epoch:
                log.info("resuming at epoch %d (epochs 1-%d restored from %s)",
                         epoch + 1, epoch, BACKUP_DIR)
            truncate_history(self._history, epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        best = self._checkpoint.best
        saved = (logs or {}).get(self._checkpoint.monitor) == best
        if math.isfinite(best) and (saved or best != _recorded_best(self._best)):
            atomic_write_json(self._best, {"monitor": self._checkpoint.monitor,
                                           "value": float(best), "epoch": epoch})


def _recorded_best(path: Path) -> float | None:
    return json.loads(path.read_text())["value"] if path.exists() else None


def truncate_history(path: Path, epoch: int) -> None:
    """Cuts `history.csv` back to its header and the rows of epochs before `epoch`.

    Truncates in place, so a `CSVLogger` that already opened the file for
    appending writes after the kept rows.
    """
    if not path.exists():
        return
    keep = 0
    with open(path, newline="", encoding="utf-8") as f:
        for number, line in enumerate(iter(f.readline, "")):
            if number and int(next(csv.reader([line]))[0]) >= epoch:
                break
            keep += len(line.encode("utf-8"))
    if keep < path.stat().st_size:
        os.truncate(path, keep)


class TrainingInterrupted(Exception):
    """Training stopped on a signal at the end of a step, before its epoch ended."""

    def __init__(self, signum: int, epoch: int, step: int):
        self.signum, self.epoch, self.step = signum, epoch, step
        super().__init__(f"{signal.Signals(signum).name} in epoch {epoch + 1} after step "
                         f"{step}")


class GracefulStop(tf_keras.callbacks.Callback):
    """Turns SIGINT/SIGTERM into :class:`TrainingInterrupted` at the next step end.

    Used as a context manager, it installs its signal handler for the body and
    restores the previous ones after. It raises rather than setting
    `model.stop_training`: with the latter, `fit` would still validate and
    call every `on_epoch_end`, so the unfinished epoch would be checkpointed,
    logged and backed up as if complete. A second signal interrupts at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        super().__init__()
        self.received: int | None = None
        self._epoch = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        log.warning("%s received: stopping at the end of this step",
                    signal.Signals(signum).name)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.received is not None:
            raise TrainingInterrupted(self.received, self._epoch, batch + 1)


class PassStart(tf_keras.callbacks.Callback):
    """Keeps `key` at the optimizer's step as it was when the current training pass began.

    The epoch shuffle (:func:`mmentail.pipeline.shuffle.shuffle_each_epoch`)
    reads its key when a pass's iterator produces its first element, which
    races with the pass's first training step: keyed on the optimizer's step
    itself, a pass read the step before or after that step's update, so the
    same run shuffled differently from one process to the next. `key` changes
    only between passes: at the start of training (after `BackupAndRestore`
    restored the step, so place this callback after it) and at each epoch's end.
    """

    def __init__(self, key: tf.Variable):
        super().__init__()
        self.key = key

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.key.assign(tf.cast(self.model.optimizer.iterations, self.key.dtype))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.key.assign(tf.cast(self.model.optimizer.iterations, self.key.dtype))


class EpochSeconds(tf_keras.callbacks.Callback):
    """Adds the epoch's wall seconds (its training and validation) to its logs as
    `seconds`: place it before the callbacks that record the logs."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["seconds"] = round(time.perf_counter() - self._started, 3)
