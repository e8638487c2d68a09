"""A run directory's life: which run it holds, resuming it, stopping it cleanly.

Running `mmentail-train` again with the same `--output` continues the run
that is there. `tf_keras.callbacks.BackupAndRestore` keeps the training state
of the last finished epoch in `<output>/backup` (weights, optimizer state and
step counter, epoch); this module adds what it leaves out:

- which run a directory holds: `config.json` of a different configuration is
  refused (:func:`open_run_dir`), unless the caller asks to start over
  (`overwrite`, the old run is moved aside) or to resume anyway (`resume`,
  only :data:`RESUMABLE_KEYS` may differ);
- the best value of the monitored metric, which `ModelCheckpoint` keeps in
  memory only (:class:`RunJournal` persists it to `checkpoints/best.json`);
- `history.csv` rows of an epoch that is being redone (:class:`RunJournal`);
- SIGINT/SIGTERM: :class:`GracefulStop` ends training at the next step with
  :class:`TrainingInterrupted`, before the unfinished epoch is recorded.

A finished run keeps its backup and best checkpoint: running it again trains
no further, and evaluates and exports its best weights again; `resume` with a
larger `epochs` trains it on.

Example:
    >>> run_dir = open_run_dir(Path("runs/demo"), resolved_config, mode="auto")
    >>> with GracefulStop() as stop:
    ...     model.fit(..., callbacks=[stop, checkpoint, run_dir.journal(checkpoint),
    ...                               csv_logger, run_dir.backup()])
    >>> run_dir.mark_finished()
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import json
import logging
import math
import os
import shlex
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from mmentail.io_utils import atomic_write_json

log = logging.getLogger("mmentail")

MODES = ("auto", "resume", "overwrite")
# May differ between a run and its resumption under mode="resume".
RESUMABLE_KEYS = ("epochs", "strategy")
# Where a run is, not what it is.
IGNORED_KEYS = ("output", "cache_dir")
STATE_FILE = "state.json"
BACKUP_DIR = "backup"
BEST_FILE = Path("checkpoints") / "best.json"
HISTORY_FILE = "history.csv"
_LOCK_FILE = ".lock"
_TEMP_MARK = ".tmp-"


def monitor_mode(monitor: str) -> str:
    """"min" for a loss, "max" for any other metric (accuracy, macro-F1)."""
    return "min" if monitor.endswith("loss") else "max"


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """{key: (stored value, current value)} for every key whose values differ.

    Keys in :data:`IGNORED_KEYS` are not compared; a key missing on one side
    counts as a difference (value `None`). Values are compared as JSON.
    """
    current = json.loads(json.dumps(current))
    return {key: (stored.get(key), current.get(key))
            for key in sorted(set(stored) | set(current))
            if key not in IGNORED_KEYS and stored.get(key) != current.get(key)}


def _describe(differences: dict[str, tuple]) -> str:
    return "; ".join(f"{key}: {old!r} in the stored run, {new!r} now"
                     for key, (old, new) in differences.items())


@dataclasses.dataclass
class RunDir:
    """An open run directory; holds its lock until the process ends.

    Attributes:
        path: the run directory.
        status: "new", "interrupted" (a previous process stopped before the
            end; it resumes) or "finished" (it is evaluated and exported again).
        moved_to: where `overwrite` moved the previous run, if anywhere.
    """

    path: Path
    status: str
    moved_to: Path | None = None
    _lock: Any = dataclasses.field(default=None, repr=False)

    @property
    def backup_dir(self) -> Path:
        return self.path / BACKUP_DIR

    def best_so_far(self) -> float | None:
        """The best monitored value of earlier epochs of this run, if recorded."""
        return _recorded_best(self.path / BEST_FILE)

    def backup(self) -> tf_keras.callbacks.BackupAndRestore:
        """The callback that saves and restores the training state; put it last."""
        # Kept when fit ends: a run killed while evaluating or exporting, or
        # resumed with more epochs, restarts from it instead of from scratch.
        backup = tf_keras.callbacks.BackupAndRestore(str(self.backup_dir),
                                                     delete_checkpoint=False)
        # Its checkpoint works on one device too; its guard only lists the
        # strategies it was written for.
        backup._supported_strategies += (tf.distribute.OneDeviceStrategy,)
        return backup

    def best_checkpoint(self, monitor: str) -> tf_keras.callbacks.ModelCheckpoint:
        """The callback that keeps the weights of the best epoch by `monitor`.

        Of epochs tied at the best value it keeps the latest: a small
        validation set's macro-F1 often reaches its maximum (1.0 on the demo)
        many epochs before training has fitted what the test set needs. It
        starts from the best value recorded by an earlier process of this run.
        """
        mode = monitor_mode(monitor)
        # TF checkpoint format (no .h5): it keys weights by object, which hub
        # layers and distributed variables need.
        checkpoint = tf_keras.callbacks.ModelCheckpoint(
            str(self.path / BEST_FILE.with_suffix("")), monitor=monitor, mode=mode,
            save_best_only=True, save_weights_only=True,
            initial_value_threshold=self.best_so_far())
        checkpoint.monitor_op = np.greater_equal if mode == "max" else np.less_equal
        return checkpoint

    def journal(self, checkpoint: tf_keras.callbacks.ModelCheckpoint) -> RunJournal:
        """The callback that persists `checkpoint`'s best value and trims redone epochs."""
        return RunJournal(self.path / HISTORY_FILE, self.path / BEST_FILE, checkpoint)

    def set_status(self, status: str) -> None:
        atomic_write_json(self.path / STATE_FILE,
                          {"status": status, "pid": os.getpid(),
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def mark_finished(self) -> None:
        self.set_status("finished")

    def close(self) -> None:
        """Releases the directory's lock (the end of the process does too)."""
        self._lock.close()


def open_run_dir(output: Path, config: dict[str, Any], mode: str = "auto") -> RunDir:
    """Checks that `output` can hold the run of `config`, locks it and marks it running.

    Args:
        output: run directory (created if missing).
        config: the resolved configuration, as written to `config.json`.
        mode: "auto": resume a run of the same configuration, refuse any
            other; "resume": as auto, and :data:`RESUMABLE_KEYS` may differ
            (e.g. more epochs), but there must be a run; "overwrite": move any
            run found to `<output>.replaced-<time>` and start afresh.

    Raises:
        SystemExit: with a message saying what differs and what to do, when
            the directory holds another run, is not a run directory, or is in
            use by another `mmentail-train`.

    Example:
        >>> run_dir = open_run_dir(Path("runs/demo"), {"epochs": 3, ...})
        >>> run_dir.status
        'new'
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    output.mkdir(parents=True, exist_ok=True)
    lock = _lock(output)
    try:
        status, moved_to = _check(output, config, mode)
    except BaseException:
        lock.close()
        raise
    if moved_to is not None:
        lock.close()
        output.mkdir()
        lock = _lock(output)
    _remove_stale_temporaries(output)
    run_dir = RunDir(output, status, moved_to, lock)
    if status == "finished":
        log.info("%s holds a finished run: evaluating and exporting its best weights "
                 "again (use --overwrite to train a new one)", output)
    elif status == "interrupted":
        log.info("%s holds an unfinished run of this configuration: resuming it", output)
    run_dir.set_status("running")
    return run_dir


def _check(output: Path, config: dict[str, Any], mode: str) -> tuple[str, Path | None]:
    """The status of the run in `output`, and where `overwrite` moved it."""
    stored_config = output / "config.json"
    if not stored_config.exists():
        leftovers = [p.name for p in output.iterdir()
                     if p.name not in (_LOCK_FILE, STATE_FILE) and _TEMP_MARK not in p.name]
        if leftovers:
            raise SystemExit(f"mmentail-train: {output} is not empty and holds no run "
                             f"(no config.json; found {', '.join(sorted(leftovers)[:5])}); "
                             "choose a new or empty --output")
        if mode == "resume":
            raise SystemExit(f"mmentail-train: --resume: {output} holds no run to resume")
        return "new", None
    if mode == "overwrite":
        moved_to = output.with_name(f"{output.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        os.rename(output, moved_to)
        log.info("--overwrite: moved the previous run to %s", moved_to)
        return "new", moved_to
    differences = config_differences(json.loads(stored_config.read_text()), config)
    blocking = {k: v for k, v in differences.items()
                if mode != "resume" or k not in RESUMABLE_KEYS}
    if blocking:
        hint = (f"only {', '.join(RESUMABLE_KEYS)} may change when resuming"
                if mode == "resume" else
                f"--resume continues it if only {', '.join(RESUMABLE_KEYS)} differ")
        raise SystemExit(
            f"mmentail-train: {output} holds a run with a different configuration "
            f"({_describe(blocking)}). Use --overwrite to start a new run there (the "
            f"old one is moved aside), another --output, or the same flags; {hint}.")
    if differences:
        log.info("--resume with changed settings: %s", _describe(differences))
    state = output / STATE_FILE
    finished = state.exists() and json.loads(state.read_text())["status"] == "finished"
    return ("finished" if finished else "interrupted"), None


def _lock(output: Path) -> Any:
    """An exclusive lock on `output`, released when the process ends (even killed)."""
    handle = open(output / _LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit(f"mmentail-train: {output} is in use by another mmentail-train "
                         "process") from None
    return handle


def _remove_stale_temporaries(output: Path) -> None:
    """Removes the hidden temporaries of atomic writes a killed process left behind."""
    for path in output.rglob(f".*{_TEMP_MARK}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class RunJournal(tf_keras.callbacks.Callback):
    """Persists the best monitored value and drops history rows of redone epochs.

    Place it after `checkpoint` and before `CSVLogger(append=True)` and
    `BackupAndRestore` in the callback list.
    """

    def __init__(self, history: Path, best: Path,
                 checkpoint: tf_keras.callbacks.ModelCheckpoint):
        super().__init__()
        self._history, self._best, self._checkpoint = history, best, checkpoint
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



def resume_hint(stop: TrainingInterrupted, output: str | Path, argv: Sequence[str]) -> str:
    """What happened and the command that resumes the run."""
    return (f"\ntraining stopped by {signal.Signals(stop.signum).name} in epoch "
            f"{stop.epoch + 1} after step {stop.step}; nothing was exported. The state at "
            f"the end of the last finished epoch is kept in {Path(output) / BACKUP_DIR} "
            f"(epoch {stop.epoch + 1} restarts from its beginning). To resume, run the same "
            f"command again:\n  mmentail-train {shlex.join(argv)}")
