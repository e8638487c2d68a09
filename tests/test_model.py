from __future__ import annotations

import numpy as np
import pytest
import tf_keras

from helpers import TINY_IMAGE
from mmentail.config.experiment import ModelConfig
from mmentail.errors import ConfigError
from mmentail.model.build import build_model
from mmentail.model.head import build_head
from mmentail.training.two_rate import TwoRateModel

SIZE = (TINY_IMAGE, TINY_IMAGE)
DIMS = {"text": 12, "image_1": 20, "image_2": 20}


def _features(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return {key: rng.normal(size=(n, dim)).astype("float32") for key, dim in DIMS.items()}


@pytest.mark.slow  # fits the head
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
    # An unknown fusion is refused where it is set, before any model is built.
    with pytest.raises(ConfigError, match="fusion must be one of"):
        ModelConfig(fusion="sum")


@pytest.mark.slow  # fits
def test_two_rate_model_trains_encoders_at_their_own_rate():
    """An encoder learning rate of 0 leaves the unfrozen blocks untouched; the head learns."""
    tf_keras.utils.set_random_seed(0)
    config = ModelConfig(modality="image", image_weights="none", image_backbone="resnet_tiny",
                         image_size=TINY_IMAGE, projection_dim=8, train_image_encoder=True,
                         image_trainable_blocks=1)
    model = build_model(config)
    images = {key: np.random.default_rng(1).uniform(0, 255, (8, *SIZE, 3)).astype("float32")
              for key in ("image_1", "image_2")}
    labels = np.eye(3, dtype="float32")[np.arange(8) % 3]
    encoder_weights = model.get_layer("encoders").trainable_weights
    assert 0 < len(encoder_weights) < len(model.get_layer("encoders").weights)

    def fit(encoder_rate):
        wrapped = TwoRateModel.wrap(model, tf_keras.optimizers.SGD(encoder_rate))
        wrapped.compile(tf_keras.optimizers.SGD(0.1), "categorical_crossentropy")
        before = [w.numpy().copy() for w in encoder_weights]
        head_before = model.get_layer("head").trainable_weights[0].numpy().copy()
        wrapped.fit(images, labels, epochs=1, batch_size=8, verbose=0)
        encoder_moved = any(not np.array_equal(w.numpy(), b)
                            for w, b in zip(encoder_weights, before))
        head_moved = not np.array_equal(model.get_layer("head").trainable_weights[0].numpy(),
                                        head_before)
        return encoder_moved, head_moved

    assert fit(0.0) == (False, True)
    assert fit(0.1) == (True, True)
