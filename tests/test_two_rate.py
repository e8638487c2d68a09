"""TwoRateModel: each optimiser updates its own variables, loss-scaled under mixed_float16."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mmentail.training.two_rate import TwoRateModel

LossScaleOptimizer = tf_keras.mixed_precision.LossScaleOptimizer
LOSS_SCALE = 2.0 ** 15  # LossScaleOptimizer's initial dynamic scale
TINY = 1e-3  # makes the loss's float16 gradients underflow unless scaled


@pytest.fixture
def mixed_float16():
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


def _two_rate_model(encoder_optimizer) -> TwoRateModel:
    """inputs -> "encoders" (a Dense sub-model) -> a softmax Dense head, without biases."""
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((4,))
    encoder_inputs = tf_keras.Input((4,))
    encoders = tf_keras.Model(
        encoder_inputs, tf_keras.layers.Dense(4, use_bias=False)(encoder_inputs), name="encoders")
    head = tf_keras.layers.Dense(3, activation="softmax", use_bias=False, name="head")
    model = tf_keras.Model(inputs, head(encoders(inputs)), name="two_rate")
    return TwoRateModel.wrap(model, encoder_optimizer)


def _batch(magnitude: float = 1.0):
    rng = np.random.default_rng(1)
    x = (magnitude * rng.uniform(0.5, 1.0, (8, 4))).astype("float32")
    y = np.eye(3, dtype="float32")[np.arange(8) % 3]
    return x, y


def _tiny_crossentropy(y_true, y_pred):
    return TINY * tf_keras.losses.categorical_crossentropy(y_true, y_pred)


def _gradients(model, x, y, loss_fn, scale: float = 1.0) -> list[np.ndarray]:
    """The gradients of the mean loss, computed with the loss multiplied by `scale`."""
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.cast(loss_fn(y, model(x, training=True)), "float32"))
        scaled = loss * scale
    return [g.numpy() / scale for g in tape.gradient(scaled, model.trainable_variables)]


def _weights(model) -> list[np.ndarray]:
    return [v.numpy().copy() for v in model.trainable_variables]


def _is_encoder(model) -> list[bool]:
    encoder_refs = {v.ref() for v in model.get_layer("encoders").trainable_variables}
    return [v.ref() in encoder_refs for v in model.trainable_variables]


def test_compile_under_mixed_float16_loss_scales_both_optimizers(mixed_float16):
    model = _two_rate_model(tf_keras.optimizers.SGD(0.01))
    for _ in range(2):  # compiling again must not wrap the encoder optimiser twice
        model.compile(tf_keras.optimizers.SGD(0.1), "categorical_crossentropy")
        assert isinstance(model.optimizer, LossScaleOptimizer)
        assert isinstance(model.encoder_optimizer, LossScaleOptimizer)
        assert isinstance(model.encoder_optimizer.inner_optimizer, tf_keras.optimizers.SGD)
        assert not isinstance(model.encoder_optimizer.inner_optimizer, LossScaleOptimizer)
        assert model.encoder_optimizer.inner_optimizer.learning_rate.numpy() == pytest.approx(0.01)


def test_mixed_float16_step_scales_the_loss_so_small_gradients_survive(mixed_float16):
    """Float16 gradients of 1e-11 to 1e-8 underflow to 0 unless the loss is scaled by 2**15."""
    encoder_rate, head_rate = 1e6, 2e6  # steps well above float32 rounding
    model = _two_rate_model(tf_keras.optimizers.SGD(encoder_rate))
    model.compile(tf_keras.optimizers.SGD(head_rate), _tiny_crossentropy)
    x, y = _batch(magnitude=1e-4)

    unscaled = _gradients(model, x, y, _tiny_crossentropy)
    scaled = _gradients(model, x, y, _tiny_crossentropy, scale=LOSS_SCALE)
    assert len(scaled) == 2 and _is_encoder(model) == [True, False]
    for raw, good in zip(unscaled, scaled):
        assert not raw.any()  # underflowed: the unscaled step would change nothing
        assert np.all(good != 0) and np.all(np.abs(good) < 1e-7)

    before = _weights(model)
    model.train_on_batch(x, y)
    for old, new, gradient, rate in zip(before, _weights(model), scaled,
                                        (encoder_rate, head_rate)):
        assert np.all(new != old)  # every weight of the encoders and of the head moved
        np.testing.assert_allclose(new - old, -rate * gradient, rtol=1e-2, atol=1e-7)


@pytest.mark.parametrize("encoder_rate", [0.0, 0.05])
def test_each_optimizer_updates_its_own_variables_at_its_own_rate(encoder_rate):
    head_rate = 0.5
    encoder_optimizer = tf_keras.optimizers.SGD(encoder_rate)
    model = _two_rate_model(encoder_optimizer)
    model.compile(tf_keras.optimizers.SGD(head_rate), "categorical_crossentropy")
    assert model.encoder_optimizer is encoder_optimizer
    assert not isinstance(model.optimizer, LossScaleOptimizer)
    x, y = _batch()

    gradients = _gradients(model, x, y, tf_keras.losses.categorical_crossentropy)
    before = _weights(model)
    model.train_on_batch(x, y)
    (encoder_old, head_old), (encoder_new, head_new) = before, _weights(model)
    encoder_gradient, head_gradient = gradients
    assert _is_encoder(model) == [True, False]
    if encoder_rate == 0:
        np.testing.assert_array_equal(encoder_new, encoder_old)
    else:
        assert np.all(encoder_new != encoder_old)
    assert np.all(head_new != head_old)
    np.testing.assert_allclose(encoder_new - encoder_old, -encoder_rate * encoder_gradient,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(head_new - head_old, -head_rate * head_gradient,
                               rtol=1e-5, atol=1e-7)
