"""Sources resolve to absolute paths; named sources come from one registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmentail.config.experiment import ExperimentConfig, with_overrides
from mmentail.config.presets import resolve_config
from mmentail.errors import ConfigError
from mmentail.sources.resolve import MODULE_SOURCES, PAIR_SOURCES, resolve_sources


def test_relative_paths_become_absolute_and_images_default_beside_the_csv(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = resolve_config("keras-io", {"data_csv": "data/pairs.csv",
                                         "preprocess_handle": "mods/pre",
                                         "encoder_handle": "https://tfhub.dev/x/1"})
    resolved = resolve_sources(config)
    assert resolved.data.data_csv == str(tmp_path / "data" / "pairs.csv")
    assert resolved.data.image_dir == str(tmp_path / "data" / "images")
    assert resolved.model.preprocess_handle == str(tmp_path / "mods" / "pre")
    assert resolved.model.encoder_handle == "https://tfhub.dev/x/1"


def test_modalities_keep_only_what_they_read(tmp_path):
    text = resolve_sources(resolve_config("keras-io", {
        "data_csv": str(tmp_path / "p.csv"), "image_dir": str(tmp_path / "img"),
        "modality": "text", "encoder_handle": str(tmp_path / "enc"),
        "preprocess_handle": str(tmp_path / "pre")}))
    assert text.data.image_dir is None
    image = resolve_sources(resolve_config("keras-io", {
        "data_csv": str(tmp_path / "p.csv"), "modality": "image",
        "encoder_handle": "minilm", "preprocess_handle": "minilm"}))
    assert image.model.encoder_handle == "minilm"  # nothing converted for an image-only run


def test_tfrecords_replace_the_csv_and_the_registry_names_its_sources(tmp_path):
    shards = resolve_sources(resolve_config("keras-io", {
        "data_tfrecords": str(tmp_path / "shards"), "modality": "image"}))
    assert shards.data.data_csv is None and shards.data.image_dir is None
    assert shards.data.data_tfrecords == str(tmp_path / "shards")
    assert set(PAIR_SOURCES) == {"demo", "download"} and set(MODULE_SOURCES) == {"demo", "minilm"}
    with pytest.raises(ConfigError, match="no pairs"):
        resolve_sources(with_overrides(resolve_config("keras-io"),
                                       {"data_csv": None, "modality": "image"}))


def test_resolved_paths_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    config = resolve_config("keras-io", {"data_csv": "p.csv", "modality": "image"})
    monkeypatch.chdir(tmp_path)
    first = resolve_sources(config).data.data_csv
    assert Path(first).is_absolute() and Path(first).parent == tmp_path


def test_demo_settings_get_their_own_directory_in_a_shared_cache(tmp_path):
    """Two runs with different demo settings in one cache must not rebuild each other's
    files mid-run: each setting has its own directory, the default keeps `demo/`."""
    from mmentail.sources.resolve import demo_dir

    def config(**settings):
        return with_overrides(ExperimentConfig(), {"cache_dir": str(tmp_path), **settings})

    assert demo_dir(config()) == tmp_path / "demo"
    names = {demo_dir(config(**s)).name for s in (
        {}, {"demo_pairs": 120}, {"demo_vague_posts": 0.2},
        {"demo_pairs": 120, "demo_vague_posts": 0.2})}
    assert names == {"demo", "demo-120pairs", "demo-vague0.2", "demo-120pairs-vague0.2"}
