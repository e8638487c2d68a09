"""Encoder fine-tuning: the encoders train at their own, smaller learning rate.

Pretrained encoders need a much smaller learning rate than the freshly
initialised head. tf_keras has no optimiser that applies different rates to
different variables, so :class:`TwoRateModel` updates the variables of its
"encoders" layer with a second optimiser. Frozen BatchNorm layers
(`trainable = False`) run in inference mode in tf_keras, so frozen blocks keep
their statistics while the unfrozen ones adapt.

Under a ``mixed_float16`` policy small float16 gradients underflow to zero
unless the loss is scaled up before differentiation; ``compile`` wraps the
compiled optimiser in a ``LossScaleOptimizer``, so :class:`TwoRateModel` wraps
its encoder optimiser too and its ``train_step`` scales and unscales for each.

Example:
    model = TwoRateModel.wrap(build_model(config), tf_keras.optimizers.Adam(1e-5))
    model.compile(optimizer=tf_keras.optimizers.Adam(1e-3), loss=...)
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

_LossScaleOptimizer = tf_keras.mixed_precision.LossScaleOptimizer


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

    def compile(self, *args, **kwargs) -> None:
        """As `tf_keras.Model.compile`; loss-scales the encoder optimiser as it does the other."""
        super().compile(*args, **kwargs)
        if (isinstance(self.optimizer, _LossScaleOptimizer)
                and not isinstance(self.encoder_optimizer, _LossScaleOptimizer)):
            with self.distribute_strategy.scope():
                self.encoder_optimizer = _LossScaleOptimizer(self.encoder_optimizer)

    def train_step(self, data):
        x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(data)
        optimizers = (self.encoder_optimizer, self.optimizer)
        # Persistent: each optimiser differentiates the loss scaled by its own loss scale.
        with tf.GradientTape(persistent=True) as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight)
            targets = [_scaled_loss(optimizer, loss) for optimizer in optimizers]
        encoder_refs = {v.ref() for v in self.get_layer("encoders").trainable_variables}
        encoder_vars = [v for v in self.trainable_variables if v.ref() in encoder_refs]
        head_vars = [v for v in self.trainable_variables if v.ref() not in encoder_refs]
        encoder_grads, head_grads = (
            _unscaled_gradients(optimizer, tape.gradient(target, variables))
            for optimizer, target, variables in zip(optimizers, targets,
                                                    (encoder_vars, head_vars)))
        del tape
        if encoder_vars:
            self.encoder_optimizer.apply_gradients(zip(encoder_grads, encoder_vars))
        self.optimizer.apply_gradients(zip(head_grads, head_vars))
        return self.compute_metrics(x, y, y_pred, sample_weight)


def _scaled_loss(optimizer: tf_keras.optimizers.Optimizer, loss: tf.Tensor) -> tf.Tensor:
    if isinstance(optimizer, _LossScaleOptimizer):
        return optimizer.get_scaled_loss(loss)
    return loss


def _unscaled_gradients(optimizer: tf_keras.optimizers.Optimizer,
                        gradients: list[tf.Tensor | None]) -> list[tf.Tensor | None]:
    if isinstance(optimizer, _LossScaleOptimizer):
        return optimizer.get_unscaled_gradients(gradients)
    return gradients
