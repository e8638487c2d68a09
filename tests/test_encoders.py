from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from helpers import TINY_IMAGE
from mmentail.model.encoders import unfreeze_top_blocks

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
