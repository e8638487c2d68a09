from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tf_keras

from helpers import run_config, train_args
from mmentail import train
from mmentail.training.distribute import (
    STRATEGIES,
    is_chief,
    make_strategy,
    mixed_precision_policy,
    precision,
    worker_output,
)


def test_local_strategies_are_chief_and_write_to_the_output(tmp_path):
    strategy = make_strategy("one_device")
    assert is_chief(strategy)
    with worker_output(strategy, tmp_path / "run") as output:
        assert output == tmp_path / "run"
    with pytest.raises(ValueError, match="unknown strategy 'gpu'"):
        make_strategy("gpu")
    assert set(STRATEGIES) == {"mirrored", "one_device", "multi_worker", "tpu"}


def test_mixed_precision_is_bfloat16_on_cpu_and_scoped():
    strategy = make_strategy("one_device")
    assert mixed_precision_policy(strategy) == "mixed_bfloat16"
    with precision("mixed_bfloat16"):
        assert tf_keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert tf_keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_speed_options_train_and_export(demo, tmp_path):
    config = run_config(demo, tmp_path / "run", epochs=1, mixed_precision=True,
                        jit_compile=True)
    result = train.run(config)
    head = result.model.get_layer("head")
    assert head.get_layer("fusion_hidden").compute_dtype == "bfloat16"
    assert head.get_layer("probabilities").compute_dtype == "float32"
    assert tf_keras.mixed_precision.global_policy().name == "float32"  # restored
    assert head.jit_compile
    assert 0 <= result.metrics["macro_f1"] <= 1
    assert result.export_dir == tmp_path / "run" / "export"
    assert (tmp_path / "run" / "export" / "saved_model.pb").is_file()


@pytest.mark.slow
def test_training_from_tfrecords_with_a_file_cache_and_steps_per_execution(demo, tmp_path,
                                                                          monkeypatch):
    from mmentail.data.tfrecord import write_tfrecords
    from mmentail.evaluation.rerun import evaluate_run

    write_tfrecords(demo.csv_path, demo.image_dir, tmp_path / "shards", num_shards=2)
    config = run_config(demo, tmp_path / "run", epochs=2, data_csv=None, image_dir=None,
                        data_tfrecords=str(tmp_path / "shards"), feature_cache=False,
                        pipeline_cache=str(tmp_path / "pipeline-cache"),
                        deterministic=False, steps_per_execution=3)
    result = train.run(config)
    assert int(result.model._steps_per_execution.numpy()) == 3
    test_rows = pd.read_csv(tmp_path / "shards" / "test.csv")
    assert sum(map(sum, result.metrics["confusion_matrix"])) == len(test_rows)
    cached = sorted(p.name.split("-")[0] for p in (tmp_path / "pipeline-cache").glob("*.index"))
    assert cached == ["test", "train", "val"]
    assert (tmp_path / "run" / "export" / "saved_model.pb").is_file()
    # mmentail-evaluate reads the test images back from the shards, from any directory.
    monkeypatch.chdir(tmp_path / "shards")
    assert evaluate_run(tmp_path / "run")["confusion_matrix"] == result.metrics[
        "confusion_matrix"]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# argv: weights.npz, then mmentail-train flags.
_WORKER = """
import logging
import sys

import numpy as np

from mmentail import train
from mmentail.config.flags import config_from_args

logging.basicConfig(level=logging.INFO, format="%(message)s")
config = config_from_args(train.build_parser().parse_args(sys.argv[2:]))
result = train.run(config)
np.savez(sys.argv[1], *result.model.get_weights())
"""


@pytest.mark.slow
def test_two_workers_train_identical_weights_and_only_the_chief_writes(demo, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    procs = []
    for index in range(2):
        args = train_args(demo, tmp_path / f"run-{index}", "--strategy", "multi_worker",
                          epochs=2)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(scratch),
               "TF_CONFIG": json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": index}})}
        # Logs go to files: a worker blocked on a full pipe would stall the other
        # in its next collective.
        with open(tmp_path / f"log-{index}.txt", "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(tmp_path / f"weights-{index}.npz"), *args],
                env=env, stdout=log, stderr=subprocess.STDOUT))
    started = time.time()
    try:
        for proc in procs:
            proc.wait(timeout=600)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    logs = [(tmp_path / f"log-{index}.txt").read_text() for index in range(2)]
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-4000:]
    print(f"two workers took {time.time() - started:.0f} s")

    weights = [np.load(tmp_path / f"weights-{i}.npz") for i in range(2)]
    assert len(weights[0].files) == len(weights[1].files) > 0
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name])
    assert "over 2 replica(s)" in logs[0]
    # The chief (worker 0) wrote the run; worker 1 wrote only to scratch space, removed.
    chief = tmp_path / "run-0"
    assert (chief / "export" / "saved_model.pb").is_file() and (chief / "metrics.json").is_file()
    assert not (tmp_path / "run-1").exists()
    assert not [p for p in scratch.iterdir() if p.name.startswith("mmentail-")]
    # Only the chief stored the encoder features.
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 1  # one pass
