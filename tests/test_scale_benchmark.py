"""tools/scale_benchmark.py's summary of runs: ratios, table and plot (the runs faked; the
real ones are whole `mmentail-train` processes, minutes each)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import drawn_pixels, load_tool, png_pixels


@pytest.fixture(scope="module")
def scale_tool():
    return load_tool("scale_benchmark")


def _fake_run(csv, image_dir, path, work, cache_dir, epochs, pairs):
    """Memory that grows by 10% a decade on one path and not on the other."""
    rss = 1000 * (1.1 ** len(str(pairs))) if path == "full_model" else 1000.0
    return {"pairs": pairs, "train_pairs": int(pairs * 0.85), "peak_rss_mb": rss,
            "wall_s": pairs / 100 + 30, "seconds_per_1k_pairs": (pairs / 100 + 30) / pairs * 1000,
            "stages": {"fit": pairs / 200, "build": 9.0, "export": 8.0, "evaluate": 1.0},
            "first_epoch_pairs_per_s": 100.0, "later_epoch_pairs_per_s": 150.0}


def test_runs_are_summarised_smallest_first_with_the_done_ratios(scale_tool, monkeypatch,
                                                                  tmp_path):
    monkeypatch.setattr(scale_tool, "generated_pairs", lambda cache, pairs: ("c.csv", "img"))
    monkeypatch.setattr(scale_tool, "measure_run", _fake_run)
    result = scale_tool.scale_benchmark([100000, 1000, 10000], 2, tmp_path, list(scale_tool.PATHS))
    assert [run["pairs"] for run in result["runs"]["features"]] == [1000, 10000, 100000]
    ratios = result["ratios"]
    assert ratios["features"]["peak_rss_largest_over_smallest"] == 1.0
    assert ratios["full_model"]["peak_rss_largest_over_smallest"] == pytest.approx(1.21)
    # 100k against 10k: 10.3 s against 13 s per 1k pairs.
    assert ratios["features"]["time_per_pair_largest_over_second_largest"] == pytest.approx(
        10.3 / 13, abs=0.01)
    table = scale_tool.markdown_table(result).splitlines()
    assert len(table) == 2 + 6 and table[-1].startswith("| full_model | 100,000 |")
    assert "fit 500, build 9, export 8" in table[-1]
    # The plot: each path's runs, smallest first, memory on the left, time on the right.
    rss, speed = scale_tool.scale_figure(result).axes
    for axis, figure in ((rss, "peak_rss_mb"), (speed, "seconds_per_1k_pairs")):
        lines = {line.get_label(): line for line in axis.lines}
        assert set(lines) == set(scale_tool.PATHS)
        for path, line in lines.items():
            runs = result["runs"][path]
            assert list(line.get_xdata()) == [1000, 10000, 100000]
            assert list(line.get_ydata()) == [run[figure] for run in runs]
    scale_tool.plot(result, str(tmp_path / "scale.png"))
    np.testing.assert_array_equal(png_pixels((tmp_path / "scale.png").read_bytes()),
                                  drawn_pixels(scale_tool.scale_figure(result)))


@pytest.mark.parametrize("argv, message", [(["--sizes", "50"], "at least 100 pairs"),
                                           (["--epochs", "1"], "at least 2")])
def test_too_small_runs_are_refused(scale_tool, argv, message, capsys):
    with pytest.raises(SystemExit):
        scale_tool.main(argv)
    assert message in capsys.readouterr().err
