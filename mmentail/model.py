"""The multimodal entailment model: BERT for the text pair, ResNet50V2 for each image.

Both encoders are frozen by default; the trainable part is a projection per
modality and a softmax over the fused projections. One ResNet50V2 (and one
image projection) is shared by the two images.

Example:
    >>> model = build_model(ModelConfig(encoder_handle="/path/to/encoder",
    ...                                 image_weights=None, image_size=(64, 64)))
    >>> sorted(model.input_names)
    ['image_1', 'image_2', 'input_mask', 'input_type_ids', 'input_word_ids']
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from mmentail.bert import BERT_INPUT_KEYS
from mmentail.data import LABELS
from mmentail.finetune import unfreeze_top_blocks
from mmentail.fusion import FUSIONS, CrossAttentionFusion, ModalityDropout
from mmentail.hub_modules import DEFAULT_ENCODER_HANDLE, resolve_handle
from mmentail.pipeline import IMAGE_KEYS, MODALITIES


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What :func:`build_model` builds.

    Args:
        encoder_handle: TF Hub BERT encoder, URL or local SavedModel path.
        image_weights: "imagenet", None (random init) or a weights file path.
        image_size: (height, width) of the input images.
        seq_length: BERT sequence length.
        projection_dim: width of each modality's projection.
        dropout: dropout rate in the projections and before the classifier.
        train_text_encoder: fine-tune BERT instead of freezing it.
        train_image_encoder: fine-tune ResNet50V2 instead of freezing it.
        modality: "both", "text" or "image".
        text_pooling: "pooled" (BERT's pooled_output, the [CLS] summary) or
            "mean" (masked mean of sequence_output, which keeps more of the
            tokens when the encoder is frozen and not trained for [CLS]).
        image_trainable_blocks: with `train_image_encoder`, fine-tune only the
            top N of ResNet50V2's 16 residual blocks; 0 means all.
        modality_dropout: per example, drop the text or both image projections
            with this probability at train time (see :mod:`mmentail.fusion`).
        fusion: "concat" or "cross_attention" (see :mod:`mmentail.fusion`).
    """

    encoder_handle: str = DEFAULT_ENCODER_HANDLE
    image_weights: str | None = "imagenet"
    image_size: tuple[int, int] = (128, 128)
    seq_length: int = 128
    projection_dim: int = 256
    dropout: float = 0.1
    train_text_encoder: bool = False
    train_image_encoder: bool = False
    modality: str = "both"
    text_pooling: str = "pooled"
    image_trainable_blocks: int = 0
    modality_dropout: float = 0.0
    fusion: str = "concat"


class ProjectionBlock(tf_keras.layers.Layer):
    """Encoder space -> fusion space: LayerNorm, dense, a residual GELU step, LayerNorm.

    The input LayerNorm makes the head indifferent to the encoder's output
    scale (a randomly initialised ResNet's pooled features are ~100x smaller
    than a pretrained one's), so one learning rate suits both.
    """

    def __init__(self, dim: int, dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.rate = dim, dropout
        self.input_norm = tf_keras.layers.LayerNormalization(name="input_norm")
        self.project = tf_keras.layers.Dense(dim, name="project")
        self.refine = tf_keras.layers.Dense(dim, activation="gelu", name="refine")
        self.dropout = tf_keras.layers.Dropout(dropout)
        self.norm = tf_keras.layers.LayerNormalization(name="norm")

    def call(self, x, training=None):
        projected = self.project(self.input_norm(x))
        refined = self.dropout(self.refine(projected), training=training)
        return self.norm(projected + refined)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "dropout": self.rate}


class MaskedMeanPooling(tf_keras.layers.Layer):
    """Mean of a sequence over the positions where `mask` is 1."""

    def call(self, sequence, mask):
        weights = tf.cast(mask, sequence.dtype)[:, :, tf.newaxis]
        total = tf.reduce_sum(sequence * weights, axis=1)
        return total / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)


def build_image_encoder(config: ModelConfig) -> tf_keras.Model:
    """ResNet50V2 without its top, average-pooled, taking RGB in 0..255."""
    weights = config.image_weights
    backbone = tf_keras.applications.ResNet50V2(
        include_top=False, weights=weights, input_shape=(*config.image_size, 3),
        pooling="avg")
    backbone.trainable = config.train_image_encoder
    if config.train_image_encoder and config.image_trainable_blocks:
        unfreeze_top_blocks(backbone, config.image_trainable_blocks)
    pixels = tf_keras.Input((*config.image_size, 3), name="pixels")
    scaled = tf_keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(pixels)
    return tf_keras.Model(pixels, backbone(scaled), name="image_encoder")


