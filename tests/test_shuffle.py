from __future__ import annotations

import tensorflow as tf

from mmentail.pipeline.shuffle import shuffle_each_epoch, shuffled_files


def test_epoch_order_follows_the_step_counter_not_the_pass_count():
    def orders(step, values):
        ds = shuffle_each_epoch(tf.data.Dataset.range(32), 32, seed=7, step=step)
        assert ds.cardinality() == 32
        result = []
        for value in values:
            step.assign(value)
            result.append(list(ds.as_numpy_iterator()))
        return result

    first, second, again = orders(tf.Variable(0, dtype=tf.int64), [0, 10, 10])
    assert sorted(first) == list(range(32)) and first != second and second == again
    # A fresh pipeline (a resumed process) whose counter is restored to 10
    # starts where the uninterrupted one was.
    assert orders(tf.Variable(0, dtype=tf.int64), [10]) == [second]


def _passes(ds, step, values):
    """One epoch's order per step value, the counter set before each pass."""
    result = []
    for value in values:
        step.assign(value)
        result.append(list(ds.as_numpy_iterator()))
    return result


def test_a_buffer_smaller_than_the_data_streams_every_element_once_per_epoch():
    step = tf.Variable(0, dtype=tf.int64)
    ds = shuffle_each_epoch(tf.data.Dataset.range(200), 200, seed=7, step=step, buffer_size=16)
    assert ds.cardinality() == 200
    first, second, again = _passes(ds, step, [0, 13, 13])
    assert sorted(first) == sorted(second) == list(range(200))
    assert first != second and second == again and first != list(range(200))
    # A buffer of 16 moves an element at most 15 places ahead of its input position.
    assert all(position >= value - 15 for position, value in enumerate(first))


def test_a_resumed_run_sees_the_uninterrupted_order_with_a_bounded_buffer():
    def build():
        step = tf.Variable(0, dtype=tf.int64)
        return step, shuffle_each_epoch(tf.data.Dataset.range(100), 100, seed=3, step=step,
                                        buffer_size=10)

    step, ds = build()
    uninterrupted = _passes(ds, step, [0, 25])
    # A fresh process, its counter restored to pass 2's value; another global
    # seed does not change the order (both buffer seeds come from the key).
    tf.random.set_seed(1234)
    try:
        resumed_step, resumed = build()
        assert _passes(resumed, resumed_step, [25]) == [uninterrupted[1]]
    finally:
        tf.random.set_seed(None)


def test_indices_and_rows_get_the_same_order():
    """The feature cache shuffles row indices where the pipeline shuffles rows."""
    step = tf.Variable(5, dtype=tf.int64)
    rows = tf.data.Dataset.range(60).map(lambda i: {"row": i, "twice": tf.fill([2], 2 * i)})
    for buffer in (8, 4096):
        indices = list(shuffle_each_epoch(tf.data.Dataset.range(60), 60, 9, step,
                                          buffer).as_numpy_iterator())
        ordered = [r["row"] for r in shuffle_each_epoch(rows, 60, 9, step, buffer)
                   .as_numpy_iterator()]
        assert indices == ordered


def test_shard_order_is_keyed_on_the_step():
    files = [f"shard-{i}" for i in range(12)]
    step = tf.Variable(0, dtype=tf.int64)
    ds = shuffled_files(files, seed=7, step=step)
    first, second, again = _passes(ds, step, [0, 4, 0])
    assert sorted(first) == sorted(second) == sorted(f.encode() for f in files)
    assert first != second and first == again
