from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
from safetensors.numpy import save_file
from scipy.special import erf

from mmentail.text.convert import (
    ConversionError,
    convert_checkpoint,
    load_encoder,
    main,
    read_lower_case,
)

TINY = {"model_type": "bert", "architectures": ["BertForPreTraining"], "vocab_size": 24,
        "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 32, "max_position_embeddings": 20, "type_vocab_size": 2,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "layer_norm_eps": 1e-12}
WORDS = ["the", "cat", "dog", "sat", "ran", "on", "mat", "a", "red", "blue", "##s", "big",
         "small", "hill", "road", "fast", "slow", "is", "and"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def _random_tensors(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """A BertForPreTraining-style state dict ('bert.' prefix, a head, position_ids)."""
    rng = np.random.default_rng(seed)
    h, inner = config["hidden_size"], config["intermediate_size"]

    def normal(*shape, scale=0.3):
        return rng.normal(0, scale, shape).astype(np.float32)

    tensors = {"embeddings.word_embeddings.weight": normal(config["vocab_size"], h),
               "embeddings.position_embeddings.weight":
                   normal(config["max_position_embeddings"], h),
               "embeddings.token_type_embeddings.weight": normal(config["type_vocab_size"], h),
               "embeddings.LayerNorm.weight": 1 + normal(h, scale=0.1),
               "embeddings.LayerNorm.bias": normal(h, scale=0.1),
               "pooler.dense.weight": normal(h, h), "pooler.dense.bias": normal(h)}
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name, (rows, cols) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                                   "attention.self.value": (h, h),
                                   "attention.output.dense": (h, h),
                                   "intermediate.dense": (inner, h),
                                   "output.dense": (h, inner)}.items():
            tensors[p + name + ".weight"] = normal(rows, cols)
            tensors[p + name + ".bias"] = normal(rows, scale=0.1)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            tensors[p + name + ".weight"] = 1 + normal(h, scale=0.1)
            tensors[p + name + ".bias"] = normal(h, scale=0.1)
    state = {"bert." + name: tensor for name, tensor in tensors.items()}
    state["bert.embeddings.position_ids"] = np.arange(
        config["max_position_embeddings"], dtype=np.int64)[None]
    state["cls.predictions.bias"] = normal(config["vocab_size"])
    return state


def _write_checkpoint(path, config=TINY, tensors=None, lower_case=True):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB))
    (path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower_case}))
    save_file(_random_tensors(config) if tensors is None else tensors,
              str(path / "model.safetensors"))
    return path


