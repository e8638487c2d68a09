"""Training losses for imbalanced labels: class-weighted and focal cross-entropy.

With 84% NoEntailment, plain cross-entropy is minimised well by a model that
rarely predicts the minority classes. Two remedies: weight each example's loss
by the inverse training frequency of its label (`class_weights`, passed to
`fit`), or focal loss, which down-weights examples the model already gets
right (`gamma`) and can weight classes (`alpha`).

Example:
    >>> labels = [0, 1, 2, 2, 2, 2, 2, 2]
    >>> {label: round(weight, 2) for label, weight in class_weights(labels).items()}
    {0: 2.67, 1: 2.67, 2: 0.44}
    >>> loss = make_loss("focal", gamma=2.0, alpha=focal_alpha("balanced", labels))
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tf_keras

from mmentail.config.experiment import LOSSES
from mmentail.config.fields import class_alphas
from mmentail.schema import LABELS


def class_weights(train_labels: Sequence[int] | np.ndarray) -> dict[int, float]:
    """Inverse label frequency, scaled so the weighted examples count as many as before.

    A label absent from training gets the weight of a label seen once.
    """
    counts = np.bincount(np.asarray(train_labels), minlength=len(LABELS))
    return {i: len(train_labels) / (len(LABELS) * max(int(c), 1)) for i, c in enumerate(counts)}


def focal_alpha(spec: str, train_labels: Sequence[int] | np.ndarray) -> list[float] | float:
    """Focal loss's per-class alpha from a config value.

    Args:
        spec: "none" (1 for every class), "balanced" (the :func:`class_weights`
            values, normalised to sum to 1) or comma-separated floats, one per
            label in :data:`LABELS` order.
        train_labels: training label indices, for "balanced".
    """
    if spec == "none":
        return 1.0
    if spec == "balanced":
        weights = np.array(list(class_weights(train_labels).values()))
        return (weights / weights.sum()).tolist()
    return class_alphas(spec)


def make_loss(kind: str, *, label_smoothing: float = 0.0, gamma: float = 2.0,
              alpha: list[float] | float = 1.0) -> tf_keras.losses.Loss:
    """The loss over one-hot labels and softmax probabilities.

    Args:
        kind: "cross_entropy" or "focal".
        label_smoothing: mixes the one-hot targets with the uniform distribution.
        gamma: focal loss's focusing exponent (0 is cross-entropy).
        alpha: focal loss's class weight, one float or one per label.
    """
    if kind == "cross_entropy":
        return tf_keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    if kind == "focal":
        return tf_keras.losses.CategoricalFocalCrossentropy(
            alpha=alpha, gamma=gamma, label_smoothing=label_smoothing)
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
