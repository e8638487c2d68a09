"""Probability calibration: how sure the model is, made to match how often it is right.

A softmax as trained overstates confidence (a model that says 0.94 is right
85% of the time), and focal loss or class weights distort it further by
design. After training, a calibration map is fitted on pairs the model did
not train on, by minimising their negative log-likelihood (NLL), and applied
to the model's logits:

- `temperature`: `softmax(logits / T)`, one scalar (Guo et al., 2017);
- `vector`: `softmax(logits * w + b)`, a scale and a bias per label.

The logits are the model's log-probabilities (`log p`, floored at float32's
smallest normal number): softmax of them gives the model's probabilities back,
and a temperature on them is a temperature on the pre-softmax values.

One definition of the figures, used by runs, cross-validation and the docs:

- **ECE** (expected calibration error, top label): the pairs are put into 15
  equal-width bins of their top probability; ECE is the pair-weighted mean
  over bins of `|mean top probability - accuracy|`, i.e.
  `sum_b |sum_{i in b} (conf_i - correct_i)| / n`.
- **Classwise ECE**: the same for every label's probability against whether
  the pair has that label (all pairs, 15 bins of `p_label`), averaged over
  labels: the minority labels count as much as the majority.
- **Label ECE**: the same as the top-label ECE with the label the pair was
  given (by the decision rule, on the model's logits) in place of the top
  label: how far the given label's probability is from how often it is right.
  It is the top-label ECE when the labels are the argmax of the probabilities.
- **NLL**: mean `-log p(true label)`; **Brier**: mean squared distance of the
  probability vector to the one-hot label, summed over labels.

ECE intervals are percentile-bootstrap intervals over the same resampled pairs
as the F1 intervals (:mod:`mmentail.evaluation.bootstrap`).

Example:
    >>> rng = np.random.default_rng(0)
    >>> labels = rng.integers(0, 3, 2000)
    >>> logits = 3.0 * (np.eye(3)[labels] + rng.normal(0, 1, (2000, 3)))
    >>> fitted = fit_calibration("temperature", logits, labels)
    >>> fitted.temperature > 1, nll(fitted.apply(logits), labels) < nll(softmax(logits), labels)
    (True, True)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from mmentail.config.experiment import CALIBRATIONS
from mmentail.evaluation.bootstrap import (
    CONFIDENCE,
    RESAMPLES,
    bootstrap_index_blocks,
    percentile_interval,
)
from mmentail.schema import LABELS

BINS = 15
# Weight of the prior pulling a map towards the identity (scale 1, bias 0), in pairs'
# worth of NLL: negligible on a thousand fitting pairs, it keeps a map fitted on a
# handful of pairs from running to extremes.
PRIOR_PAIRS = 1.0
# Floor of probabilities before the log: float32's smallest normal number.
LOGIT_FLOOR = float(np.finfo(np.float32).tiny)
RELIABILITY_PLOT = "reliability.png"


def log_probabilities(probabilities: np.ndarray | tf.Tensor) -> tf.Tensor:
    """The logits calibration works on: `log(max(p, LOGIT_FLOOR))`, float32."""
    return tf.math.log(tf.maximum(tf.cast(probabilities, tf.float32), LOGIT_FLOOR))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (numpy)."""
    from scipy.special import softmax as scipy_softmax  # scipy loads on first use

    return scipy_softmax(np.asarray(logits, np.float64), axis=-1)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A fitted calibration map, `softmax(logits * scale + bias)`.

    Attributes:
        method: one of :data:`CALIBRATIONS` ("none" is the identity).
        scale: one float per label (all equal, `1 / T`, for `temperature`).
        bias: one float per label (zeros for `temperature`), centred on 0.
        fitted_on: pairs the map was fitted on (0 for "none").
        data: which pairs those were, in words.
    """

    method: str = "none"
    scale: tuple[float, ...] = (1.0,) * len(LABELS)
    bias: tuple[float, ...] = (0.0,) * len(LABELS)
    fitted_on: int = 0
    data: str = ""

    @property
    def temperature(self) -> float:
        """`1 / scale` of a temperature map (1.0 for none)."""
        return 1.0 / self.scale[0]

    def apply_logits(self, logits: np.ndarray | tf.Tensor) -> tf.Tensor:
        """Calibrated probabilities of logits, float32: the one computation the Keras
        layer, the export and the figures share."""
        scale = tf.constant(self.scale, tf.float32)
        bias = tf.constant(self.bias, tf.float32)
        return tf.nn.softmax(tf.cast(logits, tf.float32) * scale + bias, axis=-1)

    def apply(self, logits: np.ndarray | tf.Tensor) -> np.ndarray:
        """:meth:`apply_logits` as a numpy array."""
        return np.asarray(self.apply_logits(logits))

    def to_json(self) -> dict[str, Any]:
        values = {"method": self.method, "scale": list(self.scale), "bias": list(self.bias),
                  "fitted_on": self.fitted_on, "data": self.data}
        if self.method == "temperature":
            values["temperature"] = self.temperature
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any] | None) -> Calibration:
        """The map a `metrics.json` or an export's metadata records (identity if none)."""
        if not values:
            return cls()
        return cls(values["method"], tuple(float(v) for v in values["scale"]),
                   tuple(float(v) for v in values["bias"]), int(values.get("fitted_on", 0)),
                   str(values.get("data", "")))


