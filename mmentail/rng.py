"""Random draws whose state a checkpoint holds, so a resumed run draws what an
uninterrupted one would.

tf_keras's `Dropout` draws from stateful random ops whose position in their
stream lives in the op kernels, not in any variable: a run restored from a
checkpoint in a new process starts those streams afresh. Here each random
layer owns a Philox `tf.random.Generator` (key: a seed; counter: started at a
per-stream offset) as an attribute, so its state variable is part of the
layer's object graph: saved and restored by `BackupAndRestore`,
`ModelCheckpoint` and SavedModels (and, inside a hub module, by the checkpoints
of a model that uses it through `hub.KerasLayer`). The state is not one of the
layer's `weights`: functional models number their layers that have weights in
their checkpoints, so checkpoints written before a dropout layer drew from a
generator still load. Under a `tf.distribute` strategy each replica draws its
own numbers from the same state.

Example:
    dropout = SeededDropout(0.1, seed=42, stream="head/dropout")
    y = dropout(x, training=True)  # advances dropout.generator.state
"""

from __future__ import annotations

import zlib

import tensorflow as tf
import tf_keras


def stream_generator(seed: int, stream: str) -> tf.random.Generator:
    """A Philox generator keyed on `seed`, its counter started at `stream`'s offset.

    Create it in a layer's `build` and keep it as an attribute of the layer,
    which makes its state part of the layer's checkpoints. Streams of one seed
    start 2**64 draws apart (the counter's high word is a CRC-32 of `stream`),
    so the layers of one model draw independently.

    Args:
        seed: the generator's key (e.g. the run's seed).
        stream: a name for these draws, unique within the model, fixed (not an
            automatic layer name, which depends on what was built before).
    """
    return tf.random.Generator.from_key_counter(seed, [0, zlib.crc32(stream.encode())],
                                                tf.random.Algorithm.PHILOX)


class SeededDropout(tf_keras.layers.Layer):
    """`tf_keras.layers.Dropout` drawing from a :func:`stream_generator`.

    Args:
        rate: share of the inputs set to zero in training (the rest scaled by
            1 / (1 - rate)).
        seed: the generator's key.
        stream: this layer's stream name (see :func:`stream_generator`).
    """

    def __init__(self, rate: float, seed: int = 0, stream: str = "dropout", **kwargs):
        super().__init__(**kwargs)
        if not 0 <= rate < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate, self.seed, self.stream = rate, seed, stream
        self.supports_masking = True

    def build(self, input_shape):
        self.generator = stream_generator(self.seed, self.stream)
        super().build(input_shape)

    def call(self, inputs, training=None):
        if not training or self.rate == 0:
            return tf.identity(inputs)
        return tf.nn.experimental.general_dropout(inputs, self.rate,
                                                  uniform_sampler=self.generator.uniform)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed,
                "stream": self.stream}
