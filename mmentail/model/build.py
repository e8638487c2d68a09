"""The multimodal entailment model: encoders then head, one functional tf_keras model.

Both encoders are frozen by default; the trainable part is a projection per
modality and a softmax over the fused projections. One ResNet50V2 (and one
image projection) is shared by the two images.

Example:
    model = build_model(ModelConfig(encoder_handle="/path/to/encoder",
                                    image_weights="none", image_size=64))
    sorted(model.input_names)
"""

from __future__ import annotations

import tf_keras

from mmentail.config.experiment import ModelConfig
from mmentail.model.encoders import build_encoders
from mmentail.model.head import build_head


def build_model(config: ModelConfig, seed: int = 0) -> tf_keras.Model:
    """Builds the full model, encoders then head; call inside a strategy scope.

    Inputs are the BERT dict (`input_word_ids`, `input_mask`, `input_type_ids`)
    and `image_1`, `image_2` (float32 RGB 0..255), minus whatever `modality`
    leaves out. The output is softmax probabilities over :data:`LABELS`. The
    halves are the layers named "encoders" and "head"; the head's dropout is
    keyed on `seed` (see :func:`mmentail.model.head.build_head`).
    """
    encoders = build_encoders(config)
    head = build_head(config, {key: int(t.shape[-1]) for key, t in encoders.output.items()},
                      seed)
    inputs = {key: tf_keras.Input(t.shape[1:], dtype=t.dtype, name=key)
              for key, t in encoders.input.items()}
    return tf_keras.Model(inputs, head(encoders(inputs)), name="mmentail")