def _nll_and_gradient(params: np.ndarray, logits: np.ndarray, onehot: np.ndarray,
                      method: str) -> tuple[float, np.ndarray]:
    from scipy.special import log_softmax

    classes = logits.shape[1]
    scale = np.full(classes, params[0]) if method == "temperature" else params[:classes]
    bias = np.zeros(classes) if method == "temperature" else params[classes:]
    log_p = log_softmax(logits * scale + bias, axis=1)
    residual = (np.exp(log_p) - onehot) / len(logits)  # d NLL / d scores
    identity = np.r_[np.ones(len(params) if method == "temperature" else classes),
                     np.zeros(0 if method == "temperature" else classes)]
    weight = PRIOR_PAIRS / len(logits)
    loss = -float((onehot * log_p).sum()) / len(logits) + weight * float(
        ((params - identity) ** 2).sum())
    prior = 2 * weight * (params - identity)
    if method == "temperature":
        return loss, np.array([(residual * logits).sum()]) + prior
    return loss, np.concatenate([(residual * logits).sum(axis=0), residual.sum(axis=0)]) + prior


def fit_calibration(method: str, logits: np.ndarray, labels: Sequence[int] | np.ndarray,
                    data: str = "") -> Calibration:
    """The `method` map minimising the NLL of `labels` given `logits` (L-BFGS), with a
    weak prior towards the identity map (:data:`PRIOR_PAIRS` pairs' worth).

    Args:
        method: one of :data:`CALIBRATIONS`.
        logits: [pairs, classes] logits of pairs the model did not train on
            (:func:`log_probabilities` of its probabilities).
        labels: their true label indices.
        data: which pairs they are, in words (recorded with the map).

    Raises:
        ValueError: an unknown method, or no pairs to fit on.
    """
    from scipy.optimize import minimize

    if method not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {method!r}; choose one of {CALIBRATIONS}")
    if method == "none":
        return Calibration()
    logits = np.asarray(logits, np.float64)
    if not len(logits):
        raise ValueError("calibration: no pairs to fit on")
    classes = logits.shape[1]
    onehot = np.eye(classes)[np.asarray(labels, int)]
    start = np.ones(1) if method == "temperature" else np.r_[np.ones(classes),
                                                             np.zeros(classes)]
    bounds = [(1e-3, 1e3)] * (1 if method == "temperature" else classes) + \
        [(None, None)] * (0 if method == "temperature" else classes)
    result = minimize(_nll_and_gradient, start, args=(logits, onehot, method), jac=True,
                      method="L-BFGS-B", bounds=bounds)
    if method == "temperature":
        return Calibration(method, (float(result.x[0]),) * classes, (0.0,) * classes,
                           len(logits), data)
    bias = result.x[classes:] - result.x[classes:].mean()  # softmax ignores a shared shift
    return Calibration(method, tuple(float(v) for v in result.x[:classes]),
                       tuple(float(v) for v in bias), len(logits), data)


