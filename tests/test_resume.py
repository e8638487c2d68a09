"""Interrupted runs end to end: SIGKILL and SIGTERM mid-training, the resume hint,
a kill during export, and resumed runs that end with the uninterrupted run's weights.
(Run directories: test_run_dir.py; callbacks: test_callbacks.py.)"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
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

from helpers import run_config, tiny_settings, train_args
from mmentail.train import build_parser, main, resume_command, resume_hint
from mmentail.training.callbacks import TrainingInterrupted
from mmentail.training.run_dir import open_run_dir


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


# A run of the settings in argv[3] (JSON) that SIGKILLs itself at the end of training
# step argv[2] of epoch argv[1] (0-based, counted in each fold of a cross-validation):
# a kill at a known point mid-epoch, however fast the epochs are.
_KILLED_AT = """
import json, os, signal, sys
from mmentail.training import fit

epoch, step, settings = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])


class KilledAt(fit.PassStart):
    def on_epoch_begin(self, number, logs=None):
        self.epoch = number

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch + 1) == (epoch, step):
            os.kill(os.getpid(), signal.SIGKILL)


fit.PassStart = KilledAt
from mmentail.train import cross_validate, resolve_config, run

config = resolve_config("demo", settings)
cross_validate(config) if config.data.cross_validates else run(config, export=False)
"""


def _train(demo, output: Path, **settings) -> None:
    """A tiny demo run (or cross-validation) of `settings` in this process, no export."""
    from mmentail.train import cross_validate, run

    config = run_config(demo, output, **settings)
    cross_validate(config) if config.data.cross_validates else run(config, export=False)


def _train_killed_at(demo, output: Path, epoch: int, step: int, **settings) -> None:
    """:func:`_train` in a subprocess that SIGKILLs itself after `step` steps of `epoch`
    (1-based; in each fold of a cross-validation)."""
    log = output.with_name(output.name + ".log")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    settings = {**tiny_settings(demo, output), **settings}
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-c", _KILLED_AT, str(epoch - 1), str(step),
                               json.dumps(settings)], stdout=out, stderr=subprocess.STDOUT,
                              env=env).returncode
    assert code == -signal.SIGKILL, f"exited {code}:\n{log.read_text()[-3000:]}"


def _checkpoint_values(prefix: Path) -> dict[str, np.ndarray]:
    """Every variable of a TF checkpoint: weights, optimizer state and step, RNG states."""
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _assert_same_training_state(resumed: Path, uninterrupted: Path) -> list[str]:
    """The two runs' last backups (every variable) and best checkpoints agree to 1e-6;
    returns the names of the dropout generators' states in the backup."""
    for checkpoint in ("checkpoints", "backup/chief"):
        path = Path(tf.train.latest_checkpoint(str(resumed / checkpoint)))
        ours = _checkpoint_values(path)
        theirs = _checkpoint_values(uninterrupted / path.relative_to(resumed))
        assert sorted(ours) == sorted(theirs)
        for name, value in ours.items():
            np.testing.assert_allclose(value, theirs[name], rtol=0, atol=1e-6, err_msg=name)
    return [name for name in ours if "generator/_state_var" in name]


def _kill_resume_and_compare(demo, tmp_path, caplog, epoch: int, step: int,
                             **settings) -> None:
    """Trains `settings` uninterrupted, and again in a subprocess SIGKILLed after `step`
    steps of `epoch`, then resumed in this process, which must say it resumes at that
    epoch. Both share one feature cache."""
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    _train(demo, uninterrupted, **settings)
    _train_killed_at(demo, resumed, epoch, step, **settings)
    with caplog.at_level("INFO", logger="mmentail"):
        _train(demo, resumed, **settings)
    assert (f"resuming at epoch {epoch} (epochs 1-{epoch - 1} restored from backup)"
            in caplog.messages)


@pytest.mark.slow
def test_killed_fine_tuning_run_resumes_to_the_uninterrupted_weights(demo, tmp_path, caplog):
    """BERT fine-tuned at its own rate (two optimizers), its dropout included: the
    project's BERT keeps its random state in the hub module's variables."""
    _kill_resume_and_compare(demo, tmp_path, caplog, epoch=2, step=1, epochs=2,
                             modality="text", train_text_encoder=True)
    generators = _assert_same_training_state(tmp_path / "resumed", tmp_path / "uninterrupted")
    # The demo BERT's embeddings and two layers, inside the hub module.
    assert len([name for name in generators if "/_func/" in name]) == 3


