"""The decision rule: logit adjustment fitted for macro-F1, applied alike by run and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import TINY_IMAGE, TINY_SEQ
from mmentail.evaluation.decision import (
    TAUS,
    DecisionRule,
    fit_decision_rule,
    logit_adjustment_offsets,
    predict_labels,
)


def skewed_validation(seed: int = 0):
    """Probabilities that follow an 80% NoEntailment prior: the minority pairs' own label
    is raised, yet NoEntailment stays the most probable for most of them."""
    rng = np.random.default_rng(seed)
    labels = np.array([0] * 10 + [1] * 10 + [2] * 80)
    probabilities = np.tile([0.1, 0.1, 0.8], (100, 1)) + rng.uniform(0, 0.05, (100, 3))
    probabilities[labels == 0, 0] += 0.25
    probabilities[labels == 1, 1] += 0.25
    return labels, probabilities / probabilities.sum(1, keepdims=True)


def test_argmax_offsets_change_no_label():
    labels, probabilities = skewed_validation()
    rule = fit_decision_rule("argmax", labels, probabilities, labels)
    assert rule == DecisionRule() and rule.tau == 0
    np.testing.assert_array_equal(predict_labels(probabilities, rule.offsets),
                                  probabilities.argmax(-1))


def test_logit_adjustment_recovers_the_minority_labels_argmax_misses():
    labels, probabilities = skewed_validation()
    assert (probabilities.argmax(-1) == 2).all()  # argmax: the majority label for all
    rule = fit_decision_rule("logit_adjusted", labels, probabilities, labels)
    assert rule.tau > 0
    assert rule.validation_macro_f1["logit_adjusted"] > 0.9
    assert rule.validation_macro_f1["argmax"] < 0.35
    np.testing.assert_array_equal(predict_labels(probabilities, rule.offsets), labels)


def test_the_smallest_tau_wins_a_tie():
    labels, probabilities = skewed_validation()
    confident = np.eye(3)[labels] * 0.9 + 0.05  # argmax is already right: nothing to fit
    rule = fit_decision_rule("logit_adjusted", labels, confident, labels)
    assert rule.tau == TAUS[0] == 0


def test_offsets_are_minus_tau_log_prior_and_finite_for_an_absent_label():
    offsets = logit_adjustment_offsets([2, 2, 2, 1], tau=1.0)
    np.testing.assert_allclose(offsets, -np.log(np.array([1, 2, 4]) / 7))
    assert offsets[0] > offsets[1] > offsets[2] and np.isfinite(offsets).all()
    assert logit_adjustment_offsets([2, 1], tau=0.0) == (0.0, 0.0, 0.0)


def test_the_rule_round_trips_through_json():
    labels, probabilities = skewed_validation()
    rule = fit_decision_rule("logit_adjusted", labels, probabilities, labels)
    assert DecisionRule.from_json(json.loads(json.dumps(rule.to_json()))) == rule
    assert DecisionRule.from_json(None) == DecisionRule()


def test_the_export_calibrates_as_the_keras_model_then_applies_the_rule(
        exported, demo_pairs, preprocessor, tmp_path):
    """The loaded export's `probabilities` are the calibrated Keras model's, its `logits`
    the model's own, and its `label` the decision rule on the logits: calibration moves
    probabilities, never labels."""
    from mmentail.evaluation.calibration import (
        Calibration,
        calibrated_model,
        log_probabilities,
    )
    from mmentail.evaluation.rerun import pairs_dataset
    from mmentail.pipeline.dataset import make_dataset
    from mmentail.serving.export import export_savedmodel
    from mmentail.serving.loaded import load_export
    from mmentail.serving.rest import predict_response

    model, _ = exported
    pairs = demo_pairs.iloc[:32]
    inputs = make_dataset(pairs, preprocessor, image_size=(TINY_IMAGE, TINY_IMAGE),
                          seq_length=TINY_SEQ, batch_size=8, training=False)
    calibration = Calibration("vector", (0.5, 3.0, 0.8), (0.4, -0.3, -0.1))
    raw = model.predict(inputs, verbose=0)
    keras_probabilities = calibrated_model(model, calibration).predict(inputs, verbose=0)
    assert np.abs(keras_probabilities - raw).max() > 1e-3  # the map is seen
    # Offsets that move some pairs off their most probable label: the rule is seen.
    scores = np.log(raw)
    offsets = tuple(float(v) for v in scores.mean(0).max() - scores.mean(0))
    rule = DecisionRule("logit_adjusted", offsets, 1.0)
    expected = predict_labels(raw, rule.offsets)
    assert (expected != raw.argmax(-1)).any()
    # ... and the same rule on the calibrated probabilities would label some pairs
    # otherwise: the export's labels show which probabilities it reads.
    assert (predict_labels(keras_probabilities, rule.offsets) != expected).any()

    export_savedmodel(model, preprocessor, tmp_path / "export",
                      image_size=(TINY_IMAGE, TINY_IMAGE), seq_length=TINY_SEQ,
                      decision_rule=rule, calibration=calibration)
    export = load_export(tmp_path / "export")
    assert export.decision_rule == rule and export.calibration == calibration
    outputs = export.predict(next(iter(pairs_dataset(pairs).batch(len(pairs)))))
    np.testing.assert_allclose(outputs["probabilities"], keras_probabilities, atol=1e-5)
    np.testing.assert_allclose(outputs["logits"], log_probabilities(raw).numpy(), atol=1e-4)
    served = [label for label in outputs["label"]]
    assert served == [("Contradictory", "Implies", "NoEntailment")[i] for i in expected]
    # Answers to clients keep their two outputs.
    assert set(predict_response(outputs, row_format=True)["predictions"][0]) == {
        "probabilities", "label"}


@pytest.mark.slow
def test_a_run_and_its_export_give_each_test_pair_the_same_label(trained_run, tmp_path):
    """The session's run fits logit adjustment and a calibration; mmentail-evaluate, which
    labels the test pairs through the export, writes the predictions the run wrote."""
    import shutil

    import pandas as pd

    from mmentail.evaluation.rerun import evaluate_run

    written = json.loads((trained_run.output / "metrics.json").read_text())
    assert written["decision_rule"]["name"] == "logit_adjusted"
    assert set(written["decision_rule"]["validation_macro_f1"]) == {"argmax",
                                                                  "logit_adjusted"}
    copy = tmp_path / "run"
    shutil.copytree(trained_run.output, copy)
    metrics = evaluate_run(copy)
    assert metrics["decision_rule"] == written["decision_rule"]
    assert metrics["confusion_matrix"] == written["confusion_matrix"]
    assert metrics["calibration"]["scale"] == written["calibration"]["scale"]
    assert metrics["calibration"]["after"]["ece"] == pytest.approx(
        written["calibration"]["after"]["ece"], abs=1e-4)
    before = pd.read_csv(trained_run.output / "predictions.csv")
    after = pd.read_csv(copy / "predictions.csv")
    assert after["predicted"].tolist() == before["predicted"].tolist()
    for prefix in ("p_", "logit_"):
        tf.debugging.assert_near(after.filter(like=prefix).to_numpy(),
                                 before.filter(like=prefix).to_numpy(), atol=1e-4)
