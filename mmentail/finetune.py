"""Encoder fine-tuning: unfreeze the top residual blocks, train encoders at their own rate.

Pretrained encoders need a much smaller learning rate than the freshly
initialised head. tf_keras has no optimiser that applies different rates to
different variables, so :class:`TwoRateModel` updates the variables of its
"encoders" layer with a second optimiser. Frozen BatchNorm layers
(`trainable = False`) run in inference mode in tf_keras, so frozen blocks keep
their statistics while the unfrozen ones adapt.

Example:
    >>> model = TwoRateModel.wrap(build_model(config), tf_keras.optimizers.Adam(1e-5))
    >>> model.compile(optimizer=tf_keras.optimizers.Adam(1e-3), loss=...)
"""

from __future__ import annotations

import re

import tensorflow as tf
import tf_keras

_BLOCK = re.compile(r"^(conv\d+_block\d+)_")


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


class TwoRateModel(tf_keras.Model):
    """A functional model whose "encoders" layer trains with `encoder_optimizer`.

    The optimiser given to `compile` updates every other trainable variable.
    """

    def __init__(self, *args, encoder_optimizer: tf_keras.optimizers.Optimizer, **kwargs):
        super().__init__(*args, **kwargs)
        self.encoder_optimizer = encoder_optimizer

    @classmethod
    def wrap(cls, model: tf_keras.Model,
             encoder_optimizer: tf_keras.optimizers.Optimizer) -> "TwoRateModel":
        """The same layers and weights as `model` (which has an "encoders" layer)."""
        return cls(model.input, model.output, encoder_optimizer=encoder_optimizer,
                   name=model.name)

    def train_step(self, data):
        x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight)
        encoder_refs = {v.ref() for v in self.get_layer("encoders").trainable_variables}
        encoder_vars = [v for v in self.trainable_variables if v.ref() in encoder_refs]
        head_vars = [v for v in self.trainable_variables if v.ref() not in encoder_refs]
        gradients = tape.gradient(loss, encoder_vars + head_vars)
        if encoder_vars:
            self.encoder_optimizer.apply_gradients(
                zip(gradients[:len(encoder_vars)], encoder_vars))
        self.optimizer.apply_gradients(zip(gradients[len(encoder_vars):], head_vars))
        return self.compute_metrics(x, y, y_pred, sample_weight)