@pytest.mark.slow
def test_killed_head_run_of_a_cross_validation_resumes_to_the_uninterrupted_weights(
        demo, tmp_path, caplog):
    """Frozen encoders, the head on cached features with every kind of head dropout
    (projections, modality dropout, cross-attention, hidden layer), killed in fold 1's
    second epoch: the rerun finishes fold 1 from its backup, then trains the other
    folds; every fold ends as in the uninterrupted cross-validation."""
    _kill_resume_and_compare(demo, tmp_path, caplog, epoch=2, step=1, epochs=2, folds=3,
                             modality_dropout=0.3, fusion="cross_attention")
    for fold in ("fold-1", "fold-2", "fold-3"):
        generators = _assert_same_training_state(tmp_path / "resumed" / fold,
                                                 tmp_path / "uninterrupted" / fold)
        # Two projections, modality dropout, two attentions, the hidden layer's dropout.
        assert len(generators) == 6


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_hint_drops_overwrite_and_keeps_the_other_flags():
    """Rerunning with --overwrite would move the interrupted run aside and start afresh."""
    argv = ["--preset", "demo", "--overwrite", "--output", "runs/my run", "--epochs", "8"]
    command = resume_command(argv)
    assert command == "mmentail-train --preset demo --output 'runs/my run' --epochs 8"
    assert resume_command(["--resume", "--epochs", "9"]) == "mmentail-train --resume --epochs 9"
    hint = resume_hint(TrainingInterrupted(signal.SIGTERM, 2, 5), "runs/my run", argv)
    assert "training stopped by SIGTERM in epoch 3 after step 5; nothing was exported" in hint
    assert f"kept in {Path('runs/my run') / 'backup'} (epoch 3 restarts" in hint
    assert hint.rstrip().endswith(command) and "--overwrite" not in hint


def test_flags_cannot_be_abbreviated_so_the_hint_drops_every_overwrite():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--overw", "--epochs", "8"])
    assert "--overwrite" not in resume_command(["--overwrite", "--epochs", "8"])


@pytest.mark.slow
def test_sigkill_mid_epoch_then_same_command_resumes(demo, tmp_path, caplog, start):
    """Full model (no feature cache): killed in epoch 2, the rerun does the rest."""
    output, log = tmp_path / "run", tmp_path / "log"
    args = train_args(demo, output, "--no-feature-cache", epochs=2)
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
    """A feature-cache run started with --overwrite and stopped by SIGTERM in epoch 3+,
    then resumed to the end by the command its hint printed."""
    output = tmp_path_factory.mktemp("sigterm") / "run"
    args = ["--overwrite", *train_args(demo, output, epochs=8)]
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
    # The hint's command, as a user would paste it.
    hint = shlex.split(stopped["printed"].rstrip().splitlines()[-1])
    stopped["resumed_code"] = main(hint[1:]) if hint[:1] == ["mmentail-train"] else None
    stopped["replaced"] = sorted(p.name for p in output.parent.glob("run.replaced-*"))
    return output, stopped


@pytest.mark.slow
def test_sigterm_stops_at_the_next_step_and_says_how_to_resume(stopped_then_resumed, demo):
    output, stopped = stopped_then_resumed
    assert not stopped["late"], "SIGTERM arrived after training"
    assert stopped["code"] == 128 + signal.SIGTERM
    epoch = len(stopped["epochs"]) + 1
    assert f"training stopped by SIGTERM in epoch {epoch} after step " in stopped["printed"]
    assert f"kept in {output / 'backup'} (epoch {epoch} restarts" in stopped["printed"]
    # The run was started with --overwrite: the hint's command is the same less
    # --overwrite, which would move the interrupted run aside instead of resuming it.
    flags = train_args(demo, output, epochs=8)
    assert stopped["printed"].rstrip().endswith("mmentail-train " + shlex.join(flags))
    hint = stopped["printed"].rstrip().splitlines()[-1]
    assert "--overwrite" not in hint
    assert all(flag in shlex.split(hint) for flag in flags)
    # Only whole epochs are recorded; nothing is exported; the backup is kept.
    assert stopped["epochs"] == list(range(len(stopped["epochs"])))
    assert 2 <= len(stopped["epochs"]) < 8
    assert not stopped["export"] and stopped["backup"] and stopped["state"] == "running"
    # The printed command resumed the run in place.
    assert stopped["resumed_code"] == 0 and stopped["replaced"] == []


@pytest.mark.slow
def test_resumed_run_has_every_epoch_once_and_keeps_the_best(stopped_then_resumed, demo):
    output, _ = stopped_then_resumed
    history = pd.read_csv(output / "history.csv")
    assert history["epoch"].tolist() == list(range(8))
    best = json.loads((output / "checkpoints" / "best.json").read_text())
    # The latest epoch at the best value is kept, across the resume.
    at_best = np.isclose(history["val_macro_f1"], history["val_macro_f1"].max())
    assert best["epoch"] == int(history.index[at_best][-1])
    assert best["value"] == pytest.approx(history["val_macro_f1"].max())
    assert json.loads((output / "state.json").read_text())["status"] == "finished"
    _assert_serves(output / "export", demo)


@pytest.mark.slow
def test_kill_during_export_leaves_the_previous_export(stopped_then_resumed, demo, tmp_path,
                                                       start):
    """A finished run run again is exported again, not trained; SIGKILL while it writes."""
    output, _ = stopped_then_resumed
    before = _tree_digest(output / "export")
    history = (output / "history.csv").read_text()
    log = tmp_path / "log"
    proc = start(train_args(demo, output, epochs=8), log)
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