def reference_bert(t: dict[str, np.ndarray], config: dict, ids, mask, type_ids):
    """BERT's forward pass from its equations, in float64 numpy (keys masked with -inf)."""
    t = {k.removeprefix("bert."): v.astype(np.float64) for k, v in t.items()
         if k.startswith("bert.") and not k.endswith("position_ids")}
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]

    def linear(x, name):
        return x @ t[name + ".weight"].T + t[name + ".bias"]

    def layer_norm(x, name):
        centred = x - x.mean(-1, keepdims=True)
        normed = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + eps)
        return normed * t[name + ".weight"] + t[name + ".bias"]

    def split(x):  # [b, n, h] -> [b, heads, n, h / heads]
        b, n, h = x.shape
        return x.reshape(b, n, heads, h // heads).transpose(0, 2, 1, 3)

    ids, mask, type_ids = (np.asarray(a) for a in (ids, mask, type_ids))
    x = (t["embeddings.word_embeddings.weight"][ids]
         + t["embeddings.position_embeddings.weight"][np.arange(ids.shape[1])]
         + t["embeddings.token_type_embeddings.weight"][type_ids])
    x = layer_norm(x, "embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (split(linear(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
        scores = np.where(mask[:, None, None, :] == 1, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = layer_norm(x + linear(context, p + "attention.output.dense"),
                       p + "attention.output.LayerNorm")
        inner = linear(x, p + "intermediate.dense")
        inner = 0.5 * inner * (1 + erf(inner / np.sqrt(2)))
        x = layer_norm(x + linear(inner, p + "output.dense"), p + "output.LayerNorm")
    pooled = np.tanh(linear(x[:, 0], "pooler.dense"))
    return x, pooled


@pytest.fixture(scope="module")
def converted_and_logged(tmp_path_factory):
    """A tiny checkpoint converted once, and the log lines the conversion wrote."""
    root = tmp_path_factory.mktemp("convert")
    checkpoint = _write_checkpoint(root / "checkpoint")
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("mmentail")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        modules = convert_checkpoint(checkpoint, root / "out", default_seq_length=12)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return (checkpoint, modules), lines


@pytest.fixture(scope="module")
def tiny_converted(converted_and_logged):
    return converted_and_logged[0]


def test_conversion_says_each_stage_as_it_starts(converted_and_logged):
    (checkpoint, _), lines = converted_and_logged
    stages = [line.split(": ", 1)[1] for line in lines
              if line.startswith(f"converting {checkpoint}: ")]
    assert stages == ["reading and checking its weights", "writing the preprocessing model",
                      "saving the 2-layer encoder (the longest stage)"]


def test_converted_encoder_matches_reference_forward_pass(tiny_converted):
    checkpoint, modules = tiny_converted
    ids = np.array([[2, 5, 6, 8, 3, 9, 10, 3], [2, 7, 3, 11, 3, 0, 0, 0]], np.int32)
    mask = (ids != 0).astype(np.int32)
    type_ids = np.array([[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0]], np.int32)
    inputs = {"input_word_ids": tf.constant(ids), "input_mask": tf.constant(mask),
              "input_type_ids": tf.constant(type_ids)}
    layer = hub.KerasLayer(str(modules.encoder_dir), trainable=True)
    outputs = layer(inputs, training=False)
    from safetensors.numpy import load_file

    sequence, pooled = reference_bert(load_file(str(checkpoint / "model.safetensors")), TINY,
                                      ids, mask, type_ids)
    real = mask.astype(bool)
    diff = np.abs(outputs["sequence_output"].numpy() - sequence)
    print(f"max abs diff: sequence_output {diff[real].max():.2e} (padding {diff.max():.2e}), "
          f"pooled_output {np.abs(outputs['pooled_output'].numpy() - pooled).max():.2e}")
    np.testing.assert_allclose(outputs["sequence_output"].numpy()[real], sequence[real], atol=1e-4)
    np.testing.assert_allclose(outputs["pooled_output"].numpy(), pooled, atol=1e-4)
    np.testing.assert_allclose(outputs["default"].numpy(), pooled, atol=1e-4)
    assert len(outputs["encoder_outputs"]) == TINY["num_hidden_layers"]
    np.testing.assert_array_equal(outputs["encoder_outputs"][-1], outputs["sequence_output"])
    # Dropout is off at inference and on in training.
    np.testing.assert_array_equal(layer(inputs, training=False)["sequence_output"],
                                  outputs["sequence_output"])
    trained = layer(inputs, training=True)["sequence_output"].numpy()
    assert np.abs(trained - outputs["sequence_output"].numpy()).max() > 1e-2
    # Every weight is trainable: 5 embedding tensors, 16 per layer, 2 for the pooler.
    assert len(layer.trainable_variables) == 5 + 16 * TINY["num_hidden_layers"] + 2


def test_converted_preprocessor_uses_vocab_and_casing(tiny_converted):
    _, modules = tiny_converted
    pre = hub.load(str(modules.preprocess_dir))
    packed = pre(tf.constant(["The CAT sat on a Hill"]))
    ids = packed["input_word_ids"].numpy()[0]
    assert ids.shape == (12,)
    assert [VOCAB[i] for i in ids[:8]] == ["[CLS]", "the", "cat", "sat", "on", "a", "hill",
                                           "[SEP]"]
    assert pre.lower_case.numpy()


def test_casing_comes_from_tokenizer_config_else_vocab(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nthe\nThe\n")
    assert read_lower_case(tmp_path) is False
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nthe\n")
    assert read_lower_case(tmp_path) is True
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    assert read_lower_case(tmp_path) is False


@pytest.mark.parametrize("change, message", [
    (lambda c, t: t.update({"bert.encoder.layer.1.intermediate.dense.weight":
                            np.zeros((33, 16), np.float32)}),
     "tensor 'bert.encoder.layer.1.intermediate.dense.weight' has shape [33, 16]"),
    (lambda c, t: c.update(model_type="roberta"), "model_type 'roberta'"),
    (lambda c, t: c.update(hidden_act="swish"), "hidden_act 'swish'"),
    (lambda c, t: c.update(position_embedding_type="relative_key"), "position_embedding_type"),
    (lambda c, t: c.update(num_hidden_layers=1), "bert.encoder.layer.1.attention"),
    (lambda c, t: t.pop("bert.pooler.dense.weight"), "bert.pooler.dense.weight"),
    (lambda c, t: [t.pop(k) for k in list(t) if "word_embeddings" in k],
     "embeddings.word_embeddings.weight"),
])
def test_bad_checkpoints_fail_naming_the_problem(tmp_path, change, message):
    config, tensors = dict(TINY), _random_tensors(TINY)
    change(config, tensors)
    checkpoint = _write_checkpoint(tmp_path, config, tensors)
    with pytest.raises(ConversionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_encoder(checkpoint)


def test_torch_pickle_only_says_how_to_convert(tmp_path):
    checkpoint = _write_checkpoint(tmp_path)
    (checkpoint / "model.safetensors").rename(checkpoint / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="cannot be read without torch.*safetensors"):
        load_encoder(checkpoint)


def test_cli_reports_a_bad_checkpoint_and_writes_nothing(tmp_path, capsys):
    checkpoint = _write_checkpoint(tmp_path / "checkpoint", {**TINY, "model_type": "roberta"})
    assert main([str(checkpoint), str(tmp_path / "out")]) == 1
    assert "model_type 'roberta'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
