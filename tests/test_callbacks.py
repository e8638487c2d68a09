"""The Keras side of resuming (`mmentail.training.callbacks`): the journal of the best
value and of history rows, the best checkpoint, clean stops on a signal, the backup.

The models here are one Dense layer fitted for a few steps on constants, to drive the
callbacks: fast unit tests, not trainings of the mmentail model."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mmentail.training.callbacks import (
    BACKUP_DIR,
    BEST_FILE,
    HISTORY_FILE,
    GracefulStop,
    PassStart,
    RunJournal,
    TrainingInterrupted,
    backup,
    best_checkpoint,
    monitor_mode,
    truncate_history,
)


def test_truncate_history_keeps_header_and_earlier_epochs(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,0.9\n1,0.8\n2,0.7\n")
    with open(path, "a") as appender:  # as CSVLogger(append=True) holds it
        truncate_history(path, 1)
        appender.write("1,0.75\n")
    assert path.read_text() == "epoch,loss\n0,0.9\n1,0.75\n"
    truncate_history(path, 0)
    assert path.read_text() == "epoch,loss\n"
    truncate_history(tmp_path / "missing.csv", 0)  # nothing to cut
    assert not (tmp_path / "missing.csv").exists()


def test_journal_persists_the_best_value(tmp_path):
    run_path = tmp_path / "run"
    checkpoint = tf_keras.callbacks.ModelCheckpoint(str(tmp_path / "w"), monitor="val_f1",
                                                    mode="max", save_best_only=True)
    best = run_path / BEST_FILE
    assert best == run_path / "checkpoints" / "best.json"
    journal = RunJournal(run_path, checkpoint)
    journal.on_epoch_end(0)  # nothing seen yet: -inf is not recorded
    assert not best.exists()
    checkpoint.best = 0.5
    journal.on_epoch_end(3)
    assert json.loads(best.read_text()) == {"monitor": "val_f1", "value": 0.5, "epoch": 3}
    # A later process of the run starts its best checkpoint from the recorded value.
    assert best_checkpoint(run_path, "val_f1").best == 0.5


def test_journal_drops_history_rows_of_the_epoch_it_resumes_at(tmp_path, caplog):
    (tmp_path / HISTORY_FILE).write_text("epoch,loss\n0,0.9\n1,0.8\n")
    journal = RunJournal(tmp_path, best_checkpoint(tmp_path, "val_loss"))
    with caplog.at_level("INFO", logger="mmentail"):
        journal.on_epoch_begin(1)
        journal.on_epoch_begin(2)  # only the first epoch of a process truncates
    assert (tmp_path / HISTORY_FILE).read_text() == "epoch,loss\n0,0.9\n"
    assert [r.getMessage() for r in caplog.records] == [
        f"resuming at epoch 2 (epochs 1-1 restored from {BACKUP_DIR})"]


def test_best_checkpoint_keeps_the_latest_epoch_at_the_best_value(tmp_path):
    run_path = tmp_path / "run"
    checkpoint = best_checkpoint(run_path, "val_f1")
    journal = RunJournal(run_path, checkpoint)
    model = tf_keras.Sequential([tf_keras.Input((1,)), tf_keras.layers.Dense(1)])
    checkpoint.set_model(model)
    best = run_path / "checkpoints" / "best.json"
    for epoch, value in enumerate([0.5, 0.8, 0.6, 0.8, 0.7]):
        model.layers[0].bias.assign([float(epoch)])
        logs = {"val_f1": value}
        checkpoint.on_epoch_end(epoch, logs)
        journal.on_epoch_end(epoch, logs)
    assert json.loads(best.read_text()) == {"monitor": "val_f1", "value": 0.8, "epoch": 3}
    model.load_weights(checkpoint.filepath)
    assert model.layers[0].bias.numpy().tolist() == [3.0]
    # A loss is minimised, ties again going to the later epoch.
    assert monitor_mode("val_loss") == "min" and monitor_mode("val_macro_f1") == "max"
    loss_checkpoint = best_checkpoint(run_path, "val_loss")
    assert loss_checkpoint.monitor_op(0.2, 0.2) and not loss_checkpoint.monitor_op(0.3, 0.2)


def test_sigint_stops_fit_at_the_end_of_the_step(tmp_path):
    model = tf_keras.Sequential([tf_keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    steps = []

    class SignalAtStep3(tf_keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            steps.append(batch)
            if batch == 2:
                os.kill(os.getpid(), signal.SIGINT)

    x = np.zeros((40, 2), np.float32)
    before = signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        with pytest.raises(TrainingInterrupted, match="SIGINT in epoch 1 after step 3") as e:
            model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0,
                      callbacks=[stop, SignalAtStep3()])
        with pytest.raises(KeyboardInterrupt):  # a second signal does not wait
            stop._handle(signal.SIGINT, None)
    assert steps == [0, 1, 2] and (e.value.epoch, e.value.step) == (0, 3)
    assert signal.getsignal(signal.SIGINT) is before


def test_backup_resumes_under_one_device_strategy(tmp_path):
    run_path = tmp_path / "run"
    x = np.ones((8, 2), np.float32)

    def fit(epochs):
        with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
            model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
            model.compile("adam", "mse")
        history = model.fit(x, x[:, :1], batch_size=4, epochs=epochs, verbose=0,
                            callbacks=[backup(run_path)])
        return len(history.history.get("loss", [])), int(model.optimizer.iterations)

    assert fit(2) == (2, 4)
    assert (run_path / BACKUP_DIR).is_dir()
    assert fit(3) == (1, 6)  # epochs 1-2 and the optimizer step restored


def _pass_keys_read(callbacks_for) -> list[int]:
    """The step each training pass keyed its shuffle on, 4 epochs of 3 steps."""
    from mmentail.pipeline.shuffle import pass_key

    model = tf_keras.Sequential([tf_keras.layers.Dense(1)])
    model.compile(tf_keras.optimizers.SGD(0.01), "mse")
    model.build((None, 2))
    key, callbacks = callbacks_for(model)
    read: list[int] = []

    def record(pair):
        read.append(int(pair[1]))
        return pair

    rows = tf.data.Dataset.from_tensor_slices((tf.ones([6, 2]), tf.ones([6, 1])))
    passes = pass_key(0, key).map(lambda pair: tf.py_function(record, [pair], tf.int64))
    one_pass = passes.flat_map(lambda _: rows).apply(tf.data.experimental.assert_cardinality(6))
    model.fit(one_pass.batch(2), epochs=4, verbose=0, callbacks=callbacks)
    return sorted(set(read))


def test_every_pass_is_keyed_on_the_step_at_its_start():
    # Keyed on the optimizer's own counter, passes read 1, 4, 7, 10 in most runs
    # (their first update had landed) and 0, 3, 6, 9 in others.
    key = tf.Variable(0, dtype=tf.int64, trainable=False)
    assert _pass_keys_read(lambda model: (key, [PassStart(key)])) == [0, 3, 6, 9]

