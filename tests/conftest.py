"""Session fixtures: a tiny demo data set and hub modules, an export, one trained run.

Shared builders live in `helpers.py`; tests import them from there.
"""

from __future__ import annotations

import pytest

import mmentail  # noqa: F401  (registers tensorflow-text ops)
from helpers import TINY_IMAGE, TINY_SEQ, run_config
from mmentail.sources.demo import DemoAssets, prepare_demo


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains a model or starts a process "
                                       "(deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> DemoAssets:
    """80 demo pairs with small images, plus their preprocessing and encoder modules."""
    return prepare_demo(tmp_path_factory.mktemp("demo"), num_pairs=80, seed=3,
                        image_size_range=(24, 72))


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


@pytest.fixture(scope="session")
def trained_run(demo, tmp_path_factory):
    """One tiny demo run, trained, evaluated and exported once for every test that only
    reads a finished run (its RunResult), with a fitted decision rule."""
    from mmentail.train import run

    output = tmp_path_factory.mktemp("trained") / "run"
    return run(run_config(demo, output, epochs=3, decision_rule="logit_adjusted"))
