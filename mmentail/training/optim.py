"""Optimiser and learning-rate schedule: Adam or AdamW, linear warmup, cosine decay, clipping.

Example:
    >>> optimizer = make_optimizer("adamw", 1e-3, total_steps=900, warmup_steps=90,
    ...                            schedule="cosine", weight_decay=1e-4, clipnorm=1.0)
"""

from __future__ import annotations

import tf_keras

from mmentail.config.experiment import OPTIMIZERS, SCHEDULES, OptimConfig


def make_schedule(learning_rate: float, *, total_steps: int, warmup_steps: int = 0,
                  schedule: str = "constant") -> float | tf_keras.optimizers.schedules.CosineDecay:
    """The learning rate, or a schedule: linear warmup to `learning_rate`, then cosine decay.

    Args:
        learning_rate: peak learning rate.
        total_steps: optimiser steps in the whole run (warmup included).
        warmup_steps: steps of linear warmup from 0.
        schedule: "constant" (after warmup) or "cosine" (decay to 0 at `total_steps`).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"lr schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "constant" and warmup_steps == 0:
        return learning_rate
    if schedule == "constant":
        # alpha=1: the decay keeps the full rate, so only the warmup remains.
        decay_steps, alpha = 1, 1.0
    else:
        decay_steps, alpha = max(total_steps - warmup_steps, 1), 0.0
    return tf_keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps else learning_rate, decay_steps, alpha=alpha,
        warmup_target=learning_rate if warmup_steps else None, warmup_steps=warmup_steps)


def make_optimizer(name: str, learning_rate: float, *, total_steps: int,
                   warmup_steps: int = 0, schedule: str = "constant",
                   weight_decay: float = 1e-4,
                   clipnorm: float | None = None) -> tf_keras.optimizers.Optimizer:
    """Adam or AdamW (decoupled weight decay) with :func:`make_schedule` and global-norm clipping.

    Args:
        name: "adam" or "adamw".
        learning_rate: peak learning rate.
        total_steps, warmup_steps, schedule: see :func:`make_schedule`.
        weight_decay: AdamW's decoupled weight decay (ignored by Adam).
        clipnorm: clip the gradients' global norm to this; None: no clipping.
    """
    rate = make_schedule(learning_rate, total_steps=total_steps, warmup_steps=warmup_steps,
                         schedule=schedule)
    if name == "adam":
        return tf_keras.optimizers.Adam(rate, global_clipnorm=clipnorm)
    if name == "adamw":
        return tf_keras.optimizers.AdamW(rate, weight_decay=weight_decay,
                                         global_clipnorm=clipnorm)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def optimizer_for(optim: OptimConfig, steps_per_epoch: int,
                  learning_rate: float) -> tf_keras.optimizers.Optimizer:
    """:func:`make_optimizer` as a run's optimisation settings describe it, at `learning_rate`
    (the head's, or the fine-tuned encoders' own)."""
    return make_optimizer(optim.optimizer, learning_rate,
                          total_steps=steps_per_epoch * optim.epochs,
                          warmup_steps=round(optim.warmup_epochs * steps_per_epoch),
                          schedule=optim.lr_schedule, weight_decay=optim.weight_decay,
                          clipnorm=optim.clipnorm)
