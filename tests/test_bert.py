from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mmentail.text.bert import BertConfig, build_bert_encoder


def _inputs(ids, mask):
    ids = tf.constant(ids, tf.int32)
    return {"input_word_ids": ids, "input_mask": tf.constant(mask, tf.int32),
            "input_type_ids": tf.zeros_like(ids)}


def test_output_shapes_and_layers():
    config = BertConfig(vocab_size=50, hidden_size=16, num_layers=3, num_heads=4,
                        intermediate_size=32)
    outputs = build_bert_encoder(config)(_inputs([[2, 5, 6, 3]], [[1, 1, 1, 1]]))
    assert outputs["sequence_output"].shape == (1, 4, 16)
    assert outputs["pooled_output"].shape == (1, 16)
    assert len(outputs["encoder_outputs"]) == 3
    np.testing.assert_array_equal(outputs["default"], outputs["pooled_output"])
    np.testing.assert_array_equal(outputs["encoder_outputs"][-1], outputs["sequence_output"])


def test_padding_does_not_change_real_tokens():
    config = BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2,
                        intermediate_size=32)
    encoder = build_bert_encoder(config)
    short = encoder(_inputs([[2, 5, 6, 3]], [[1, 1, 1, 1]]))["sequence_output"]
    padded = encoder(_inputs([[2, 5, 6, 3, 9, 9]], [[1, 1, 1, 1, 0, 0]]))["sequence_output"]
    np.testing.assert_allclose(short[0], padded[0, :4], atol=1e-5)


def test_heads_must_divide_hidden_size():
    with pytest.raises(ValueError, match="not divisible"):
        BertConfig(vocab_size=10, hidden_size=10, num_heads=3)


def test_hidden_act_selects_exact_or_tanh_gelu():
    inputs = _inputs([[2, 5, 6, 3]], [[1, 1, 1, 1]])
    outputs = {}
    for act in ("gelu", "gelu_new"):
        tf_keras.utils.set_random_seed(0)
        config = BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                            intermediate_size=32, hidden_act=act)
        outputs[act] = build_bert_encoder(config)(inputs)["sequence_output"].numpy()
    difference = np.abs(outputs["gelu"] - outputs["gelu_new"]).max()
    assert 0 < difference < 1e-2
    with pytest.raises(ValueError, match="hidden_act 'relu' is not supported"):
        BertConfig(vocab_size=10, hidden_act="relu")
