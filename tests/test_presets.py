"""Presets are data: each resolves, and what they say is all that counts."""

from __future__ import annotations

import copy

import pytest

from mmentail.config.presets import PRESETS, preset_config, resolve_config
from mmentail.errors import ConfigError
from mmentail.sources.resolve import resolve_sources


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_and_documents_its_command(name):
    config = preset_config(name)
    assert config.preset == name and PRESETS[name]["command"].startswith("mmentail-train")
    assert PRESETS[name]["doc"]


def test_presets_name_their_sources_explicitly():
    demo = preset_config("demo")
    assert (demo.data.data_csv, demo.model.preprocess_handle, demo.model.encoder_handle) == (
        "demo", "demo", "demo")
    minilm = preset_config("minilm-offline")
    assert minilm.model.encoder_handle == "minilm" and minilm.model.text_pooling == "mean"
    assert preset_config("keras-io").data.data_csv == "download"
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        resolve_config("nope")


def test_a_renamed_copy_of_a_preset_gets_the_same_data_and_modules(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "my-demo", copy.deepcopy(PRESETS["demo"]))
    settings = {"cache_dir": str(tmp_path), "demo_pairs": 60}
    original = resolve_sources(resolve_config("demo", settings))
    renamed = resolve_sources(resolve_config("my-demo", settings))
    assert renamed.preset == "my-demo"
    assert renamed.data == original.data and renamed.model == original.model
    assert renamed.data.data_csv.endswith("pairs.csv")
    assert renamed.model.encoder_handle.startswith(str(tmp_path))
