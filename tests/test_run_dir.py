"""Run directories: which run they hold, runs that must not mix, what may change on
resume, and an output dir that cannot be written (`mmentail.training.run_dir`)."""

from __future__ import annotations

import json
import resource
import signal

import pytest

from helpers import TINY_IMAGE, train_args
from mmentail.config.experiment import ExperimentConfig, with_overrides
from mmentail.errors import RunDirError
from mmentail.train import main
from mmentail.training.run_dir import (
    RESUMABLE_KEYS,
    check_writable,
    config_differences,
    open_run_dir,
)


def _config(**overrides) -> dict:
    """A nested config.json dict: the defaults with `overrides`."""
    return with_overrides(ExperimentConfig(), overrides).to_json()


def test_other_configuration_is_refused_with_what_differs(demo, tmp_path, capsys):
    """An old flat config.json is read in today's sections; nothing is trained."""
    output = tmp_path / "run"
    output.mkdir()
    (output / "config.json").write_text(json.dumps({"epochs": 1, "image_size": TINY_IMAGE}))
    code = main(train_args(demo, output, epochs=3))
    assert code != 0
    err = capsys.readouterr().err
    assert err.startswith("mmentail-train: ")
    assert err.count("\n") == 1  # one line, no traceback
    assert "different configuration (" in err
    assert "optim.epochs: 1 in the stored run, 3 now" in err and "--overwrite" in err
    assert "model.image_size" not in err  # the same in both
    assert not (output / "splits").exists() and not (output / "history.csv").exists()


def test_open_run_dir_modes(tmp_path):
    output = tmp_path / "run"
    config = _config(epochs=3, image_size=32, output="a", cache_dir="x")
    first = open_run_dir(output, config)
    assert first.status == "new"
    with pytest.raises(RunDirError, match="in use by another mmentail-train"):
        open_run_dir(output, config)
    first.close()
    (output / "config.json").write_text(json.dumps(config))
    (output / ".export.tmp-dead").mkdir()
    (output / "splits").mkdir()
    (output / "splits" / ".train.csv.tmp-dead").write_text("half")

    moved = _config(epochs=3, image_size=32, output="b", cache_dir="y")  # where, not what
    assert open_run_dir(output, moved).status == "interrupted"
    assert not list(output.rglob(".*.tmp-*"))
    more_epochs = _config(epochs=5, image_size=32, output="a", cache_dir="x")
    with pytest.raises(RunDirError, match="optim.epochs: 3 in the stored run, 5 now"):
        open_run_dir(output, more_epochs)
    assert open_run_dir(output, more_epochs, "resume").status == "interrupted"
    with pytest.raises(RunDirError, match="model.image_size: 32 in the stored run, 64 now.*"
                                          "only optim.epochs, runtime.strategy may change"):
        open_run_dir(output, _config(epochs=5, image_size=64, output="a", cache_dir="x"),
                     "resume")

    (output / "state.json").write_text(json.dumps({"status": "finished"}))
    assert open_run_dir(output, config).status == "finished"
    fresh = open_run_dir(output, _config(epochs=3, image_size=64, output="a", cache_dir="x"),
                         "overwrite")
    assert fresh.status == "new" and fresh.moved_to.name.startswith("run.replaced-")
    assert json.loads((fresh.moved_to / "config.json").read_text()) == config
    assert not (output / "config.json").exists()

    with pytest.raises(RunDirError, match="holds no run to resume"):
        open_run_dir(tmp_path / "empty", config, "resume")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    for mode in ("auto", "overwrite"):
        with pytest.raises(RunDirError, match=r"is not empty and holds no run .*todo.txt"):
            open_run_dir(tmp_path / "notes", config, mode)


def test_config_differences_compare_as_json():
    assert config_differences({"size": [32, 32], "output": "a"},
                              {"size": (32, 32), "output": "b"}) == {}
    assert config_differences({"a": 1}, {"b": 2}) == {"a": (1, None), "b": (None, 2)}


def test_config_differences_are_keyed_by_section_and_field():
    stored = _config(epochs=3)
    current = _config(epochs=5, image_size=64, strategy="one_device", output="elsewhere",
                      cache_dir="/other/cache")
    assert config_differences(stored, current) == {
        "optim.epochs": (3, 5), "model.image_size": (128, 64),
        "runtime.strategy": ("mirrored", "one_device")}
    assert set(RESUMABLE_KEYS) == {"optim.epochs", "runtime.strategy"}
    # A config.json of the flat layout older runs wrote is read in today's sections.
    assert config_differences({"epochs": 3, "image_size": 128}, stored) == {}
    assert config_differences({"epochs": 1}, stored) == {"optim.epochs": (1, 3)}


def test_a_run_recorded_by_another_version_is_the_same_run(tmp_path):
    """A record's `mmentail_version` is no setting: a run another version wrote resumes."""
    config = ExperimentConfig()
    older = {**config.to_json(), "mmentail_version": "0.0.1"}
    assert config_differences(older, config.to_record()) == {}
    # Also where the stored record has a setting this version lacks.
    assert config_differences({**older, "warp_drive": True}, config.to_json()) == {
        "warp_drive": (True, None)}
    output = tmp_path / "run"
    output.mkdir()
    (output / "config.json").write_text(json.dumps(older))
    assert open_run_dir(output, config.to_json()).status == "interrupted"


def test_check_writable_refuses_a_file_in_the_way(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RunDirError, match="cannot write to output dir"):
        check_writable(blocker / "run")
    check_writable(tmp_path / "new" / "run")
    assert list((tmp_path / "new" / "run").iterdir()) == []  # the probe is removed


def test_full_disk_fails_before_training(demo, tmp_path, capsys):
    """A file-size limit makes the probe write fail as a full disk does (EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        code = main(train_args(demo, tmp_path / "run"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert code != 0
    err = capsys.readouterr().err
    assert "mmentail-train: cannot write to output dir" in err and "File too large" in err
    assert not (tmp_path / "run" / "config.json").exists()
