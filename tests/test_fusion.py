from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mmentail.model.fusion import CrossAttentionFusion, ModalityDropout


def _parts(batch=2000, dim=8):
    return {key: tf.ones([batch, dim]) for key in ("text", "image_1", "image_2")}


def test_modality_dropout_drops_one_whole_modality_never_both():
    tf.random.set_seed(0)
    out = ModalityDropout(0.5)(_parts(), training=True)
    text_kept = out["text"].numpy().any(axis=1)
    image_kept = out["image_1"].numpy().any(axis=1)
    np.testing.assert_array_equal(image_kept, out["image_2"].numpy().any(axis=1))
    assert (text_kept | image_kept).all()
    dropped = np.mean(~text_kept | ~image_kept)
    assert 0.45 < dropped < 0.55
    assert 0.2 < np.mean(~text_kept) < 0.3


def test_modality_dropout_is_identity_at_inference_and_with_one_modality():
    parts = _parts(batch=50)
    for key, value in ModalityDropout(0.9)(parts, training=False).items():
        np.testing.assert_array_equal(value, parts[key])
    images = {k: v for k, v in parts.items() if k != "text"}
    for value in ModalityDropout(0.9)(images, training=True).values():
        assert value.numpy().all()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ModalityDropout(1.0)


def test_cross_attention_mixes_modalities():
    tf.random.set_seed(0)
    layer = CrossAttentionFusion(num_heads=2)
    rng = np.random.default_rng(0)
    parts = {k: tf.constant(rng.normal(size=(4, 8)), tf.float32)
             for k in ("text", "image_1", "image_2")}
    out = layer(parts)
    assert out.shape == (4, 24)
    changed = {**parts, "image_2": tf.constant(rng.normal(size=(4, 8)), tf.float32)}
    # The text token's output (first 8 columns) reads the images.
    assert not np.allclose(layer(changed)[:, :8], out[:, :8])
    text_only = CrossAttentionFusion()({"text": parts["text"]})
    np.testing.assert_array_equal(text_only, parts["text"])
