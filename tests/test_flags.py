"""Flags generated from the configuration: every field, its help, presets and --config."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from mmentail.config.experiment import SECTIONS, ExperimentConfig
from mmentail.config.flags import add_config_flags, config_from_args
from mmentail.config.presets import resolve_config
from mmentail.errors import ConfigError


def _parse(*argv: str) -> ExperimentConfig:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return config_from_args(parser.parse_args(list(argv)))


def test_every_field_is_a_flag_with_its_documentation():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    flags = {action.dest: action for action in parser._actions}
    fields = [f for section in SECTIONS.values() for f in dataclasses.fields(section)]
    assert fields and all(f.name in flags for f in fields)
    for field in fields:
        assert flags[field.name].help.startswith(field.metadata["help"]), field.name
    # The three that had drifted out of the hand-written parser.
    config = _parse("--preset", "demo", "--projection-dim", "8", "--dropout", "0.3",
                    "--text-pooling", "pooled")
    assert (config.model.projection_dim, config.model.dropout,
            config.model.text_pooling) == (8, 0.3, "pooled")


def test_flags_override_the_preset_and_booleans_have_a_negative_form():
    config = _parse("--preset", "keras-io", "--epochs", "3", "--no-feature-cache",
                    "--clipnorm", "1.5")
    assert config.preset == "keras-io" and config.optim.epochs == 3
    assert not config.runtime.feature_cache and config.optim.clipnorm == 1.5
    assert config.optim.batch_size == 32 and config.model.image_size == 128
    assert config.model.encoder_handle.startswith("https://tfhub.dev/")
    assert _parse() == resolve_config("demo")


def test_config_flag_reruns_a_recorded_run(tmp_path):
    recorded = resolve_config("demo", {"epochs": 7, "output": "runs/a", "seed": 3})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(recorded.to_json()))
    assert _parse("--config", str(path)) == recorded
    rerun = _parse("--config", str(path), "--output", "runs/b")
    assert rerun == dataclasses.replace(recorded, output="runs/b")
    with pytest.raises(ConfigError, match="not both"):
        _parse("--config", str(path), "--preset", "demo")
