"""The nested configuration: sections, overrides, validation, JSON in both layouts."""

from __future__ import annotations

import dataclasses
import json

import pytest

import mmentail
from mmentail.config.experiment import (
    SECTIONS,
    ExperimentConfig,
    ModelConfig,
    field_sections,
    load_config,
    with_overrides,
)
from mmentail.errors import ConfigError

# config.json as runs recorded it before the configuration had sections.
FLAT_RECORD = {
    "preset": "demo", "output": "runs/demo", "data_csv": "/data/pairs.csv",
    "image_dir": "/data/images", "cache_dir": "~/.cache/mmentail",
    "preprocess_handle": "/m/preprocess", "encoder_handle": "/m/encoder",
    "image_weights": "none", "image_size": 32, "seq_length": 48, "batch_size": 32,
    "epochs": 30, "learning_rate": 0.001, "strategy": "mirrored", "seed": 42,
    "projection_dim": 128, "dropout": 0.1, "train_text_encoder": False,
    "train_image_encoder": False, "text_pooling": "mean", "modality": "both",
    "class_weights": False, "feature_cache": True, "monitor": "val_macro_f1",
    "demo_pairs": 1000, "demo_vague_posts": 0.0, "skip_bad_rows": False,
    "early_stopping": 0, "loss": "cross_entropy", "focal_gamma": 2.0,
    "focal_alpha": "balanced", "label_smoothing": 0.0, "optimizer": "adam",
    "weight_decay": 0.0001, "lr_schedule": "constant", "warmup_epochs": 0.0,
    "clipnorm": None, "encoder_learning_rate": 1e-05, "image_trainable_blocks": 0,
    "modality_dropout": 0.0, "fusion": "concat", "data_tfrecords": None,
    "pipeline_cache": "memory", "deterministic": True, "mixed_precision": False,
    "jit_compile": False, "steps_per_execution": 1}


def test_sections_hold_each_field_once_and_the_model_section_is_what_build_model_takes():
    owners = field_sections()
    assert set(SECTIONS) == {"data", "model", "optim", "runtime"}
    assert owners["image_size"] == "model" and owners["epochs"] == "optim"
    assert owners["strategy"] == "runtime" and owners["data_csv"] == "data"
    assert owners["seed"] is None
    assert ExperimentConfig().model == ModelConfig()


def test_overrides_by_field_or_section_and_unknown_keys_are_named():
    original = ExperimentConfig()
    config = with_overrides(original, {"epochs": 3, "model.image_size": 64, "seed": 7})
    assert (config.optim.epochs, config.model.image_size, config.seed) == (3, 64, 7)
    # The config given is left as it was, its sections included.
    assert original == ExperimentConfig() and original.optim.epochs == 10
    with pytest.raises(ConfigError, match="'epoch'"):
        with_overrides(config, {"epoch": 3})
    with pytest.raises(ConfigError, match="'data.epochs'"):
        with_overrides(config, {"data.epochs": 3})


@pytest.mark.parametrize("key, value, message", [
    ("monitor", "val_macro_f2", "monitor must be one of"),
    ("modality", "audio", "modality must be one of"),
    ("strategy", "cluster", "strategy must be one of"),
    ("image_size", 16, "image_size must be at least 32"),
    ("epochs", 0, "epochs must be at least 1"),
    ("focal_alpha", "1,2", "focal_alpha must be"),
    ("calibration", "platt", "calibration must be one of none, temperature, vector"),
    ("calibration_folds", 1, "calibration_folds must be 0 .* or at least 2"),
])
def test_bad_values_are_refused_when_the_config_is_built(key, value, message):
    with pytest.raises(ConfigError, match=message):
        with_overrides(ExperimentConfig(), {key: value})


def test_json_round_trip_and_the_flat_layout_of_older_runs(tmp_path):
    config = with_overrides(ExperimentConfig(), {"epochs": 4, "clipnorm": 1.0})
    assert ExperimentConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    old = tmp_path / "config.json"
    old.write_text(json.dumps(FLAT_RECORD))
    migrated = load_config(old)
    assert migrated.preset == "demo" and migrated.optim.epochs == 30
    assert migrated.model.encoder_handle == "/m/encoder"
    assert migrated.data.data_csv == "/data/pairs.csv" and migrated.model.image_size == 32
    flat = {**{f.name: getattr(migrated, f.name) for f in dataclasses.fields(migrated)
               if f.name not in SECTIONS},
            **{k: v for section in SECTIONS for k, v in migrated.to_json()[section].items()}}
    # Fields added since take their defaults.
    assert flat == {**FLAT_RECORD, "folds": 0, "fold": 0, "image_backbone": "resnet50v2",
                    "shuffle_buffer": 4096, "decision_rule": "argmax",
                    "val_size": 0.05, "data_service": None, "text_pairing": "packed",
                    "calibration": "vector", "calibration_folds": 5}


def test_a_record_with_a_setting_this_version_lacks_says_which(tmp_path):
    old = tmp_path / "config.json"
    old.write_text(json.dumps({**FLAT_RECORD, "warp_drive": True}))
    with pytest.raises(ConfigError, match=r"config.json: unknown setting 'warp_drive'"):
        load_config(old)
    old.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(old)


def test_a_record_names_the_version_that_wrote_it_and_any_version_reads_back(tmp_path):
    """config.json carries `mmentail_version` beside the settings; reading it back
    (as `--config` and resuming do) gives the config, whatever version wrote it."""
    config = with_overrides(ExperimentConfig(), {"epochs": 4, "clipnorm": 1.0})
    record = json.loads(json.dumps(config.to_record()))
    assert record == {**config.to_json(), "mmentail_version": mmentail.__version__}
    path = tmp_path / "config.json"
    for version in (mmentail.__version__, "0.0.1"):
        path.write_text(json.dumps({**record, "mmentail_version": version}))
        assert load_config(path) == config
    path.write_text(json.dumps({**FLAT_RECORD, "mmentail_version": "0.0.1"}))
    assert load_config(path).optim.epochs == 30
