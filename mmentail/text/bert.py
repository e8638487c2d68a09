"""A BERT encoder in tf_keras with the TF Hub encoder interface.

One implementation serves two purposes: a tiny randomly initialised encoder for
offline demos and tests, and the target architecture that pretrained BERT-family
checkpoints are converted into (see :mod:`mmentail.convert`). The layer and
weight names follow the original BERT layout so a checkpoint maps onto them
tensor by tensor.

Example:
    config = BertConfig(vocab_size=100, hidden_size=32, num_layers=1,
                        num_heads=2, intermediate_size=64)
    encoder = build_bert_encoder(config)
    outputs = encoder({"input_word_ids": tf.ones([1, 8], tf.int32),
                       "input_mask": tf.ones([1, 8], tf.int32),
                       "input_type_ids": tf.zeros([1, 8], tf.int32)})
    outputs["pooled_output"].shape
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import tensorflow as tf
import tf_keras

from mmentail.rng import SeededDropout

BERT_INPUT_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
# BERT's `hidden_act` values this encoder implements -> GELU's tanh approximation or not.
GELU_APPROXIMATE = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder; field names match BERT's `config.json` where they can."""

    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    def __post_init__(self):
        if self.hidden_act not in GELU_APPROXIMATE:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; "
                             f"choose one of {sorted(GELU_APPROXIMATE)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2))


def _dense(units: int, name: str, activation=None) -> tf_keras.layers.Dense:
    return tf_keras.layers.Dense(
        units, activation=activation, name=name,
        kernel_initializer=tf_keras.initializers.TruncatedNormal(stddev=0.02))


class BertEmbeddings(tf_keras.layers.Layer):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        def table(name, rows):
            return self.add_weight(
                name, [rows, config.hidden_size],
                initializer=tf_keras.initializers.TruncatedNormal(stddev=0.02))

        self.word_embeddings = table("word_embeddings", config.vocab_size)
        self.position_embeddings = table("position_embeddings", config.max_position_embeddings)
        self.token_type_embeddings = table("token_type_embeddings", config.type_vocab_size)
        self.layer_norm = tf_keras.layers.LayerNormalization(
            epsilon=config.layer_norm_eps, name="layer_norm")
        self.dropout = SeededDropout(config.dropout_rate, seed, f"bert/{self.name}",
                                     name="dropout")

    def call(self, word_ids, type_ids, training=None):
        seq_length = tf.shape(word_ids)[1]
        x = (tf.gather(self.word_embeddings, word_ids)
             + self.position_embeddings[tf.newaxis, :seq_length]
             + tf.gather(self.token_type_embeddings, type_ids))
        return self.dropout(self.layer_norm(x), training=training)


class TransformerBlock(tf_keras.layers.Layer):
    """One post-LayerNorm BERT layer: self-attention, then a GELU feed-forward."""

    def __init__(self, config: BertConfig, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.num_heads = config.num_heads
        self.head_size = config.hidden_size // config.num_heads
        h = config.hidden_size
        self.query = _dense(h, "query")
        self.key = _dense(h, "key")
        self.value = _dense(h, "value")
        self.attention_output = _dense(h, "attention_output")
        self.attention_layer_norm = tf_keras.layers.LayerNormalization(
            epsilon=config.layer_norm_eps, name="attention_layer_norm")
        self.intermediate = _dense(config.intermediate_size, "intermediate")
        self.output_dense = _dense(h, "output")
        self.output_layer_norm = tf_keras.layers.LayerNormalization(
            epsilon=config.layer_norm_eps, name="output_layer_norm")
        self.dropout = SeededDropout(config.dropout_rate, seed, f"bert/{self.name}",
                                     name="dropout")

    def _split_heads(self, x):
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [batch, length, self.num_heads, self.head_size])
        return tf.transpose(x, [0, 2, 1, 3])

    def call(self, x, attention_bias, training=None):
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(x))
        v = self._split_heads(self.value(x))
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(self.head_size)
        probs = tf.nn.softmax(scores + tf.cast(attention_bias, scores.dtype), axis=-1)
        probs = self.dropout(probs, training=training)
        context = tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3])
        context = tf.reshape(context, tf.shape(x))
        attended = self.attention_layer_norm(
            x + self.dropout(self.attention_output(context), training=training))
        hidden = tf_keras.activations.gelu(
            self.intermediate(attended), approximate=GELU_APPROXIMATE[self.config.hidden_act])
        return self.output_layer_norm(
            attended + self.dropout(self.output_dense(hidden), training=training))


def build_bert_encoder(config: BertConfig, name: str = "bert_encoder",
                       seed: int = 0) -> tf_keras.Model:
    """Builds a BERT encoder taking and returning the TF Hub BERT dicts.

    Its dropout draws from generators keyed on `seed` (:mod:`mmentail.rng`):
    saved as a hub module, their states are variables of the module, which the
    checkpoints of a model using it through `hub.KerasLayer` hold.

    Inputs: `input_word_ids`, `input_mask`, `input_type_ids`, int32 [batch, seq].
    Outputs: `sequence_output` [batch, seq, hidden], `pooled_output` and
    `default` [batch, hidden] (tanh of a dense layer on the first token), and
    `encoder_outputs`, the list of every layer's sequence output.
    """
    inputs = {key: tf_keras.Input(shape=(None,), dtype=tf.int32, name=key)
              for key in BERT_INPUT_KEYS}
    x = BertEmbeddings(config, seed, name="embeddings")(
        inputs["input_word_ids"], inputs["input_type_ids"])
    mask = tf.cast(inputs["input_mask"], tf.float32)
    attention_bias = (1.0 - mask[:, tf.newaxis, tf.newaxis, :]) * -10000.0
    encoder_outputs = []
    for i in range(config.num_layers):
        x = TransformerBlock(config, seed, name=f"transformer_layer_{i}")(x, attention_bias)
        encoder_outputs.append(x)
    pooled = _dense(config.hidden_size, "pooler", activation="tanh")(x[:, 0, :])
    outputs = {"sequence_output": x, "pooled_output": pooled, "default": pooled,
               "encoder_outputs": encoder_outputs}
    return tf_keras.Model(inputs, outputs, name=name)


def save_hub_encoder(encoder: tf_keras.Model, export_dir: str | Path) -> None:
    """Saves `encoder` as a Reusable SavedModel that `hub.KerasLayer` loads.

    The restored object has `__call__(inputs, training)`, `variables`,
    `trainable_variables` and `regularization_losses`, like TF Hub's BERT encoders.
    """
    tf_keras.models.save_model(encoder, str(export_dir), include_optimizer=False,
                               save_format="tf")
