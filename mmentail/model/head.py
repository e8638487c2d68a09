"""The trainable head: per-modality projections, fusion, a softmax over the labels.

The head takes pooled encoder features, so it trains on cached features as
well as inside the full model.
"""

from __future__ import annotations

import tf_keras

from mmentail.config.experiment import ModelConfig
from mmentail.model.fusion import CrossAttentionFusion, ModalityDropout
from mmentail.rng import SeededDropout
from mmentail.schema import IMAGE_KEYS, LABELS


class ProjectionBlock(tf_keras.layers.Layer):
    """Encoder space -> fusion space: LayerNorm, dense, a residual GELU step, LayerNorm.

    The input LayerNorm makes the head indifferent to the encoder's output
    scale (a randomly initialised ResNet's pooled features are ~100x smaller
    than a pretrained one's), so one learning rate suits both.
    """

    def __init__(self, dim: int, dropout: float, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.rate, self.seed = dim, dropout, seed
        self.input_norm = tf_keras.layers.LayerNormalization(name="input_norm")
        self.project = tf_keras.layers.Dense(dim, name="project")
        self.refine = tf_keras.layers.Dense(dim, activation="gelu", name="refine")
        self.dropout = SeededDropout(dropout, seed, f"{self.name}/dropout", name="dropout")
        self.norm = tf_keras.layers.LayerNormalization(name="norm")

    def call(self, x, training=None):
        projected = self.project(self.input_norm(x))
        refined = self.dropout(self.refine(projected), training=training)
        return self.norm(projected + refined)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "dropout": self.rate,
                "seed": self.seed}


def build_head(config: ModelConfig, feature_dims: dict[str, int],
               seed: int = 0) -> tf_keras.Model:
    """The trainable half: pooled features -> class probabilities.

    Each modality gets a projection (one shared by the two images); the
    projections are optionally modality-dropped, fused (concatenated, or by
    cross-attention) and passed through a hidden layer, since
    relations between parts (same stance in both images, say) are not linear
    in the concatenation, then a softmax over :data:`LABELS`. Every dropout
    draws from a generator keyed on `seed` that checkpoints of the head hold
    (:mod:`mmentail.rng`).
    """
    inputs = {key: tf_keras.Input((dim,), name=key) for key, dim in feature_dims.items()}
    parts = {}
    if "text" in inputs:
        parts["text"] = ProjectionBlock(config.projection_dim, config.dropout, seed,
                                        name="text_projection")(inputs["text"])
    image_projection = ProjectionBlock(config.projection_dim, config.dropout, seed,
                                       name="image_projection")
    parts.update({key: image_projection(inputs[key]) for key in IMAGE_KEYS if key in inputs})
    if config.modality_dropout:
        parts = ModalityDropout(config.modality_dropout, seed,
                                name="modality_dropout")(parts)
    if config.fusion == "cross_attention":
        x = CrossAttentionFusion(dropout=config.dropout, seed=seed, name="fusion")(parts)
    else:
        fused = [parts[key] for key in ("text", *IMAGE_KEYS) if key in parts]
        x = fused[0] if len(fused) == 1 else tf_keras.layers.Concatenate(name="fusion")(fused)
    x = tf_keras.layers.Dense(config.projection_dim, activation="gelu", name="fusion_hidden")(x)
    x = SeededDropout(config.dropout, seed, "fusion_dropout", name="fusion_dropout")(x)
    probabilities = tf_keras.layers.Dense(len(LABELS), activation="softmax", dtype="float32",
                                          name="probabilities")(x)
    return tf_keras.Model(inputs, probabilities, name="head")
