from __future__ import annotations

import dataclasses

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


def test_separate_posts_are_each_post_packed_alone(preprocessor, demo_pairs):
    from mmentail.model.encoders import SeparatePosts
    from mmentail.pipeline.preprocess import clean_text, pack_text_pair

    seq = 40
    texts_1 = tf.constant([*demo_pairs["text_1"][:5], "x"])
    texts_2 = tf.constant([*demo_pairs["text_2"][:5], ""])
    posts = SeparatePosts()(pack_text_pair(preprocessor, texts_1, texts_2, seq))
    for post, texts in zip(posts, (texts_1, texts_2)):
        alone = preprocessor.bert_pack_inputs([preprocessor.tokenize(clean_text(texts, seq))],
                                              seq_length=seq)
        for key, value in post.items():
            np.testing.assert_array_equal(value.numpy(), alone[key].numpy(), err_msg=key)


def test_siamese_text_features_are_u_v_and_their_difference_and_product(demo):
    from mmentail.config.experiment import ModelConfig
    from mmentail.model.encoders import build_encoders

    config = ModelConfig(encoder_handle=str(demo.encoder_dir), modality="text", seq_length=16,
                         text_pooling="mean")
    packed = build_encoders(config)
    siamese = build_encoders(dataclasses.replace(config, text_pairing="siamese"))
    hidden = packed.output["text"].shape[-1]
    assert siamese.output["text"].shape[-1] == 4 * hidden
    ids = np.array([[2, 7, 8, 3, 9, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
    pair = {"input_word_ids": ids, "input_mask": (ids > 0).astype(np.int32),
            "input_type_ids": np.array([[0] * 4 + [1] * 2 + [0] * 10], np.int32)}
    u, v, difference, product = np.split(siamese(pair)["text"].numpy(), 4, axis=-1)
    alone = [{"input_word_ids": np.array([row + [0] * (16 - len(row))], np.int32),
              "input_mask": np.array([[1] * len(row) + [0] * (16 - len(row))], np.int32),
              "input_type_ids": np.zeros((1, 16), np.int32)} for row in ([2, 7, 8, 3], [2, 9, 3])]
    # Each half is the post encoded alone (both models load the same encoder weights).
    np.testing.assert_allclose(u, packed(alone[0])["text"].numpy(), atol=1e-5)
    np.testing.assert_allclose(v, packed(alone[1])["text"].numpy(), atol=1e-5)
    np.testing.assert_allclose(difference, np.abs(u - v), atol=1e-6)
    np.testing.assert_allclose(product, u * v, atol=1e-6)
