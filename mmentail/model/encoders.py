"""The frozen-by-default encoders: BERT for the text pair, ResNet50V2 for each image.

The text pair goes through BERT packed (`[CLS] t1 [SEP] t2 [SEP]`), or, with
`text_pairing="siamese"`, each post alone, as a sentence encoder such as
all-MiniLM-L6-v2 was trained: the packed inputs are split in the graph
(:class:`SeparatePosts`), so the input pipeline and the export's signature
stay the same.

`resnet_tiny` stands in for ResNet50V2 where only the wiring matters (tests,
quick local runs): the same pre-activation residual layout and layer names, so
top-block fine-tuning and the frozen batch norms behave alike, at a fraction of
the build, trace and save time.

Example:
    encoders = build_encoders(ModelConfig(encoder_handle="/path/to/encoder",
                                          image_weights="none", image_size=64))
    sorted(encoders.output)
"""

from __future__ import annotations

import re

import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from mmentail.config.experiment import ModelConfig
from mmentail.schema import BERT_INPUT_KEYS, IMAGE_KEYS
from mmentail.text.hub_modules import resolve_handle

_BLOCK = re.compile(r"^(conv\d+_block\d+)_")


class MaskedMeanPooling(tf_keras.layers.Layer):
    """Mean of a sequence over the positions where `mask` is 1."""

    def call(self, sequence, mask):
        weights = tf.cast(mask, sequence.dtype)[:, :, tf.newaxis]
        total = tf.reduce_sum(sequence * weights, axis=1)
        return total / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)


class SeparatePosts(tf_keras.layers.Layer):
    """A packed pair's BERT inputs -> each post's inputs as if it were packed alone.

    Post 1 is `[CLS]` and the type-0 tokens after it (its text and `[SEP]`),
    post 2 `[CLS]` and the type-1 tokens; each is left-aligned and padded to
    the pair's length, its type ids 0. Attention masks keep the posts apart,
    and each starts at position 0, as when tokenized alone (unless the pair
    was trimmed to fit its sequence length).
    """

    def call(self, inputs):
        ids, mask = inputs["input_word_ids"], inputs["input_mask"]
        types, length = inputs["input_type_ids"], tf.shape(ids)[1]
        after_cls = tf.range(length)[tf.newaxis, :] > 0
        posts = []
        for segment in (0, 1):
            keep = (types == segment) & (mask > 0) & after_cls
            alone = tf.concat([tf.RaggedTensor.from_tensor(ids[:, :1]),
                               tf.ragged.boolean_mask(ids, keep)], axis=1)
            word_ids = alone.to_tensor(0, shape=[None, None])
            word_ids = tf.pad(word_ids, [[0, 0], [0, length - tf.shape(word_ids)[1]]])
            word_ids.set_shape(ids.shape)
            posts.append({"input_word_ids": word_ids,
                          "input_mask": tf.sequence_mask(alone.row_lengths(), length,
                                                         dtype=ids.dtype),
                          "input_type_ids": tf.zeros_like(ids)})
        return posts


class SiameseFeatures(tf_keras.layers.Layer):
    """(u, v) -> (u, v, |u - v|, u * v): the Sentence-BERT pair classifier's features."""

    def call(self, u, v):
        return tf.concat([u, v, tf.abs(u - v), u * v], axis=-1)


def unfreeze_top_blocks(backbone: tf_keras.Model, num_blocks: int) -> list[str]:
    """Makes only the last `num_blocks` residual blocks of a ResNet (and its final BN) trainable.

    Args:
        backbone: a `tf_keras.applications` ResNet (V1 or V2) without its top.
        num_blocks: how many of its `convS_blockN` blocks, counted from the top.

    Returns:
        The names of the unfrozen blocks, bottom first.
    """
    blocks = list(dict.fromkeys(m.group(1) for layer in backbone.layers
                                if (m := _BLOCK.match(layer.name))))
    if not 0 < num_blocks <= len(blocks):
        raise ValueError(f"can unfreeze 1 to {len(blocks)} blocks, got {num_blocks}")
    unfrozen = set(blocks[-num_blocks:])
    backbone.trainable = True
    for layer in backbone.layers:
        match = _BLOCK.match(layer.name)
        layer.trainable = (match.group(1) in unfrozen) if match else layer.name == "post_bn"
    return blocks[-num_blocks:]


