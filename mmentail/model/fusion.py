"""How the head combines the modality projections: dropout of whole modalities, fusion.

Both layers act on the per-part projections (`text`, `image_1`, `image_2`, each
`[batch, dim]`), so they live in the head and work on cached features too.

Their random draws come from generators that a checkpoint of the layers holds
(:mod:`mmentail.rng`).

Example:
    parts = {"text": t, "image_1": a, "image_2": b}
    parts = ModalityDropout(0.2, seed=42)(parts, training=True)
    fused = CrossAttentionFusion(num_heads=4)(parts)  # [batch, 3 * dim]
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from mmentail.rng import SeededDropout, stream_generator

_TEXT = ("text",)
_IMAGES = ("image_1", "image_2")


class ModalityDropout(tf_keras.layers.Layer):
    """At train time, zeroes one whole modality of an example with probability `rate`.

    The dropped modality (text, or both images together) is drawn uniformly, so
    the head cannot rely on either one alone and degrades gracefully when a
    modality is uninformative. Never drops both; a no-op with one modality or
    at inference. Draws from a generator keyed on `seed`.
    """

    def __init__(self, rate: float, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"modality dropout rate must be in [0, 1), got {rate}")
        self.rate, self.seed = rate, seed

    def build(self, input_shape):
        self.generator = stream_generator(self.seed, "modality_dropout")
        super().build(input_shape)

    def call(self, parts: dict[str, tf.Tensor], training=None) -> dict[str, tf.Tensor]:
        groups = [g for g in (_TEXT, _IMAGES) if any(k in parts for k in g)]
        if not training or self.rate == 0 or len(groups) < 2:
            return dict(parts)
        batch = tf.shape(next(iter(parts.values())))[0]
        dropped = self.generator.uniform([batch]) < self.rate
        drop_text = self.generator.uniform([batch]) < 0.5
        keep = {_TEXT: ~(dropped & drop_text), _IMAGES: ~(dropped & ~drop_text)}
        return {key: value * tf.cast(keep[group], value.dtype)[:, tf.newaxis]
                for group in groups for key, value in parts.items() if key in group}

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class _SeededAttention(tf_keras.layers.MultiHeadAttention):
    """Multi-head attention whose attention-probability dropout is a :class:`SeededDropout`."""

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed

    def _build_attention(self, rank):
        super()._build_attention(rank)
        self._dropout_layer = SeededDropout(self._dropout, self.seed, f"fusion/{self.name}",
                                            dtype=self._dtype_policy)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


class CrossAttentionFusion(tf_keras.layers.Layer):
    """Text attends to the image projections and the images attend to the text.

    Each part is a token; a text token's update is multi-head attention over
    the image tokens, each image token's update attention over the text token,
    both added residually to layer-normalised inputs (a pre-norm transformer
    step without self-attention). Returns the updated tokens concatenated, like
    `concat`. With one modality there is nothing to cross: the parts are
    concatenated. Attention dropout draws from generators keyed on `seed`.
    """

    def __init__(self, num_heads: int = 4, dropout: float = 0.0, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.rate, self.seed = num_heads, dropout, seed

    def build(self, input_shape):
        dim = int(next(iter(input_shape.values()))[-1])
        self.text_to_image = _SeededAttention(
            self.num_heads, max(dim // self.num_heads, 1), dropout=self.rate, seed=self.seed,
            name="text_to_image")
        self.image_to_text = _SeededAttention(
            self.num_heads, max(dim // self.num_heads, 1), dropout=self.rate, seed=self.seed,
            name="image_to_text")
        self.text_norm = tf_keras.layers.LayerNormalization(name="text_norm")
        self.image_norm = tf_keras.layers.LayerNormalization(name="image_norm")
        super().build(input_shape)

    def call(self, parts: dict[str, tf.Tensor], training=None) -> tf.Tensor:
        image_keys = [k for k in _IMAGES if k in parts]
        if "text" not in parts or not image_keys:
            return tf.concat([parts[k] for k in (*_TEXT, *_IMAGES) if k in parts], axis=-1)
        text = parts["text"][:, tf.newaxis, :]
        images = tf.stack([parts[k] for k in image_keys], axis=1)
        text_normed, images_normed = self.text_norm(text), self.image_norm(images)
        text_out = text + self.text_to_image(text_normed, images_normed, training=training)
        images_out = images + self.image_to_text(images_normed, text_normed, training=training)
        tokens = tf.concat([text_out, images_out], axis=1)
        return tf.reshape(tokens, [-1, tokens.shape[1] * tokens.shape[2]])

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "dropout": self.rate,
                "seed": self.seed}
