"""Small builders the tests share: images, CSVs, tiny run configurations and flags."""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from mmentail.schema import COLUMNS

TINY_IMAGE = 32
TINY_SEQ = 24


def save_image(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    """Bytes of `image` saved as `fmt` with Pillow's save `options`."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def encode_image(colour, size=(40, 30), fmt="PNG", mode="RGB") -> bytes:
    """Bytes of a solid-colour image in `fmt`."""
    return save_image(Image.new(mode, size, colour), fmt)


def random_image_bytes(seed: int, size=(48, 36), fmt="JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def png_pixels(data: bytes) -> np.ndarray:
    """The RGBA pixels [height, width, 4] of PNG `data`, decoded by Pillow."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def drawn_pixels(figure, dpi: int = 100) -> np.ndarray:
    """The RGBA pixels of a matplotlib `figure` drawn by the Agg renderer at `dpi`: what a
    PNG of the figure at that resolution decodes to."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def write_csv(path: Path, rows: list[dict], header=None) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header or list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def load_tool(name: str) -> ModuleType:
    """The script `tools/<name>.py` as a module (tools are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_settings(demo, output: Path) -> dict:
    """The settings of a tiny demo-preset run on the session's demo data."""
    return dict(output=str(output), data_csv=str(demo.csv_path),
                image_dir=str(demo.image_dir), preprocess_handle=str(demo.preprocess_dir),
                encoder_handle=str(demo.encoder_dir), image_backbone="resnet_tiny",
                image_size=TINY_IMAGE,
                seq_length=TINY_SEQ, batch_size=16, epochs=2, projection_dim=16,
                # Calibration on the validation split alone: no cross-fitted heads to train
                # (the session's `trained_run` cross-fits).
                calibration_folds=0, cache_dir=str(output.parent / "cache"))


def run_config(demo, output: Path, **overrides):
    """A tiny demo-preset configuration on the session's demo data, for `train.run`."""
    from mmentail.config.presets import resolve_config

    return resolve_config("demo", {**tiny_settings(demo, output), **overrides})


def train_args(demo, output: Path, *extra: str, epochs: int = 2) -> list[str]:
    """`mmentail-train` flags for the same tiny run."""
    settings = {**tiny_settings(demo, output), "epochs": epochs}
    args = ["--preset", "demo"]
    for name, value in settings.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return [*args, *extra]
