"""The key of stored encoder features: everything they depend on.

The pairs (ids, texts, labels, order: a run's three splits one after the other,
or a cross-validation's pairs in file order), each image file's path, size and
modification time (or the TFRecord shards'), the hub handles (a local module
by its files' sizes and times), the image network and its weights (randomly
initialised ones by their values), image size, sequence length, text pooling
and pairing, modality and the dtype policy. Any change gives a new key, so
:func:`mmentail.training.feature_cache.cached_features` never reads stale
features.

Example:
    key = feature_key(pairs, config.model, preprocess_handle=config.model.preprocess_handle,
                      random_image_weights=weights_digest(image_encoder.weights))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import pandas as pd
import tf_keras

from mmentail.config.experiment import ModelConfig
from mmentail.fingerprint import file_identity, handle_identity, rows_fingerprint
from mmentail.pipeline.preprocess import DECODER_VERSION

FORMAT_VERSION = 3


def feature_key(df: pd.DataFrame, model_config: ModelConfig, *, preprocess_handle: str,
                random_image_weights: str | None = None,
                sources: Sequence[str] = ()) -> dict[str, Any]:
    """Everything the encoders' features for `df` depend on, as a JSON-able dict.

    Args:
        df: the encoded pairs, in stored order (rows of :func:`mmentail.data.read_pairs`).
        model_config: the configuration the encoders were built from.
        preprocess_handle: the BERT preprocessing model the texts are tokenized with.
        random_image_weights: when the image weights are random (`image_weights`
            "none"), the :func:`mmentail.fingerprint.weights_digest` of the image
            encoder: the features depend on the very values drawn, which a seed
            alone does not pin (other code may have drawn from the same
            generator first).
        sources: TFRecord shards the rows' images are read from, if any.
    """
    config = dataclasses.asdict(model_config)
    random_weights = config["image_weights"] == "none" and config["modality"] != "text"
    if random_weights and random_image_weights is None:
        raise ValueError("random image weights need random_image_weights (their digest) "
                         "in the feature key")
    return {
        "format": FORMAT_VERSION,
        "decoder": DECODER_VERSION,
        "rows": rows_fingerprint(df),
        "count": len(df),
        "sources": [file_identity(path) for path in sources],
        "preprocess": handle_identity(preprocess_handle),
        "encoder": handle_identity(config["encoder_handle"]),
        "image_backbone": config["image_backbone"],
        "image_weights": handle_identity(config["image_weights"]),
        "image_size": config["image_size"],
        "seq_length": config["seq_length"],
        "text_pooling": config["text_pooling"],
        "text_pairing": config["text_pairing"],
        "modality": config["modality"],
        "dtype_policy": tf_keras.mixed_precision.global_policy().name,
        "random_image_weights": random_image_weights if random_weights else None,
    }
