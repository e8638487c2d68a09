from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras
from helpers import TINY_IMAGE

from mmentail.model import ModelConfig
from mmentail.model.build import build_model
from mmentail.model.encoders import unfreeze_top_blocks
from mmentail.training.two_rate import TwoRateModel

SIZE = (TINY_IMAGE, TINY_IMAGE)


def _resnet():
    return tf_keras.applications.ResNet50V2(include_top=False, weights=None,
                                            input_shape=(*SIZE, 3), pooling="avg")


def _moving_means(layer):
    return layer.moving_mean.numpy().copy()


def test_top_blocks_unfrozen_and_frozen_batchnorm_stays_in_inference_mode():
    backbone = _resnet()
    assert unfreeze_top_blocks(backbone, 2) == ["conv5_block2", "conv5_block3"]
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    assert trainable and all(name.startswith(("conv5_block2", "conv5_block3", "post_bn"))
                             for name in trainable)
    frozen_bn = backbone.get_layer("conv2_block1_preact_bn")
    unfrozen_bn = backbone.get_layer("post_bn")
    before = _moving_means(frozen_bn), _moving_means(unfrozen_bn)
    images = tf.random.uniform([4, *SIZE, 3], -1, 1, seed=0)
    backbone(images, training=True)
    np.testing.assert_array_equal(_moving_means(frozen_bn), before[0])
    assert not np.array_equal(_moving_means(unfrozen_bn), before[1])


def test_two_rate_model_trains_encoders_at_their_own_rate():
    """An encoder learning rate of 0 leaves the unfrozen blocks untouched; the head learns."""
    tf_keras.utils.set_random_seed(0)
    config = ModelConfig(modality="image", image_weights=None, image_size=SIZE,
                         projection_dim=8, train_image_encoder=True, image_trainable_blocks=1)
    model = build_model(config)
    images = {key: np.random.default_rng(1).uniform(0, 255, (8, *SIZE, 3)).astype("float32")
              for key in ("image_1", "image_2")}
    labels = np.eye(3, dtype="float32")[np.arange(8) % 3]
    encoder_weights = model.get_layer("encoders").trainable_weights
    assert 0 < len(encoder_weights) < len(model.get_layer("encoders").weights)

    def fit(encoder_rate):
        wrapped = TwoRateModel.wrap(model, tf_keras.optimizers.SGD(encoder_rate))
        wrapped.compile(tf_keras.optimizers.SGD(0.1), "categorical_crossentropy")
        before = [w.numpy().copy() for w in encoder_weights]
        head_before = model.get_layer("head").trainable_weights[0].numpy().copy()
        wrapped.fit(images, labels, epochs=1, batch_size=8, verbose=0)
        encoder_moved = any(not np.array_equal(w.numpy(), b)
                            for w, b in zip(encoder_weights, before))
        head_moved = not np.array_equal(model.get_layer("head").trainable_weights[0].numpy(),
                                        head_before)
        return encoder_moved, head_moved

    assert fit(0.0) == (False, True)
    assert fit(0.1) == (True, True)
