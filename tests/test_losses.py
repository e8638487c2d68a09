from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mmentail.training.losses import class_weights, focal_alpha, make_loss

TRAIN = np.array([0] * 10 + [1] * 20 + [2] * 170)


def test_class_weights_are_inverse_frequency_with_unchanged_total():
    weights = class_weights(TRAIN)
    assert weights[0] == pytest.approx(200 / 30) and weights[2] == pytest.approx(200 / 510)
    assert sum(weights[i] * n for i, n in enumerate((10, 20, 170))) == pytest.approx(200)
    assert class_weights(np.array([2, 2, 1]))[0] == pytest.approx(1.0)  # absent: seen once


def test_focal_alpha_specs():
    balanced = focal_alpha("balanced", TRAIN)
    assert sum(balanced) == pytest.approx(1) and balanced[0] > balanced[1] > balanced[2]
    assert focal_alpha("none", TRAIN) == 1.0
    assert focal_alpha("0.4, 0.4,0.2", TRAIN) == [0.4, 0.4, 0.2]
    for bad in ("0.5,0.5", "a,b,c", "-1,1,1"):
        with pytest.raises(ValueError, match="focal_alpha"):
            focal_alpha(bad, TRAIN)


def test_focal_loss_weights_each_class_by_its_alpha():
    y_true = tf.one_hot([0, 1, 2], 3)
    y_pred = tf.constant([[0.6, 0.2, 0.2], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]])
    plain = make_loss("focal", gamma=2.0, alpha=1.0).call(y_true, y_pred).numpy()
    alpha = [0.5, 0.3, 0.2]
    weighted = make_loss("focal", gamma=2.0, alpha=alpha).call(y_true, y_pred).numpy()
    np.testing.assert_allclose(weighted, plain * alpha, rtol=1e-5)
    # gamma down-weights the confident example more than the unsure one.
    ce = make_loss("cross_entropy").call(y_true, y_pred).numpy()
    assert (plain / ce)[2] < (plain / ce)[1]


def test_label_smoothing_raises_the_loss_of_a_confident_right_answer():
    y_true, y_pred = tf.one_hot([0], 3), tf.constant([[0.98, 0.01, 0.01]])
    assert float(make_loss("cross_entropy", label_smoothing=0.1)(y_true, y_pred)) > float(
        make_loss("cross_entropy")(y_true, y_pred))
    with pytest.raises(ValueError, match="loss must be one of"):
        make_loss("hinge")
