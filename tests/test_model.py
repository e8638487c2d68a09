from __future__ import annotations

import numpy as np
import pytest
import tf_keras

from mmentail.model import ModelConfig
from mmentail.model.head import build_head

DIMS = {"text": 12, "image_1": 20, "image_2": 20}


def _features(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return {key: rng.normal(size=(n, dim)).astype("float32") for key, dim in DIMS.items()}


@pytest.mark.parametrize("fusion,modality_dropout", [("concat", 0.3), ("cross_attention", 0.0),
                                                     ("cross_attention", 0.3)])
def test_head_options_train_on_cached_features(fusion, modality_dropout):
    """Fusion and modality dropout live in the head, so head-only training covers them."""
    tf_keras.utils.set_random_seed(0)
    config = ModelConfig(projection_dim=16, fusion=fusion, modality_dropout=modality_dropout)
    head = build_head(config, DIMS)
    assert head.get_layer("fusion").output_shape == (None, 48)
    assert ("modality_dropout" in [layer.name for layer in head.layers]) == bool(
        modality_dropout)
    features = _features()
    labels = np.eye(3, dtype="float32")[np.arange(64) % 3]
    head.compile(tf_keras.optimizers.Adam(1e-2), "categorical_crossentropy")
    history = head.fit(features, labels, epochs=15, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    # Inference is deterministic: dropout of any kind is off.
    np.testing.assert_array_equal(head.predict(features, verbose=0),
                                  head.predict(features, verbose=0))


def test_single_modality_head_and_bad_fusion():
    head = build_head(ModelConfig(projection_dim=16, fusion="cross_attention",
                                  modality_dropout=0.5), {"text": 12})
    assert head.output_shape == (None, 3)
    with pytest.raises(ValueError, match="fusion must be one of"):
        build_head(ModelConfig(fusion="sum"), DIMS)