def resnet_tiny(input_shape: tuple[int, int, int]) -> tf_keras.Model:
    """A ResNetV2 of three one-block stages (8, 16, 32 channels), average-pooled.

    Its layers are named as in `tf_keras.applications.ResNet50V2`
    (`conv2_block1_...`, `post_bn`), so :func:`unfreeze_top_blocks` applies.
    """
    layers = tf_keras.layers
    pixels = tf_keras.Input(input_shape)
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="conv1_conv")(pixels)
    for stage, width in ((2, 8), (3, 16), (4, 32)):
        name = f"conv{stage}_block1"
        x = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_preact_bn")(x)
        x = layers.Activation("relu", name=f"{name}_preact_relu")(x)
        shortcut = layers.Conv2D(width, 1, strides=2, name=f"{name}_0_conv")(x)
        x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False,
                          name=f"{name}_1_conv")(x)
        x = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_1_bn")(x)
        x = layers.Activation("relu", name=f"{name}_1_relu")(x)
        x = layers.Conv2D(width, 3, padding="same", name=f"{name}_2_conv")(x)
        x = layers.Add(name=f"{name}_out")([shortcut, x])
    x = layers.BatchNormalization(epsilon=1.001e-5, name="post_bn")(x)
    x = layers.Activation("relu", name="post_relu")(x)
    return tf_keras.Model(pixels, layers.GlobalAveragePooling2D(name="avg_pool")(x),
                          name="resnet_tiny")


def build_backbone(config: ModelConfig) -> tf_keras.Model:
    """The configured image network without its top, average-pooled, with its weights."""
    shape = (config.image_size, config.image_size, 3)
    weights = None if config.image_weights == "none" else config.image_weights
    if config.image_backbone == "resnet50v2":
        return tf_keras.applications.ResNet50V2(include_top=False, weights=weights,
                                                input_shape=shape, pooling="avg")
    backbone = resnet_tiny(shape)
    if weights:
        backbone.load_weights(weights)
    return backbone


def build_image_encoder(config: ModelConfig) -> tf_keras.Model:
    """The image network (ResNet50V2 by default), average-pooled, taking RGB in 0..255."""
    backbone = build_backbone(config)
    backbone.trainable = config.train_image_encoder
    if config.train_image_encoder and config.image_trainable_blocks:
        unfreeze_top_blocks(backbone, config.image_trainable_blocks)
    shape = (config.image_size, config.image_size, 3)
    pixels = tf_keras.Input(shape, name="pixels")
    scaled = tf_keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(pixels)
    return tf_keras.Model(pixels, backbone(scaled), name="image_encoder")


def build_encoders(config: ModelConfig) -> tf_keras.Model:
    """The encoder half: model inputs -> one pooled feature vector per post part.

    Outputs a dict with `text` (the pair's pooled BERT features, or the
    siamese combination of each post's) and/or
    `image_1`, `image_2` (the image network's average-pooled features), per `modality`.
    """
    inputs: dict[str, tf_keras.Input] = {}
    features = {}
    if config.modality != "image":
        for key in BERT_INPUT_KEYS:
            inputs[key] = tf_keras.Input((config.seq_length,), dtype=tf.int32, name=key)
        encoder = hub.KerasLayer(resolve_handle(config.encoder_handle),
                                 trainable=config.train_text_encoder, name="text_encoder")
        pooling = MaskedMeanPooling(name="mean_pooling")

        def pooled(bert_inputs):
            outputs = encoder(bert_inputs)
            if config.text_pooling == "mean":
                return pooling(outputs["sequence_output"], bert_inputs["input_mask"])
            return outputs["pooled_output"]

        pair = {key: inputs[key] for key in BERT_INPUT_KEYS}
        if config.text_pairing == "siamese":
            post_1, post_2 = SeparatePosts(name="separate_posts")(pair)
            features["text"] = SiameseFeatures(name="siamese_features")(pooled(post_1),
                                                                        pooled(post_2))
        else:
            features["text"] = pooled(pair)
    if config.modality != "text":
        image_encoder = build_image_encoder(config)
        for key in IMAGE_KEYS:
            inputs[key] = tf_keras.Input((config.image_size, config.image_size, 3), name=key)
            features[key] = image_encoder(inputs[key])
    return tf_keras.Model(inputs, features, name="encoders")
