"""Expected failures end a command with their message alone and a non-zero exit code."""

from __future__ import annotations

import argparse
import configparser
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import mmentail
import mmentail_launcher
from helpers import train_args
from mmentail.cli import run_command
from mmentail.data.pairs import DataError
from mmentail.train import main


def _console_scripts() -> dict[str, str]:
    """setup.cfg's console commands: name -> entry point (`mmentail_launcher:train`)."""
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).parents[1] / "setup.cfg")
    lines = setup["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict((part.strip() for part in line.split("=")) for line in lines)


def _csv(demo, tmp_path, rows: pd.DataFrame) -> str:
    path = tmp_path / "pairs.csv"
    rows.to_csv(path, index=False)
    return str(path)


def _args_with_csv(demo, tmp_path, csv: str, *extra: str) -> list[str]:
    args = train_args(demo, tmp_path / "run", *extra)
    args[args.index("--data-csv") + 1] = csv
    return args


@pytest.fixture
def rows(demo):
    return pd.read_csv(demo.csv_path, dtype=str, keep_default_na=False)


def test_bad_data_prints_the_problem_without_a_traceback(demo, tmp_path, rows, capsys):
    rows.loc[4, "label"] = "Maybe"
    args = _args_with_csv(demo, tmp_path, _csv(demo, tmp_path, rows))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmentail-train: ") and "row 5" in err and "unknown label 'Maybe'" in err
    assert "Traceback" not in err
    with pytest.raises(DataError, match="unknown label"):
        main([*args, "--debug"])


def test_a_missing_image_folder_is_one_problem(demo, tmp_path, capsys):
    args = train_args(demo, tmp_path / "run")
    args[args.index("--image-dir") + 1] = str(tmp_path / "no-such-folder")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "the image folder" in err and "does not exist" in err
    assert "1 problem(s)" in err and "not found" not in err


def test_too_few_rows_say_how_many_are_needed(demo, tmp_path, rows, capsys):
    assert main(_args_with_csv(demo, tmp_path, _csv(demo, tmp_path, rows.head(5)))) == 1
    assert "at least 46 pairs" in capsys.readouterr().err


def test_a_csv_of_one_label_is_refused(demo, tmp_path, rows, capsys):
    rows["label"] = "NoEntailment"
    assert main(_args_with_csv(demo, tmp_path, _csv(demo, tmp_path, rows))) == 1
    err = capsys.readouterr().err
    assert "no Contradictory, Implies pairs to learn from" in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_bad_setting_exits_2_before_any_work(demo, tmp_path, capsys):
    assert main(train_args(demo, tmp_path / "run", "--image-size", "16")) == 2
    assert "image_size must be at least 32" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_console_command_shows_the_message_alone(demo, tmp_path, rows):
    rows.loc[0, "label"] = "Maybe"
    args = _args_with_csv(demo, tmp_path, _csv(demo, tmp_path, rows))
    proc = subprocess.run([sys.executable, "-m", "mmentail.train", *args], capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          timeout=300)
    assert proc.returncode == 1
    assert "unknown label 'Maybe'" in proc.stderr and "Traceback" not in proc.stderr


_CUDART = (b"I0000 00:00:1795754253.241210    1591 cudart_stub.cc:31] Could not find cuda "
           b"drivers on your machine, GPU will not be used.\n")


def test_the_start_up_filter_keeps_everything_but_the_chatter(capfd):
    lines = [b"WARNING: All log messages before absl::InitializeLog() is called are written "
             b"to STDERR\n", _CUDART,
             b"E0000 00:00:1795754260.107956    1591 cuda_platform.cc:52] failed call to "
             b"cuInit: INTERNAL: CUDA error\n",
             b"E0000 00:00:1795754260.107956    1591 op_kernel.cc:99] a real failure\n",
             b"UserWarning: something real\n"]
    with mmentail_launcher.filtered_stderr():
        os.write(2, b"".join(lines))
    assert capfd.readouterr().err.encode() == b"".join(lines[3:])
    assert mmentail_launcher.wants_quiet(["--data-csv", "x"], {})
    assert not mmentail_launcher.wants_quiet(["--verbose"], {})
    assert mmentail_launcher.wants_quiet(["--", "--verbose"], {})
    assert not mmentail_launcher.wants_quiet([], {"TF_CPP_MIN_LOG_LEVEL": "0"})


@pytest.mark.slow
def test_the_console_commands_hide_tensorflow_start_up_chatter(tmp_path):
    """Hidden by default; shown with --verbose or the user's own TF_CPP_MIN_LOG_LEVEL."""
    command = [str(Path(sys.executable).parent / "mmentail-write-tfrecords"),
               "--data-csv", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "out")]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    cases = [("quiet", command, env), ("verbose", [*command, "--verbose"], env),
             ("level 0", command, {**env, "TF_CPP_MIN_LOG_LEVEL": "0"})]
    runs = {name: subprocess.Popen(args, env=run_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE) for name, args, run_env in cases}
    for name, proc in runs.items():
        _, err = proc.communicate(timeout=120)
        chatter = [line for line in err.splitlines() if mmentail_launcher.is_chatter(line)]
        assert proc.returncode == 1, (name, err)
        assert b"mmentail-write-tfrecords: " in err and b"does not exist" in err, (name, err)
        assert bool(chatter) == (name != "quiet"), (name, err)


def test_tensorflows_python_lines_print_once_and_info_only_when_verbose():
    """TensorFlow's INFO lines (its own logger's and absl's) only with --verbose."""
    import logging

    import tensorflow as tf

    tf.get_logger()  # TensorFlow's logger, with the handler it adds for itself
    for argv, level in (([], logging.WARNING), (["--verbose"], logging.INFO)):
        parser = argparse.ArgumentParser(prog="mmentail-x")
        assert run_command(parser, lambda args: 0, argv) == 0
        tf_logger = logging.getLogger("tensorflow")
        assert not tf_logger.handlers and tf_logger.getEffectiveLevel() == level
        # TensorFlow's checkpoint saver logs through absl ("Sharding callback duration").
        assert logging.getLogger("absl").getEffectiveLevel() == level


def test_a_command_ends_with_its_objects_frozen_out_of_the_collector(monkeypatch):
    """So the interpreter's exit skips a last full collection (~2 s after training)."""
    import gc
    import types

    command = types.ModuleType("mmentail_test_command")
    command.main = lambda: 3
    monkeypatch.setitem(sys.modules, command.__name__, command)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")  # no start-up filtering here
    gc.unfreeze()
    try:
        assert mmentail_launcher.launch(command.__name__) == 3
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("command, entry_point", sorted(_console_scripts().items()))
def test_every_console_command_prints_its_name_and_version(command, entry_point, monkeypatch,
                                                           capsys):
    """`<command> --version` through the command's own entry point: its name and
    `mmentail.__version__` (the one source setup.cfg reads), exit code 0, nothing run."""
    module, function = entry_point.split(":")
    assert module == "mmentail_launcher"
    monkeypatch.setattr(sys, "argv", [command, "--version"])
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")  # no start-up filtering here
    with pytest.raises(SystemExit) as exit_:
        getattr(mmentail_launcher, function)()
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"{command} {mmentail.__version__}\n"
