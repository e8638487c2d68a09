"""Epoch shuffling whose order is keyed on the optimizer's step, so resumed runs repeat it.

Memory is bounded by a shuffle buffer: a split of up to `buffer_size` elements
is permuted whole, a larger one streams through a buffer of `buffer_size`
elements (sharded sources add a per-pass shard order, :func:`shuffled_files`).
Either way a pass's order is a function of the seed and of the step counter's
value when the pass starts, and of nothing else.

Example:
    ds = shuffle_each_epoch(ds, len(df), seed=42, step=trainee.pass_step,
                            buffer_size=4096)
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from mmentail.schema import DEFAULT_SHUFFLE_BUFFER

# Salt that keeps the shard order's key apart from the element order's.
_FILES_SALT = 1


def pass_key(seed: int, step: tf.Variable) -> tf.data.Dataset:
    """One element, the int64 pair (seed, step), the step read when a pass starts.

    Building a pass's dataset inside `pass_key(...).flat_map(...)` keys its
    randomness on the counter's value at the start of that pass: each pass
    creates a new iterator, which reads the counter afresh.

    Example:
        pass_key(42, step).flat_map(lambda key: tf.data.Dataset.from_tensors(key))
    """
    return tf.data.Dataset.from_tensors(tf.constant(seed, tf.int64)).map(
        lambda s: tf.stack([s, tf.cast(step.read_value(), tf.int64)]))


def shuffle_each_epoch(ds: tf.data.Dataset, size: int, seed: int,
                       step: tf.Variable | None = None,
                       buffer_size: int = DEFAULT_SHUFFLE_BUFFER) -> tf.data.Dataset:
    """Shuffles the `size` elements of `ds` anew for every pass, holding at most `buffer_size`.

    With `step` (the optimizer's step counter), a pass's order depends only on
    `seed` and `step`'s value when the pass starts, not on how many passes came
    before in this process: a run resumed from a checkpoint, which restores
    the counter, sees the order the uninterrupted run would have seen. Up to
    `buffer_size` elements are permuted whole (every order equally likely);
    beyond, a stateless-seeded shuffle buffer of `buffer_size` streams them.
    Both depend only on element positions, so a dataset of row indices gets
    the same order as the rows themselves (the feature cache relies on it).

    Args:
        ds: the elements, in a fixed order (e.g. after `.cache()`).
        size: the number of elements of `ds`.
        seed: the run's seed.
        step: the optimizer's step at the start of the pass, held still while
            the pass runs (:class:`mmentail.training.callbacks.PassStart`: the
            optimizer's own counter moves under the pass's first read), or None
            for an order seeded by `seed` and the pass count (not resumable).
        buffer_size: the most elements held for shuffling at once.
    """
    buffer = max(1, min(size, buffer_size))
    if step is None:
        return ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if size <= buffer_size:
        def one_pass(key):
            return ds.batch(max(size, 1)).flat_map(lambda *c: _permuted(key, size, c))
    else:
        def one_pass(key):
            return _buffer_shuffled(ds, buffer, key)
    return pass_key(seed, step).flat_map(one_pass).apply(
        tf.data.experimental.assert_cardinality(size))


def _permuted(key: tf.Tensor, size: int, components: tuple) -> tf.data.Dataset:
    """A batch of all elements, permuted statelessly by `key`, as a dataset again.

    A stateless permutation keeps tensors out of the op seeds, which TF's seed
    handling cannot take symbolically.
    """
    order = tf.random.experimental.stateless_shuffle(tf.range(size), seed=key)
    gathered = tf.nest.map_structure(lambda t: tf.gather(t, order), components)
    return tf.data.Dataset.from_tensor_slices(gathered if len(gathered) > 1 else gathered[0])


def _buffer_shuffled(ds: tf.data.Dataset, buffer: int, key: tf.Tensor) -> tf.data.Dataset:
    """`ds` through a shuffle buffer whose two seeds are drawn from `key` alone.

    `Dataset.shuffle` would pair its seed with the global seed; the op taken
    directly gets both seeds from `key`, and a fresh buffer per pass.
    """
    specs = tf.nest.flatten(ds.element_spec)
    if not all(isinstance(spec, tf.TensorSpec) for spec in specs):
        raise TypeError(f"shuffle buffers take dense tensors, got {ds.element_spec}")
    seeds = tf.random.stateless_uniform([2], seed=key, minval=None, maxval=None,
                                        dtype=tf.int64)
    variant = tf.raw_ops.ShuffleDatasetV3(
        input_dataset=tf.data.experimental.to_variant(ds),
        buffer_size=tf.constant(buffer, tf.int64), seed=seeds[0], seed2=seeds[1],
        seed_generator=tf.raw_ops.DummySeedGenerator(),
        output_types=[spec.dtype for spec in specs],
        output_shapes=[spec.shape for spec in specs], reshuffle_each_iteration=False)
    return tf.data.experimental.from_variant(variant, ds.element_spec)


def shuffled_files(files: Sequence[str], seed: int,
                   step: tf.Variable | None = None) -> tf.data.Dataset:
    """The file names in a new order every pass, keyed like :func:`shuffle_each_epoch`.

    For sources larger than the shuffle buffer: elements then move between
    shards, not only within a buffer's reach.

    Example:
        read_records(files, open_shards=8, file_order=shuffled_files(files, 42, step))
    """
    names = tf.constant(list(files), tf.string)
    if step is None:
        return tf.data.Dataset.from_tensor_slices(names).shuffle(
            len(files), seed=seed, reshuffle_each_iteration=True)

    def one_pass(key):
        salted = tf.random.experimental.stateless_fold_in(key, _FILES_SALT)
        order = tf.random.experimental.stateless_shuffle(tf.range(len(files)), seed=salted)
        return tf.data.Dataset.from_tensor_slices(tf.gather(names, order))

    return pass_key(seed, step).flat_map(one_pass)
