"""Random draws whose state a checkpoint holds: restored, they repeat; streams differ."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mmentail.rng import SeededDropout


def test_a_restored_dropout_state_repeats_the_masks_it_drew_after_the_save(tmp_path):
    ones = tf.ones([4, 64])
    layer = SeededDropout(0.5, seed=3, stream="a")
    layer(ones, training=True)
    # Not a weight: it would renumber a functional model's layers in its checkpoints.
    assert layer.weights == []
    saved = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
    after_save = [layer(ones, training=True).numpy() for _ in range(2)]
    assert not np.array_equal(*after_save), "each call draws a new mask"
    # A new process: the same layer built afresh, its state restored.
    fresh = SeededDropout(0.5, seed=3, stream="a")
    fresh(ones, training=False)
    tf.train.Checkpoint(layer=fresh).restore(saved).assert_consumed()
    np.testing.assert_array_equal([fresh(ones, training=True).numpy() for _ in range(2)],
                                  after_save)
    assert set(np.unique(after_save[0])) == {0.0, 2.0}


@pytest.mark.parametrize("other", [dict(seed=4, stream="a"), dict(seed=3, stream="b")])
def test_another_seed_or_stream_draws_other_masks(other):
    ones = tf.ones([4, 64])
    mask = SeededDropout(0.5, seed=3, stream="a")(ones, training=True)
    assert not np.array_equal(mask, SeededDropout(0.5, **other)(ones, training=True))
    np.testing.assert_array_equal(mask, SeededDropout(0.5, seed=3, stream="a")(ones,
                                                                              training=True))
    np.testing.assert_array_equal(SeededDropout(0.5)(ones, training=False), ones)
