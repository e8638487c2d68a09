from __future__ import annotations

import tensorflow as tf

from mmentail.pipeline.shuffle import shuffle_each_epoch


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
