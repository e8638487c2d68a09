"""Progress of long steps: a bar on stderr at a terminal, a few log lines elsewhere."""

from __future__ import annotations

import logging

from mmentail import progress as progress_module
from mmentail.data.tfrecord import write_split
from mmentail.progress import Progress


def test_the_bar_is_drawn_on_stderr_and_stdout_stays_clean(capsys):
    progress = Progress("encoding features", total=40, unit="pair", terminal=True)
    for _ in range(4):
        progress.add(10)
    captured = capsys.readouterr()
    assert "40/40" in captured.err and captured.out == ""
    assert progress.logged == []


def test_logs_say_how_far_at_each_tenth_and_never_past_the_total(caplog):
    progress = Progress("checking rows and image headers", total=7, unit="row", terminal=False,
                        interval=0)
    with caplog.at_level(logging.INFO, logger="mmentail"):
        for _ in range(9):  # more than announced: counted up to the total only
            progress.add(1)
    assert progress.logged == [1, 2, 3, 4, 5, 6, 7] and progress.done == 7
    assert caplog.messages[-1] == "checking rows and image headers: 7/7 rows (100%)"
    Progress("nothing to do", total=0).add(5)  # no division by zero, nothing shown
    quick = Progress("a quick step", total=10, terminal=False)  # 10 s between lines
    for _ in range(10):
        quick.add(1)
    assert quick.logged == []


def test_a_long_step_reports_its_progress(demo_pairs, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(progress_module, "LOG_INTERVAL", 0.0)
    with caplog.at_level(logging.INFO, logger="mmentail"):
        write_split(demo_pairs.iloc[:20], tmp_path, "train", num_shards=2)
    assert "writing the train shards: 20/20 rows (100%)" in caplog.messages
