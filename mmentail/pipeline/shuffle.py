"""Epoch shuffling whose order is keyed on the optimizer's step, so resumed runs repeat it."""

from __future__ import annotations

import tensorflow as tf


def shuffle_each_epoch(ds: tf.data.Dataset, size: int, seed: int,
                       step: tf.Variable | None = None) -> tf.data.Dataset:
    """Shuffles all `size` elements of `ds` anew for every pass over it.

    With `step` (the optimizer's step counter), a pass's order depends only on
    `seed` and `step`'s value when the pass starts, not on how many passes came
    before in this process: a run resumed from a checkpoint, which restores
    the counter, sees the order the uninterrupted run would have seen.

    Example:
        ds = shuffle_each_epoch(ds, len(df), seed=42, step=model.optimizer.iterations)
    """
    if step is None:
        return ds.shuffle(size, seed=seed, reshuffle_each_iteration=True)

    def permuted(*components):
        # Read at the start of each pass; a stateless permutation keeps tensors
        # out of the op seeds, which TF's seed handling cannot take symbolically.
        key = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
        order = tf.random.experimental.stateless_shuffle(tf.range(size), seed=key)
        gathered = tf.nest.map_structure(lambda t: tf.gather(t, order), components)
        return tf.data.Dataset.from_tensor_slices(
            gathered if len(gathered) > 1 else gathered[0])

    # One batch of all elements: as much memory as a shuffle buffer of `size`.
    return ds.batch(size).flat_map(permuted).apply(
        tf.data.experimental.assert_cardinality(size))
