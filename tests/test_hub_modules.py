from __future__ import annotations

import pytest
import tensorflow as tf
import tensorflow_hub as hub

from mmentail.text.hub_modules import (
    build_preprocessor,
    learn_wordpiece_vocab,
    preprocessor_vocab,
    read_vocab,
    resolve_handle,
    write_vocab,
)


def test_resolve_handle_keeps_urls_and_checks_paths(tmp_path, demo):
    url = "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3"
    assert resolve_handle(url) == url
    assert resolve_handle(str(demo.encoder_dir)) == str(demo.encoder_dir.resolve())
    assert resolve_handle(f"file://{demo.encoder_dir}") == str(demo.encoder_dir.resolve())
    with pytest.raises(FileNotFoundError, match="holds no SavedModel"):
        resolve_handle(str(tmp_path))


def test_learned_vocab_has_special_tokens_and_covers_text():
    vocab = learn_wordpiece_vocab(["the flood warning", "the election count"] * 10,
                                  vocab_size=100)
    assert vocab[:4] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    assert "flood" in vocab and "election" in vocab


def test_preprocessor_interface_matches_tf_hub(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "dog", "##s",
             "!"]
    write_vocab(vocab, tmp_path / "vocab.txt")
    assert read_vocab(tmp_path / "vocab.txt") == vocab
    build_preprocessor(tmp_path / "vocab.txt", tmp_path / "pre", default_seq_length=16)
    pre = tf.saved_model.load(str(tmp_path / "pre"))

    tokens = pre.tokenize(tf.constant(["The cats SAT!", "zebra"]))
    assert isinstance(tokens, tf.RaggedTensor) and tokens.ragged_rank == 2
    assert tokens.to_list() == [[[5], [6, 9], [7], [10]], [[1]]]  # lower-cased, ##s, [UNK]

    packed = pre.bert_pack_inputs([tokens, pre.tokenize(tf.constant(["dog", "the dog"]))],
                                  seq_length=8)
    # 5 content slots: round-robin gives "dog" its one piece, the first text the other 4.
    assert packed["input_word_ids"].numpy().tolist()[0] == [2, 5, 6, 9, 7, 3, 8, 3]
    assert packed["input_type_ids"].numpy().tolist()[0] == [0, 0, 0, 0, 0, 0, 1, 1]
    assert packed["input_mask"].numpy().tolist()[1] == [1, 1, 1, 1, 1, 1, 0, 0]

    long = pre.tokenize(tf.constant(["the cat sat the cat sat the cat sat"]))
    trimmed = pre.bert_pack_inputs([long, long], seq_length=8)["input_word_ids"].numpy()[0]
    # Round-robin trimming: 3 pieces from the first segment, 2 from the second.
    assert trimmed.tolist() == [2, 5, 6, 7, 3, 5, 6, 3]

    single = pre(tf.constant(["the dog"]))
    assert single["input_word_ids"].shape == (1, 16)
    assert "serving_default" in pre.signatures
    assert preprocessor_vocab(str(tmp_path / "pre")) == vocab


def test_random_encoder_follows_reusable_savedmodel_api(demo, preprocessor):
    loaded = hub.load(str(demo.encoder_dir))
    assert len(loaded.trainable_variables) > 0 and len(loaded.variables) >= len(
        loaded.trainable_variables)
    inputs = preprocessor(tf.constant(["the flood", "the election count"]))
    outputs = loaded(inputs, training=False)
    assert set(outputs) >= {"pooled_output", "sequence_output", "encoder_outputs", "default"}
    assert outputs["sequence_output"].shape[:2] == inputs["input_word_ids"].shape
    # Dropout is active only in training mode.
    again = loaded(inputs, training=False)["sequence_output"]
    assert tf.reduce_max(tf.abs(outputs["sequence_output"] - again)) == 0
    trained = loaded(inputs, training=True)["sequence_output"]
    assert tf.reduce_max(tf.abs(outputs["sequence_output"] - trained)) > 0

    layer = hub.KerasLayer(str(demo.encoder_dir), trainable=True)
    pooled = layer(inputs)["pooled_output"]
    assert pooled.shape[0] == 2 and len(layer.trainable_weights) > 0
