"""Resolving where a run's pairs and hub modules come from: one registry of named sources.

A configuration names its pairs CSV and its two text modules either by a
path or URL, used as it is, or by a source name from the registries below,
which prepare the files on first use (generate, download, convert) under
`cache_dir` and return their paths:

| setting | name | what it gives |
| --- | --- | --- |
| `data_csv` | `demo` | the generated demo pairs and images |
| `data_csv` | `download` | the real data set, downloaded once |
| `preprocess_handle`, `encoder_handle` | `demo` | modules built for the demo's vocabulary |
| `preprocess_handle`, `encoder_handle` | `minilm` | all-MiniLM-L6-v2, converted from its package |

:func:`resolve_sources` returns the configuration with every name replaced by
absolute paths: what `config.json` records, so a run can be rerun and
re-evaluated from any directory.

Example:
    resolved = resolve_sources(preset_config("demo"))   # generates the demo once
    Path(resolved.data.data_csv).name, Path(resolved.model.encoder_handle).name
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from mmentail.config.experiment import ExperimentConfig, with_overrides
from mmentail.errors import ConfigError

log = logging.getLogger("mmentail")


def demo_dir(config: ExperimentConfig) -> Path:
    """Where the demo data of `config`'s settings lives in its cache: `demo/` for the
    default settings, `demo-<pairs>pairs[-vague<share>]/` for others, so that runs with
    different demo settings sharing a cache never rebuild each other's files."""
    name = "demo"
    if config.data.demo_pairs != ExperimentConfig().data.demo_pairs:
        name += f"-{config.data.demo_pairs}pairs"
    if config.data.demo_vague_posts:
        name += f"-vague{config.data.demo_vague_posts:g}"
    return Path(config.data.cache_dir).expanduser() / name


def _demo_assets(config: ExperimentConfig):
    from mmentail.sources.demo import prepare_demo

    return prepare_demo(demo_dir(config), num_pairs=config.data.demo_pairs,
                        vague_fraction=config.data.demo_vague_posts)


def _demo_pairs(config: ExperimentConfig) -> tuple[Path, Path]:
    assets = _demo_assets(config)
    return assets.csv_path, assets.image_dir


def _downloaded_pairs(config: ExperimentConfig) -> tuple[Path, Path]:
    from mmentail.sources.download import download_dataset

    log.info("downloading the real data set into %s", config.data.cache_dir)
    return download_dataset(config.data.cache_dir)


def _demo_modules(config: ExperimentConfig) -> tuple[Path, Path]:
    assets = _demo_assets(config)
    return assets.preprocess_dir, assets.encoder_dir


def _minilm_modules(config: ExperimentConfig) -> tuple[Path, Path]:
    from mmentail.sources.minilm import minilm_modules

    modules = minilm_modules(config.data.cache_dir)
    return modules.preprocess_dir, modules.encoder_dir


# name -> (csv path, image dir)
PAIR_SOURCES: dict[str, Callable[[ExperimentConfig], tuple[Path, Path]]] = {
    "demo": _demo_pairs, "download": _downloaded_pairs}
# name -> (preprocessing module, encoder module)
MODULE_SOURCES: dict[str, Callable[[ExperimentConfig], tuple[Path, Path]]] = {
    "demo": _demo_modules, "minilm": _minilm_modules}


def _local(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _handle(value: str) -> str:
    """A URL as it is; a local path made absolute."""
    return value if "://" in value and not value.startswith("file://") else _local(
        value.removeprefix("file://"))


def resolve_sources(config: ExperimentConfig) -> ExperimentConfig:
    """`config` with named sources prepared and every path absolute.

    Stage 1 of a run. A text-only run keeps no image folder; an image-only run
    prepares no text module (its handles are recorded as given).
    """
    data, model = config.data, config.model
    csv_path, image_dir = data.data_csv, data.image_dir
    if data.data_tfrecords:
        csv_path, image_dir = None, None  # the shards hold rows and images
    elif csv_path in PAIR_SOURCES:
        csv_path, source_images = PAIR_SOURCES[csv_path](config)
        image_dir = image_dir or source_images
    elif csv_path is None:
        raise ConfigError("no pairs: give --data-csv (a path, demo or download) or "
                          "--data-tfrecords")
    if image_dir is None and csv_path is not None:
        image_dir = Path(csv_path).parent / "images"
    handles = {"preprocess_handle": model.preprocess_handle,
               "encoder_handle": model.encoder_handle}
    if model.modality != "image":
        for name, value in handles.items():
            if value in MODULE_SOURCES:
                preprocess, encoder = MODULE_SOURCES[value](config)
                value = str(preprocess if name == "preprocess_handle" else encoder)
            handles[name] = _handle(value)
    return with_overrides(config, {
        "data_csv": _local(csv_path), "data_tfrecords": _local(data.data_tfrecords),
        "image_dir": _local(image_dir) if model.modality != "text" else None,
        **handles})
