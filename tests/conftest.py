"""Session fixtures: a tiny demo data set and hub modules, an export, one trained run.

Shared builders live in `helpers.py`; tests import them from there.

Test files run longest first, by the seconds in `durations.json`, so the
workers of `pytest -n 2 --dist loadfile` finish together (xdist's own order,
most tests first, leaves the few long trainings to the end).
`pytest --store-durations` rewrites the file from the run's own timings.
"""

from __future__ import annotations

import collections
import fcntl
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

import mmentail  # noqa: F401  (registers tensorflow-text ops)
from helpers import TINY_IMAGE, TINY_SEQ, run_config
from mmentail.sources.demo import DemoAssets, prepare_demo

DURATIONS = Path(__file__).with_name("durations.json")


def pytest_addoption(parser):
    parser.addoption("--store-durations", action="store_true",
                     help=f"write each test file's seconds to tests/{DURATIONS.name}")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a model or starts a process "
                                       "(deselect with -m 'not slow')")
    if hasattr(config.option, "loadscopereorder"):  # xdist: keep the order given below
        config.option.loadscopereorder = False
    if config.getoption("store_durations") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(FileSeconds(), "file-seconds")


def pytest_collection_modifyitems(items):
    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    usual = sum(known.values()) / len(known) if known else 0.0
    items.sort(key=lambda item: -known.get(item.nodeid.split("::")[0], usual))


class FileSeconds:
    """Sums each test file's seconds (setup, call, teardown) and writes them at the end."""

    def __init__(self):
        self.seconds = collections.Counter()

    def pytest_runtest_logreport(self, report):
        self.seconds[report.nodeid.split("::")[0]] += report.duration

    def pytest_sessionfinish(self):
        DURATIONS.write_text(json.dumps({name: round(value, 1) for name, value
                                         in self.seconds.most_common()}, indent=1) + "\n")


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> DemoAssets:
    """80 demo pairs with small images, plus their preprocessing and encoder modules:
    made once per test run, by the first xdist worker that needs them."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _demo_in(tmp_path_factory.mktemp("demo"))
    shared = tmp_path_factory.getbasetemp().parent  # this run's, common to its workers
    with open(shared / "demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait, then reuse what it made
        return _demo_in(shared / "demo")


def _demo_in(directory: Path) -> DemoAssets:
    return prepare_demo(directory, num_pairs=80, seed=3, image_size_range=(24, 72))


@pytest.fixture(scope="session")
def demo_pairs(demo):
    from mmentail.data.pairs import read_pairs

    return read_pairs(demo.csv_path, demo.image_dir)


@pytest.fixture(scope="session")
def preprocessor(demo):
    from mmentail.pipeline.preprocess import load_preprocessor

    return load_preprocessor(str(demo.preprocess_dir))


@pytest.fixture(scope="session")
def exported(demo, preprocessor, tmp_path_factory):
    """An untrained tiny model and its serving export: (keras model, export dir)."""
    import tf_keras

    from mmentail.config.experiment import ModelConfig
    from mmentail.model.build import build_model
    from mmentail.serving.export import export_savedmodel

    tf_keras.utils.set_random_seed(1)
    model = build_model(ModelConfig(encoder_handle=str(demo.encoder_dir), image_weights="none",
                                    image_backbone="resnet_tiny", image_size=TINY_IMAGE,
                                    seq_length=TINY_SEQ,
                                    projection_dim=16))
    export_dir = tmp_path_factory.mktemp("exports") / "export"
    export_savedmodel(model, preprocessor, export_dir, image_size=(TINY_IMAGE, TINY_IMAGE),
                      seq_length=TINY_SEQ, metadata={"note": "test"})
    return model, export_dir


@pytest.fixture(scope="module")
def export(exported):
    """`exported`'s export loaded and warmed up (its signature traced) once per module."""
    from mmentail.serving.loaded import load_export

    loaded = load_export(exported[1])
    loaded.warm_up()
    return loaded


@pytest.fixture(scope="session")
def trained_run(demo, tmp_path_factory):
    """One tiny demo run, trained, evaluated and exported once per test run for every
    test that only reads a finished run (its RunResult), with a fitted decision rule
    and a calibration fitted on cross-fitted training pairs too.

    Its head has no dropout, so a run under another strategy (two replicas) can be
    compared with it weight for weight. The first xdist worker that needs it trains
    it; the others wait, then read it back (its model rebuilt with its weights).
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _trained_run_in(demo, tmp_path_factory.mktemp("trained"))
    shared = tmp_path_factory.getbasetemp().parent
    with open(shared / "trained.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _trained_run_in(demo, shared / "trained")


TRAINED_WEIGHTS = "weights.npz"  # beside the run directory, not in it


def _trained_run_in(demo: DemoAssets, directory: Path):
    """The trained run in `directory`: trained there, or read back when another process
    trained it (the weights file is written last)."""
    from mmentail.io_utils import atomic_write_bytes, atomic_write_json
    from mmentail.train import run

    if (directory / TRAINED_WEIGHTS).is_file():
        return _read_run(directory)
    result = run(run_config(demo, directory / "run", epochs=3, dropout=0.0,
                            decision_rule="logit_adjusted", calibration_folds=2))
    atomic_write_json(directory / "result.json", {"wall_seconds": result.wall_seconds})
    weights = io.BytesIO()
    np.savez(weights, *result.model.get_weights())
    atomic_write_bytes(directory / TRAINED_WEIGHTS, weights.getvalue())
    return result


def _read_run(directory: Path):
    """The RunResult of the finished run in `directory/run`, read from its files."""
    from mmentail.config.experiment import load_config
    from mmentail.evaluation.calibration import Calibration
    from mmentail.evaluation.report import read_predictions
    from mmentail.model.build import build_model
    from mmentail.train import RunResult

    output = directory / "run"
    config = load_config(output / "config.json")
    model = build_model(config.model)
    weights = np.load(directory / TRAINED_WEIGHTS)
    model.set_weights([weights[f"arr_{i}"] for i in range(len(weights.files))])
    metrics = json.loads((output / "metrics.json").read_text())
    return RunResult(config, model, metrics, output, output / "export",
                     json.loads((directory / "result.json").read_text())["wall_seconds"],
                     read_predictions(output / "predictions.csv"),
                     json.loads((output / "timings.json").read_text()),
                     Calibration.from_json(metrics["calibration"]))
