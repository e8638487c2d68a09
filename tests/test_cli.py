"""Expected failures end a command with their message alone and a non-zero exit code."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from helpers import train_args
from mmentail.data.pairs import DataError
from mmentail.train import main


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