def nll(probabilities: np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (probabilities floored as logits are)."""
    picked = np.asarray(probabilities, np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.maximum(picked, LOGIT_FLOOR)).mean())


def brier(probabilities: np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Mean over pairs of the squared distance to the one-hot label, summed over labels."""
    probabilities = np.asarray(probabilities, np.float64)
    onehot = np.eye(probabilities.shape[1])[np.asarray(labels, int)]
    return float(((probabilities - onehot) ** 2).sum(axis=1).mean())


def _bin_of(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Equal-width bin index in [0, bins) of values in [0, 1] (1.0 in the last bin)."""
    return np.minimum((np.asarray(values) * bins).astype(int), bins - 1)


def _binned_gaps(values: np.ndarray, targets: np.ndarray, indices: np.ndarray,
                 bins: int = BINS) -> np.ndarray:
    """`sum_b |sum_{i in b} (value_i - target_i)| / n` of each resample (rows of `indices`)."""
    which = _bin_of(values, bins)[indices]
    gaps = (np.asarray(values, np.float64) - targets)[indices]
    offset = np.arange(len(indices))[:, None] * bins
    sums = np.bincount((offset + which).ravel(), weights=gaps.ravel(),
                       minlength=len(indices) * bins).reshape(len(indices), bins)
    return np.abs(sums).sum(axis=1) / indices.shape[1]


def _ece_parts(probabilities: np.ndarray, labels: np.ndarray,
               predicted: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(values, targets) of the top-label ECE, then of each label's classwise ECE, then
    (with `predicted`) of the label ECE."""
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, int)
    top = probabilities.argmax(axis=1)
    parts = [(probabilities.max(axis=1), (top == labels).astype(float))]
    parts += [(probabilities[:, c], (labels == c).astype(float))
              for c in range(probabilities.shape[1])]
    if predicted is not None:
        predicted = np.asarray(predicted, int)
        parts.append((probabilities[np.arange(len(labels)), predicted],
                      (predicted == labels).astype(float)))
    return parts


def ece(probabilities: np.ndarray, labels: Sequence[int] | np.ndarray,
        bins: int = BINS) -> float:
    """Top-label expected calibration error over `bins` equal-width bins.

    Example:
        >>> ece(np.array([[0.9, 0.1], [0.9, 0.1]]), [0, 1])  # says 0.9, right half the time
        0.4
    """
    values, targets = _ece_parts(probabilities, np.asarray(labels))[0]
    return round(float(_binned_gaps(values, targets, np.arange(len(values))[None], bins)[0]),
                 12)


def classwise_ece(probabilities: np.ndarray, labels: Sequence[int] | np.ndarray,
                  bins: int = BINS) -> float:
    """Each label's ECE (its probability against having that label), averaged over labels."""
    parts = _ece_parts(probabilities, np.asarray(labels))[1:]
    everyone = np.arange(len(labels))[None]
    return float(np.mean([_binned_gaps(v, t, everyone, bins)[0] for v, t in parts]))


def calibration_figures(probabilities: np.ndarray, labels: Sequence[int] | np.ndarray, *,
                        predicted: Sequence[int] | np.ndarray | None = None, seed: int = 0,
                        resamples: int = RESAMPLES,
                        confidence: float = CONFIDENCE) -> dict[str, Any]:
    """ECE and classwise ECE with bootstrap intervals, NLL, Brier, mean top-label
    confidence and accuracy of probabilities (JSON-ready); with `predicted`, the labels
    given, also the label ECE: the given label's probability against whether it is right
    (the top-label ECE when they are the argmax).

    The intervals resample the pairs as :func:`mmentail.evaluation.bootstrap.f1_intervals`
    does (same seed, same draws).
    """
    labels = np.asarray(labels, int)
    parts = _ece_parts(probabilities, labels, predicted)
    resampled = [np.concatenate([_binned_gaps(v, t, block) for block in
                                 bootstrap_index_blocks(len(labels), resamples, seed)])
                 for v, t in parts]
    classes = np.shape(probabilities)[1]
    everyone = np.arange(len(labels))[None]
    figures = {"ece": ece(probabilities, labels),
               "ece_interval": percentile_interval(resampled[0], confidence),
               "classwise_ece": classwise_ece(probabilities, labels),
               "classwise_ece_interval": percentile_interval(
                   np.mean(resampled[1:1 + classes], axis=0), confidence),
               "nll": nll(probabilities, labels), "brier": brier(probabilities, labels),
               "confidence": float(parts[0][0].mean()), "accuracy": float(parts[0][1].mean())}
    if predicted is not None:
        figures["label_ece"] = float(_binned_gaps(*parts[-1], everyone)[0])
        figures["label_ece_interval"] = percentile_interval(resampled[-1], confidence)
    return figures


def reliability_bins(probabilities: np.ndarray, labels: Sequence[int] | np.ndarray,
                     bins: int = BINS) -> dict[str, list]:
    """Per top-label bin: its pairs (`count`), mean confidence and accuracy (None if empty)."""
    values, targets = _ece_parts(probabilities, np.asarray(labels))[0]
    which = _bin_of(values, bins)
    count = np.bincount(which, minlength=bins)

    def means(x: np.ndarray) -> list[float | None]:
        return [float(x[which == b].mean()) if count[b] else None for b in range(bins)]

    return {"count": count.tolist(), "confidence": means(values), "accuracy": means(targets)}


def calibration_report(calibration: Calibration, logits: np.ndarray,
                       labels: Sequence[int] | np.ndarray, *,
                       predicted: Sequence[int] | np.ndarray | None = None,
                       seed: int = 0) -> dict[str, Any]:
    """What `metrics.json`'s `calibration` holds: the map and the figures of the pairs'
    probabilities before it (softmax of `logits`) and after it, with the reliability bins
    (and the label ECE of the labels `predicted`)."""
    before, after = softmax(logits), calibration.apply(logits)
    return {**calibration.to_json(),
            "before": {**calibration_figures(before, labels, predicted=predicted, seed=seed),
                       "bins": reliability_bins(before, labels)},
            "after": {**calibration_figures(after, labels, predicted=predicted, seed=seed),
                      "bins": reliability_bins(after, labels)}}


def reliability_figure(report: dict[str, Any]):
    """Reliability diagrams of a :func:`calibration_report`, before and after, with each
    bin's pairs."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.2), layout="tight")
    centres = (np.arange(BINS) + 0.5) / BINS
    for ax, when in zip(figure.subplots(1, 2, sharey=True), ("before", "after")):
        bins, figures = report[when]["bins"], report[when]
        accuracy = [np.nan if a is None else a for a in bins["accuracy"]]
        ax.bar(centres, accuracy, width=1 / BINS, edgecolor="black", alpha=0.7,
               label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        for x, a, n in zip(centres, accuracy, bins["count"]):
            if n:
                ax.text(x, min(np.nan_to_num(a) + 0.02, 0.97), str(n), ha="center",
                        fontsize=7)
        title = report["method"] if when == "after" else "uncalibrated"
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="top-label confidence",
               title=f"{when} ({title}): ECE {figures['ece']:.3f}, NLL {figures['nll']:.3f}")
        ax.legend(loc="upper left", fontsize=8)
    figure.axes[0].set_ylabel("accuracy (pairs per bin above the bars)")
    return figure


class CalibrationLayer(tf_keras.layers.Layer):
    """Probabilities in, calibrated probabilities out (:meth:`Calibration.apply_logits`
    of their :func:`log_probabilities`)."""

    def __init__(self, calibration: dict[str, Any] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.calibration = Calibration.from_json(calibration)

    def call(self, probabilities):
        return self.calibration.apply_logits(log_probabilities(probabilities))

    def get_config(self):
        return {**super().get_config(), "calibration": self.calibration.to_json()}


def calibrated_model(model: tf_keras.Model, calibration: Calibration) -> tf_keras.Model:
    """`model` (inputs to probabilities) followed by `calibration`: the Keras model of a
    run's calibrated probabilities, as its export computes them.

    Example:
        calibrated_model(result.model, result.calibration).predict(features)
    """
    return tf_keras.Model(model.inputs,
                          CalibrationLayer(calibration.to_json(), name="calibration")(
                              model.outputs[0]), name=f"{model.name}_calibrated")
