"""Interrupted runs: SIGKILL and SIGTERM mid-training, a kill during export, runs
that must not mix, and an output dir that cannot be written."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tf_keras
from helpers import TINY_IMAGE, TINY_SEQ

from mmentail.train import main
from mmentail.training.callbacks import (
    GracefulStop,
    RunJournal,
    TrainingInterrupted,
    truncate_history,
)
from mmentail.training.run_dir import config_differences, open_run_dir


def _args(demo, output, *extra, epochs=3) -> list[str]:
    return ["--preset", "demo", "--output", str(output), "--data-csv", str(demo.csv_path),
            "--image-dir", str(demo.image_dir), "--preprocess-handle", str(demo.preprocess_dir),
            "--encoder-handle", str(demo.encoder_dir), "--image-size", str(TINY_IMAGE),
            "--seq-length", str(TINY_SEQ), "--batch-size", "16", "--epochs", str(epochs),
            *extra]


def _epochs(output: Path) -> list[int]:
    """Epochs in history.csv, which another process may be writing."""
    path = output / "history.csv"
    rows = path.read_text().splitlines()[1:] if path.exists() else []
    return [int(row.split(",", 1)[0]) for row in rows]


@pytest.fixture
def start(tmp_path):
    """Starts `mmentail-train ARGS` in a subprocess; kills what is left at teardown."""
    started = []

    def start(args: list[str], log: Path) -> subprocess.Popen:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        with open(log, "w") as out:
            started.append(subprocess.Popen([sys.executable, "-m", "mmentail.train", *args],
                                            stdout=out, stderr=subprocess.STDOUT, env=env))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _assert_serves(export_dir: Path, demo) -> None:
    served = tf.saved_model.load(str(export_dir))
    image = next(demo.image_dir.iterdir()).read_bytes()
    out = served.signatures["serving_default"](
        text_1=tf.constant(["a post", "another"]), image_1=tf.constant([image, image]),
        text_2=tf.constant(["a reply", "more"]), image_2=tf.constant([image, image]))
    np.testing.assert_allclose(tf.reduce_sum(out["probabilities"], axis=-1), [1, 1], atol=1e-4)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_sigkill_mid_epoch_then_same_command_resumes(demo, tmp_path, caplog, start):
    """Full model (no feature cache): killed in epoch 2, the rerun does the rest."""
    output, log = tmp_path / "run", tmp_path / "log"
    args = _args(demo, output, "--no-feature-cache", epochs=2)
    proc = start(args, log)
    # CheckpointManager writes `checkpoint` last: epoch 1's backup is complete.
    _wait_for((output / "backup" / "chief" / "checkpoint").exists, proc, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _epochs(output) == [0], "the kill came after the last epoch"
    assert not (output / "export").exists()
    assert json.loads((output / "state.json").read_text())["status"] == "running"

    with caplog.at_level("INFO", logger="mmentail"):
        assert main(args) == 0
    resumed = [r.getMessage() for r in caplog.records if "resuming at epoch" in r.getMessage()]
    assert resumed and resumed[0].startswith("resuming at epoch 2")
    assert _epochs(output) == [0, 1]
    assert json.loads((output / "state.json").read_text())["status"] == "finished"
    _assert_serves(output / "export", demo)


@pytest.fixture(scope="module")
def stopped_then_resumed(demo, tmp_path_factory):
    """A feature-cache run stopped by SIGTERM in epoch 3+, then resumed to the end."""
    output = tmp_path_factory.mktemp("sigterm") / "run"
    args = _args(demo, output, epochs=8)
    late = []
    previous = signal.signal(signal.SIGTERM, lambda *_: late.append(True))

    def send_sigterm_after_two_epochs():
        while len(_epochs(output)) < 2:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=send_sigterm_after_two_epochs, daemon=True)
    watcher.start()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = main(args)
    finally:
        watcher.join(timeout=60)
        signal.signal(signal.SIGTERM, previous)
    stopped = {"code": code, "late": late, "epochs": _epochs(output),
               "printed": printed.getvalue(),
               "export": (output / "export").exists(),
               "backup": (output / "backup").exists(),
               "state": json.loads((output / "state.json").read_text())["status"]}
    assert main(args) == 0
    return output, stopped


def test_sigterm_stops_at_the_next_step_and_says_how_to_resume(stopped_then_resumed, demo):
    output, stopped = stopped_then_resumed
    assert not stopped["late"], "SIGTERM arrived after training"
    assert stopped["code"] == 128 + signal.SIGTERM
    epoch = len(stopped["epochs"]) + 1
    assert f"training stopped by SIGTERM in epoch {epoch} after step " in stopped["printed"]
    assert f"kept in {output / 'backup'} (epoch {epoch} restarts" in stopped["printed"]
    command = "mmentail-train " + " ".join(_args(demo, output, epochs=8))
    assert stopped["printed"].rstrip().endswith(command)
    # Only whole epochs are recorded; nothing is exported; the backup is kept.
    assert stopped["epochs"] == list(range(len(stopped["epochs"])))
    assert 2 <= len(stopped["epochs"]) < 8
    assert not stopped["export"] and stopped["backup"] and stopped["state"] == "running"


def test_resumed_run_has_every_epoch_once_and_keeps_the_best(stopped_then_resumed, demo):
    output, _ = stopped_then_resumed
    history = pd.read_csv(output / "history.csv")
    assert history["epoch"].tolist() == list(range(8))
    best = json.loads((output / "checkpoints" / "best.json").read_text())
    # The latest epoch at the best value is kept, across the resume.
    at_best = np.isclose(history["val_macro_f1"], history["val_macro_f1"].max())
    assert best["epoch"] == int(history.index[at_best][-1])
    assert best["value"] == pytest.approx(history["val_macro_f1"].max())
    _assert_serves(output / "export", demo)


def test_kill_during_export_leaves_the_previous_export(stopped_then_resumed, demo, tmp_path,
                                                       start):
    """A finished run run again is exported again, not trained; SIGKILL while it writes."""
    output, _ = stopped_then_resumed
    before = _tree_digest(output / "export")
    history = (output / "history.csv").read_text()
    log = tmp_path / "log"
    proc = start(_args(demo, output, epochs=8), log)
    _wait_for(lambda: any(output.glob(".export.tmp-*")), proc, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(output.glob(".export.tmp-*")), "killed outside the export window"
    assert "Epoch 1/" not in log.read_text()
    assert (output / "history.csv").read_text() == history
    visible = {p.name for p in output.iterdir() if not p.name.startswith(".")}
    assert not {name for name in visible if name.startswith("export")} - {"export"}
    assert _tree_digest(output / "export") == before
    _assert_serves(output / "export", demo)

    # The killed export leaves the run unfinished; the next run of the
    # directory resumes it (no epoch is left, so it exports) and clears the
    # dead process's temporary.
    config = json.loads((output / "config.json").read_text())
    assert open_run_dir(output, config).status == "interrupted"
    assert not any(output.glob(".export.tmp-*"))


def test_other_configuration_is_refused_with_what_differs(demo, tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    (output / "config.json").write_text(json.dumps({"epochs": 1, "image_size": TINY_IMAGE}))
    with pytest.raises(SystemExit, match=r"different configuration \(.*epochs: 1 in the "
                                         r"stored run, 3 now.*--overwrite"):
        main(_args(demo, output))


def test_open_run_dir_modes(tmp_path):
    output = tmp_path / "run"
    config = {"epochs": 3, "image_size": 32, "output": "a", "cache_dir": "x"}
    first = open_run_dir(output, config)
    assert first.status == "new"
    with pytest.raises(SystemExit, match="in use by another mmentail-train"):
        open_run_dir(output, config)
    first.close()
    (output / "config.json").write_text(json.dumps(config))
    (output / ".export.tmp-dead").mkdir()
    (output / "splits").mkdir()
    (output / "splits" / ".train.csv.tmp-dead").write_text("half")

    moved = {**config, "output": "b", "cache_dir": "y"}  # where, not what: same run
    assert open_run_dir(output, moved).status == "interrupted"
    assert not list(output.rglob(".*.tmp-*"))
    with pytest.raises(SystemExit, match="epochs: 3 in the stored run, 5 now"):
        open_run_dir(output, {**config, "epochs": 5})
    assert open_run_dir(output, {**config, "epochs": 5}, "resume").status == "interrupted"
    with pytest.raises(SystemExit, match="image_size: 32 in the stored run, 64 now.*only "
                                         "epochs, strategy may change"):
        open_run_dir(output, {**config, "epochs": 5, "image_size": 64}, "resume")

    (output / "state.json").write_text(json.dumps({"status": "finished"}))
    assert open_run_dir(output, config).status == "finished"
    fresh = open_run_dir(output, {**config, "image_size": 64}, "overwrite")
    assert fresh.status == "new" and fresh.moved_to.name.startswith("run.replaced-")
    assert json.loads((fresh.moved_to / "config.json").read_text()) == config
    assert not (output / "config.json").exists()

    with pytest.raises(SystemExit, match="holds no run to resume"):
        open_run_dir(tmp_path / "empty", config, "resume")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    for mode in ("auto", "overwrite"):
        with pytest.raises(SystemExit, match=r"is not empty and holds no run .*todo.txt"):
            open_run_dir(tmp_path / "notes", config, mode)


def test_config_differences_compare_as_json():
    assert config_differences({"size": [32, 32], "output": "a"},
                              {"size": (32, 32), "output": "b"}) == {}
    assert config_differences({"a": 1}, {"b": 2}) == {"a": (1, None), "b": (None, 2)}


def test_truncate_history_keeps_header_and_earlier_epochs(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,0.9\n1,0.8\n2,0.7\n")
    with open(path, "a") as appender:  # as CSVLogger(append=True) holds it
        truncate_history(path, 1)
        appender.write("1,0.75\n")
    assert path.read_text() == "epoch,loss\n0,0.9\n1,0.75\n"
    truncate_history(path, 0)
    assert path.read_text() == "epoch,loss\n"


def test_journal_persists_the_best_value(tmp_path):
    checkpoint = tf_keras.callbacks.ModelCheckpoint(str(tmp_path / "w"), monitor="val_f1",
                                                    mode="max", save_best_only=True)
    best = tmp_path / "checkpoints" / "best.json"
    journal = RunJournal(tmp_path / "history.csv", best, checkpoint)
    journal.on_epoch_end(0)  # nothing seen yet: -inf is not recorded
    assert not best.exists()
    checkpoint.best = 0.5
    journal.on_epoch_end(3)
    assert json.loads(best.read_text()) == {"monitor": "val_f1", "value": 0.5, "epoch": 3}
    config = {"epochs": 1}
    run_dir = open_run_dir(tmp_path / "run", config)
    (run_dir.path / "checkpoints").mkdir()
    best.rename(run_dir.path / "checkpoints" / "best.json")
    assert run_dir.best_so_far() == 0.5


def test_best_checkpoint_keeps_the_latest_epoch_at_the_best_value(tmp_path):
    run_dir = open_run_dir(tmp_path / "run", {"epochs": 5})
    checkpoint = run_dir.best_checkpoint("val_f1")
    journal = run_dir.journal(checkpoint)
    model = tf_keras.Sequential([tf_keras.Input((1,)), tf_keras.layers.Dense(1)])
    checkpoint.set_model(model)
    best = run_dir.path / "checkpoints" / "best.json"
    for epoch, value in enumerate([0.5, 0.8, 0.6, 0.8, 0.7]):
        model.layers[0].bias.assign([float(epoch)])
        logs = {"val_f1": value}
        checkpoint.on_epoch_end(epoch, logs)
        journal.on_epoch_end(epoch, logs)
    assert json.loads(best.read_text()) == {"monitor": "val_f1", "value": 0.8, "epoch": 3}
    model.load_weights(checkpoint.filepath)
    assert model.layers[0].bias.numpy().tolist() == [3.0]
    # A loss is minimised, ties again going to the later epoch.
    loss_checkpoint = run_dir.best_checkpoint("val_loss")
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


def test_full_disk_fails_before_training(demo, tmp_path):
    """A file-size limit makes the probe write fail as a full disk does (EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(SystemExit, match="cannot write to output dir .*File too large"):
            main(_args(demo, tmp_path / "run"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert not (tmp_path / "run" / "config.json").exists()


def test_backup_resumes_under_one_device_strategy(tmp_path):
    run_dir = open_run_dir(tmp_path / "run", {"epochs": 3})
    x = np.ones((8, 2), np.float32)

    def fit(epochs):
        with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
            model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
            model.compile("adam", "mse")
        history = model.fit(x, x[:, :1], batch_size=4, epochs=epochs, verbose=0,
                            callbacks=[run_dir.backup()])
        return len(history.history.get("loss", [])), int(model.optimizer.iterations)

    assert fit(2) == (2, 4)
    assert fit(3) == (1, 6)  # epochs 1-2 and the optimizer step restored
