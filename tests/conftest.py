"""Shared fixtures: a tiny demo data set and hub modules, built once per session."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmentail  # noqa: F401  (registers tensorflow-text ops)
from mmentail.demo_data import DemoAssets, prepare_demo

TINY_IMAGE = 32
TINY_SEQ = 24


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> DemoAssets:
    """80 demo pairs with small images, plus their preprocessing and encoder modules."""
    return prepare_demo(tmp_path_factory.mktemp("demo"), num_pairs=80, seed=3,
                        image_size_range=(24, 72))


@pytest.fixture(scope="session")
def demo_pairs(demo):
    from mmentail.data import read_pairs

    return read_pairs(demo.csv_path, demo.image_dir)


@pytest.fixture(scope="session")
def preprocessor(demo):
    from mmentail.pipeline import load_preprocessor

    return load_preprocessor(str(demo.preprocess_dir))


def encode_image(colour, size=(40, 30), fmt="PNG", mode="RGB") -> bytes:
    """Bytes of a solid-colour image in `fmt`."""
    image = Image.new(mode, size, colour)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def random_image_bytes(seed: int, size=(48, 36), fmt="JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def write_csv(path: Path, rows: list[dict], header=None) -> Path:
    import csv

    header = header or ["id_1", "text_1", "image_1", "id_2", "text_2", "image_2", "label"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def exported(demo, preprocessor, tmp_path_factory):
    """An untrained tiny model and its serving export: (keras model, export dir)."""
    import tf_keras

    from mmentail.export import export_savedmodel
    from mmentail.model import ModelConfig, build_model

    tf_keras.utils.set_random_seed(1)
    size = (TINY_IMAGE, TINY_IMAGE)
    model = build_model(ModelConfig(encoder_handle=str(demo.encoder_dir), image_weights=None,
                                    image_size=size, seq_length=TINY_SEQ, projection_dim=16))
    export_dir = tmp_path_factory.mktemp("exports") / "export"
    export_savedmodel(model, preprocessor, export_dir, image_size=size, seq_length=TINY_SEQ,
                      metadata={"note": "test"})
    return model, export_dir


def run_config(demo, output: Path, **overrides):
    """A tiny demo-preset TrainConfig on the session's demo data, for run()."""
    from mmentail.config import resolve_config

    values = dict(output=str(output), data_csv=str(demo.csv_path), image_dir=str(demo.image_dir),
                  preprocess_handle=str(demo.preprocess_dir),
                  encoder_handle=str(demo.encoder_dir), image_size=TINY_IMAGE,
                  seq_length=TINY_SEQ, batch_size=16, epochs=2, projection_dim=16,
                  cache_dir=str(output.parent / "cache"))
    return resolve_config("demo", {**values, **overrides})