def build_encoders(config: ModelConfig) -> tf_keras.Model:
    """The encoder half: model inputs -> one pooled feature vector per post part.

    Outputs a dict with `text` (the pair's pooled BERT features) and/or
    `image_1`, `image_2` (ResNet50V2 average-pooled features), per `modality`.
    """
    if config.modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {config.modality!r}")
    if config.text_pooling not in ("pooled", "mean"):
        raise ValueError(f"text_pooling must be 'pooled' or 'mean', got {config.text_pooling!r}")
    inputs: dict[str, tf_keras.Input] = {}
    features = {}
    if config.modality != "image":
        for key in BERT_INPUT_KEYS:
            inputs[key] = tf_keras.Input((config.seq_length,), dtype=tf.int32, name=key)
        encoder = hub.KerasLayer(resolve_handle(config.encoder_handle),
                                 trainable=config.train_text_encoder, name="text_encoder")
        outputs = encoder({key: inputs[key] for key in BERT_INPUT_KEYS})
        if config.text_pooling == "mean":
            features["text"] = MaskedMeanPooling(name="mean_pooling")(
                outputs["sequence_output"], inputs["input_mask"])
        else:
            features["text"] = outputs["pooled_output"]
    if config.modality != "text":
        image_encoder = build_image_encoder(config)
        for key in IMAGE_KEYS:
            inputs[key] = tf_keras.Input((*config.image_size, 3), name=key)
            features[key] = image_encoder(inputs[key])
    return tf_keras.Model(inputs, features, name="encoders")


def build_head(config: ModelConfig, feature_dims: dict[str, int]) -> tf_keras.Model:
    """The trainable half: pooled features -> class probabilities.

    Each modality gets a projection (one shared by the two images); the
    projections are optionally modality-dropped, fused (concatenated, or by
    cross-attention) and passed through a hidden layer, since
    relations between parts (same stance in both images, say) are not linear
    in the concatenation, then a softmax over :data:`LABELS`.
    """
    if config.fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {config.fusion!r}")
    inputs = {key: tf_keras.Input((dim,), name=key) for key, dim in feature_dims.items()}
    parts = {}
    if "text" in inputs:
        parts["text"] = ProjectionBlock(config.projection_dim, config.dropout,
                                        name="text_projection")(inputs["text"])
    image_projection = ProjectionBlock(config.projection_dim, config.dropout,
                                       name="image_projection")
    parts.update({key: image_projection(inputs[key]) for key in IMAGE_KEYS if key in inputs})
    if config.modality_dropout:
        parts = ModalityDropout(config.modality_dropout, name="modality_dropout")(parts)
    if config.fusion == "cross_attention":
        x = CrossAttentionFusion(dropout=config.dropout, name="fusion")(parts)
    else:
        fused = [parts[key] for key in ("text", *IMAGE_KEYS) if key in parts]
        x = fused[0] if len(fused) == 1 else tf_keras.layers.Concatenate(name="fusion")(fused)
    x = tf_keras.layers.Dense(config.projection_dim, activation="gelu", name="fusion_hidden")(x)
    x = tf_keras.layers.Dropout(config.dropout)(x)
    probabilities = tf_keras.layers.Dense(len(LABELS), activation="softmax", dtype="float32",
                                          name="probabilities")(x)
    return tf_keras.Model(inputs, probabilities, name="head")


def build_model(config: ModelConfig) -> tf_keras.Model:
    """Builds the full model, encoders then head; call inside a strategy scope.

    Inputs are the BERT dict (`input_word_ids`, `input_mask`, `input_type_ids`)
    and `image_1`, `image_2` (float32 RGB 0..255), minus whatever `modality`
    leaves out. The output is softmax probabilities over :data:`LABELS`. The
    halves are the layers named "encoders" and "head".
    """
    encoders = build_encoders(config)
    head = build_head(config, {key: int(t.shape[-1]) for key, t in encoders.output.items()})
    inputs = {key: tf_keras.Input(t.shape[1:], dtype=t.dtype, name=key)
              for key, t in encoders.input.items()}
    return tf_keras.Model(inputs, head(encoders(inputs)), name="mmentail")
