"""`tools/benchmark.py` end to end at smoke size: every figure present, positive, consistent."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIDE_KEYS = {"cold_epoch_s", "later_epoch_s", "total_s", "pipeline_examples_per_s",
             "peak_rss_mb"}


@pytest.mark.slow  # trains, in child processes
def test_smoke_run_writes_consistent_figures(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "benchmark.py"), "--rows", "60", "--epochs", "2",
         "--image-size", "32", "--image-backbone", "resnet_tiny", "--seq-length", "24",
         "--source-size", "160x90",
         "--repeats", "1", "--serving-calls", "5", "--serving-rounds", "2",
         "--cache-dir", str(tmp_path / "cache"),
         "--same-process", "--mixed-precision", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())

    assert set(result) == {"keras_io", "mmentail", "ratios", "serving", "machine",
                           "train_process"}
    assert set(result["ratios"]) == {"total", "later_epoch", "pipeline",
                                     "cold_epoch_over_encoder_forward", "whole_process"}
    assert set(result["serving"]) == {
        "p50_ms_batch1", "p99_ms_batch1", "pairs_per_s_batch1", "pairs_per_s_batch8",
        "pairs_per_s_batch64", "forward_pairs_per_s_batch64", "export_over_forward",
        "server_pairs_per_s_8_clients", "server_pairs_per_s_8_clients_x8", "server_over_export",
        "forward_cpu_s_batch64", "decode_cpu_s_batch64", "export_over_forward_ceiling",
        "rounds"}
    rounds = result["serving"].pop("rounds")
    for side in ("keras_io", "mmentail"):
        figures = result[side]
        assert set(figures) == SIDE_KEYS
        assert all(math.isfinite(v) and v > 0 for v in figures.values()), figures
        # Two epochs: the total covers the cold one and the later one.
        assert figures["total_s"] >= figures["cold_epoch_s"] + figures["later_epoch_s"] - 1e-6
    numbers = [*result["ratios"].values(), *result["serving"].values()]
    assert all(math.isfinite(v) and v > 0 for v in numbers)
    k, m, r = result["keras_io"], result["mmentail"], result["ratios"]
    assert math.isclose(r["total"], k["total_s"] / m["total_s"])
    assert math.isclose(r["later_epoch"], k["later_epoch_s"] / m["later_epoch_s"])
    assert math.isclose(r["pipeline"], m["pipeline_examples_per_s"] / k["pipeline_examples_per_s"])
    # The whole mmentail-train command, timed from outside, holds every stage of its run.
    process = result["train_process"]
    assert math.isclose(r["whole_process"], k["total_s"] / process["wall_s"])
    assert set(process["stages"]) == {"resolve_sources", "read_and_split", "build", "datasets",
                                      "fit", "evaluate", "export"}
    assert process["wall_s"] > sum(process["stages"].values()) and process["peak_rss_mb"] > 0
    assert process["mixed_precision"] is True  # --mixed-precision reached the run
    assert result["machine"]["process_cpu_s"]["train_process"] > 0
    s = result["serving"]
    assert s["p99_ms_batch1"] >= s["p50_ms_batch1"]
    # The compared figures come from interleaved rounds; a ratio is the rounds' median.
    export, forward, server = (rounds[name] for name in (
        "pairs_per_s_batch64", "forward_pairs_per_s_batch64", "server_pairs_per_s_8_clients"))
    assert len(export) == len(forward) == len(server) == 2
    assert s["pairs_per_s_batch64"] == statistics.median(export)
    assert math.isclose(s["export_over_forward"],
                        statistics.median(e / f for e, f in zip(export, forward)))
    assert math.isclose(s["server_over_export"],
                        statistics.median(v / e for v, e in zip(server, export)))
    assert result["machine"]["cpus"] >= 1
    # The printed table is the one docs/benchmarks.md shows.
    assert "| later epoch, median (s) |" in completed.stdout
    assert "| export / model forward, batch 64 |" in completed.stdout
    assert "| whole mmentail-train process (s), mixed_bfloat16 |" in completed.stdout
