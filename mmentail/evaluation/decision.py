"""The decision rule: which label a pair gets from its class probabilities.

`argmax` names the most probable label. With 84% of the real pairs
NoEntailment, a model's probabilities carry that prior, and argmax seldom
names a minority label even where the model rates it far above its prior.
`logit_adjusted` is post-hoc logit adjustment (Menon et al., 2021): the label
maximising `log p(y|x) - tau * log prior(y)`, the prior being the training
labels' frequencies. `tau` = 0 is argmax, 1 the rule that is best for
balanced classes; it is fitted on the validation split for macro-F1. One
number, so a validation split of a few dozen pairs can fit it, where
separate thresholds per class would fit its noise.

A rule is a vector of per-class offsets added to the model's own
log-probabilities (its logits, before calibration). The run applies it to its
test figures and `predictions.csv`, and the export's `label` output applies
the same offsets to its `logits` output, so training-side and served labels
agree. Calibration (:mod:`mmentail.evaluation.calibration`) changes how sure
the answer is, never which label it is: a map fitted for NLL also moves
labels towards the majority, which undoes what a rule (or focal loss, or
class weights) was chosen for.

Example:
    >>> rule = fit_decision_rule("logit_adjusted", [0, 1, 2, 2],
    ...     np.array([[.3, .1, .6], [.1, .3, .6], [.1, .1, .8], [.05, .05, .9]]),
    ...     train_labels=[0, 1, 2, 2, 2, 2, 2, 2])
    >>> rule.tau, predict_labels(np.array([[.3, .1, .6]]), rule.offsets).tolist()
    (0.6, [0])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from mmentail.config.experiment import DECISION_RULES
from mmentail.evaluation.calibration import LOGIT_FLOOR
from mmentail.schema import LABELS

# Candidate tau values; of the ones tied on validation macro-F1 the smallest wins
# (the rule nearest argmax that does as well).
TAUS = tuple(round(0.1 * i, 1) for i in range(21))


@dataclasses.dataclass(frozen=True)
class DecisionRule:
    """Per-class offsets added to log-probabilities before the argmax.

    Attributes:
        name: one of :data:`DECISION_RULES`.
        offsets: one float per label, in :data:`LABELS` order.
        tau: the logit-adjustment strength (0 for argmax).
        validation_macro_f1: macro-F1 on the validation split with argmax and with
            this rule (empty for argmax, which fits nothing).
    """

    name: str = "argmax"
    offsets: tuple[float, ...] = (0.0,) * len(LABELS)
    tau: float = 0.0
    validation_macro_f1: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "offsets": list(self.offsets)}

    @classmethod
    def from_json(cls, values: dict[str, Any] | None) -> DecisionRule:
        """The rule a `metrics.json` or an export's metadata records (argmax if none)."""
        if not values:
            return cls()
        return cls(values["name"], tuple(float(v) for v in values["offsets"]),
                   float(values.get("tau", 0.0)), dict(values.get("validation_macro_f1", {})))


def predict_labels(probabilities: np.ndarray, offsets: Sequence[float] | None = None
                   ) -> np.ndarray:
    """Label indices of `argmax(log p + offsets)` (plain argmax without offsets), `p`
    being the model's uncalibrated probabilities; float32, floored as the export's
    `logits` are."""
    probabilities = np.asarray(probabilities, np.float32)
    if offsets is None:
        return probabilities.argmax(axis=-1)
    scores = np.log(np.maximum(probabilities, np.float32(LOGIT_FLOOR)))
    return (scores + np.asarray(offsets, np.float32)).argmax(axis=-1)


def logit_adjustment_offsets(train_labels: Sequence[int] | np.ndarray,
                             tau: float) -> tuple[float, ...]:
    """`-tau * log prior`, the prior being the training labels' frequencies (+1 smoothed,
    so a label missing from training gets a finite offset)."""
    counts = np.bincount(np.asarray(train_labels, int), minlength=len(LABELS)) + 1.0
    return tuple(float(v) for v in -tau * np.log(counts / counts.sum()))


def fit_decision_rule(name: str, labels: Sequence[int] | np.ndarray, probabilities: np.ndarray,
                      train_labels: Sequence[int] | np.ndarray) -> DecisionRule:
    """The rule `name` fitted for macro-F1 on held-out pairs (the validation split).

    Args:
        name: one of :data:`DECISION_RULES`.
        labels: the held-out pairs' true label indices.
        probabilities: the model's uncalibrated probabilities for them, [pairs, classes].
        train_labels: training label indices (the prior).
    """
    from sklearn.metrics import f1_score

    if name == "argmax":
        return DecisionRule()
    if name not in DECISION_RULES:
        raise ValueError(f"unknown decision rule {name!r}; choose one of {DECISION_RULES}")

    def macro_f1(offsets: Sequence[float] | None) -> float:
        return float(f1_score(labels, predict_labels(probabilities, offsets),
                              labels=list(range(len(LABELS))), average="macro",
                              zero_division=0))

    scores = [macro_f1(logit_adjustment_offsets(train_labels, tau)) for tau in TAUS]
    tau = TAUS[int(np.argmax(scores))]
    return DecisionRule(name, logit_adjustment_offsets(train_labels, tau), tau,
                        {"argmax": macro_f1(None), name: max(scores)})
