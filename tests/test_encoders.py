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


def test_resnet_tiny_has_resnet50v2s_layout_and_refuses_imagenet_weights(tmp_path):
    import pytest

    from mmentail.config.experiment import ModelConfig
    from mmentail.errors import ConfigError
    from mmentail.model.encoders import build_image_encoder, resnet_tiny

    backbone = resnet_tiny((*SIZE, 3))
    assert backbone.output_shape == (None, 32)
    assert unfreeze_top_blocks(backbone, 1) == ["conv4_block1"]
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    assert trainable and all(name.startswith(("conv4_block1", "post_bn")) for name in trainable)
    with pytest.raises(ValueError, match="1 to 3 blocks"):
        unfreeze_top_blocks(backbone, 4)

    # Weights from a file: the encoder computes what the saved network did.
    path = str(tmp_path / "tiny.weights.h5")
    backbone.save_weights(path)
    config = ModelConfig(image_backbone="resnet_tiny", image_weights=path,
                         image_size=SIZE[0])
    images = tf.random.uniform([2, *SIZE, 3], 0, 255, seed=1)
    np.testing.assert_allclose(build_image_encoder(config)(images),
                               backbone(images / 127.5 - 1.0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="no imagenet weights"):
        ModelConfig(image_backbone="resnet_tiny")
