"""Pretrained BERT checkpoints (Hugging Face layout) -> TF Hub-format SavedModels.

Machines that cannot reach tfhub.dev often have BERT weights on disk in the
common layout: `config.json`, `model.safetensors` and `vocab.txt`. This module
reads them with `safetensors` alone (no torch, no transformers), loads every
tensor into :func:`mmentail.bert.build_bert_encoder`'s layers, and writes the
two SavedModels `mmentail-train` takes as `--preprocess-handle` and
`--encoder-handle`. Every tensor's name and shape is checked, so a checkpoint of
another architecture fails naming the tensor instead of converting to garbage.

Example:
    modules = convert_checkpoint("all-MiniLM-L6-v2/", "converted/minilm")
    modules.encoder_dir

    or from a shell: `mmentail-convert-bert all-MiniLM-L6-v2/ converted/minilm`
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tf_keras

from mmentail.cli import run_command
from mmentail.errors import MmentailError
from mmentail.io_utils import atomic_directory, atomic_write_json
from mmentail.progress import Progress
from mmentail.text.bert import BertConfig, build_bert_encoder, save_hub_encoder
from mmentail.text.hub_modules import build_preprocessor, read_vocab

log = logging.getLogger(__name__)

# Buffers that checkpoints carry but that are no weights (recomputed by the encoder).
_IGNORED = re.compile(r"(^|\.)embeddings\.position_ids$")
# Task heads stored beside the encoder (BertForPreTraining, ...), not part of it.
_HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.")


class ConversionError(MmentailError, ValueError):
    """The checkpoint is not a BERT encoder this converter can map, and why."""


@dataclasses.dataclass(frozen=True)
class ConvertedModules:
    """The two TF Hub-format SavedModels written by :func:`convert_checkpoint`."""

    preprocess_dir: Path
    encoder_dir: Path


def read_bert_config(checkpoint_dir: str | Path) -> BertConfig:
    """The :class:`BertConfig` of a checkpoint's `config.json`.

    Raises:
        ConversionError: not a BERT model, or a variant this encoder does not
            implement (relative positions, decoder, unsupported activation).
    """
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{path} not found: a checkpoint directory needs config.json")
    raw = json.loads(path.read_text())
    model_type = raw.get("model_type")
    if model_type != "bert":
        raise ConversionError(
            f"{path}: model_type {model_type!r} (architectures "
            f"{raw.get('architectures')}) is not supported; only 'bert' checkpoints convert")
    unsupported = {
        "position_embedding_type": (raw.get("position_embedding_type", "absolute"), "absolute"),
        "is_decoder": (raw.get("is_decoder", False), False),
        "add_cross_attention": (raw.get("add_cross_attention", False), False),
    }
    for key, (value, expected) in unsupported.items():
        if value != expected:
            raise ConversionError(f"{path}: {key}={value!r} is not supported (needs {expected!r})")
    try:
        return BertConfig(
            vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
            num_layers=raw["num_hidden_layers"], num_heads=raw["num_attention_heads"],
            intermediate_size=raw["intermediate_size"],
            max_position_embeddings=raw["max_position_embeddings"],
            type_vocab_size=raw.get("type_vocab_size", 2),
            dropout_rate=raw.get("hidden_dropout_prob", 0.1),
            layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
            hidden_act=raw.get("hidden_act", "gelu"))
    except KeyError as e:
        raise ConversionError(f"{path} lacks the key {e.args[0]!r}") from None
    except ValueError as e:  # an unsupported activation, heads that do not divide the width
        raise ConversionError(f"{path}: {e}") from None


def read_lower_case(checkpoint_dir: str | Path) -> bool:
    """The checkpoint's casing: `do_lower_case` of tokenizer_config.json, else the vocab's.

    Without a tokenizer config, a vocab with no upper-case letters outside the
    `[SPECIAL]` tokens is taken as uncased.
    """
    tokenizer_config = Path(checkpoint_dir) / "tokenizer_config.json"
    if tokenizer_config.is_file():
        value = json.loads(tokenizer_config.read_text()).get("do_lower_case")
        if value is not None:
            return bool(value)
    vocab = read_vocab(Path(checkpoint_dir) / "vocab.txt")
    return not any(token.lower() != token for token in vocab
                   if not (token.startswith("[") and token.endswith("]")))


def load_tensors(checkpoint_dir: str | Path) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors`, as float32 numpy arrays by name.

    Raises:
        ConversionError: no `model.safetensors`; for a `pytorch_model.bin` the
            message says how to convert it (reading it needs torch).
    """
    from safetensors.numpy import load_file

    checkpoint_dir = Path(checkpoint_dir)
    path = checkpoint_dir / "model.safetensors"
    if not path.is_file():
        if (checkpoint_dir / "pytorch_model.bin").is_file():
            raise ConversionError(
                f"{checkpoint_dir / 'pytorch_model.bin'} is a torch pickle, which cannot be "
                "read without torch; convert it to model.safetensors once where torch is "
                "installed: python -c \"import torch; from safetensors.torch import save_file; "
                "state = torch.load('pytorch_model.bin', map_location='cpu'); "
                "save_file({k: v.contiguous() for k, v in state.items()}, "
                "'model.safetensors')\"")
        raise ConversionError(f"{path} not found: a checkpoint directory needs "
                              "model.safetensors")
    return {name: tensor for name, tensor in load_file(str(path)).items()
            if not _IGNORED.search(name)}


def _encoder_prefix(tensors: dict[str, np.ndarray]) -> str:
    """'' for a bare BertModel, 'bert.' for models that wrap it (BertForPreTraining...)."""
    for prefix in ("", "bert."):
        if f"{prefix}embeddings.word_embeddings.weight" in tensors:
            return prefix
    raise ConversionError("no tensor 'embeddings.word_embeddings.weight' (nor "
                          "'bert.embeddings.word_embeddings.weight'): not a BERT checkpoint")


def _weight_map(encoder: tf_keras.Model, config: BertConfig) -> dict[str, tuple[Any, bool]]:
    """Checkpoint tensor name -> (encoder variable, whether the tensor is transposed)."""
    def dense(name, layer):
        return {f"{name}.weight": (layer.kernel, True), f"{name}.bias": (layer.bias, False)}

    def norm(name, layer):
        return {f"{name}.weight": (layer.gamma, False), f"{name}.bias": (layer.beta, False)}

    embeddings = encoder.get_layer("embeddings")
    mapping = {
        "embeddings.word_embeddings.weight": (embeddings.word_embeddings, False),
        "embeddings.position_embeddings.weight": (embeddings.position_embeddings, False),
        "embeddings.token_type_embeddings.weight": (embeddings.token_type_embeddings, False),
        **norm("embeddings.LayerNorm", embeddings.layer_norm),
        **dense("pooler.dense", encoder.get_layer("pooler")),
    }
    for i in range(config.num_layers):
        block = encoder.get_layer(f"transformer_layer_{i}")
        hf = f"encoder.layer.{i}"
        mapping.update({
            **dense(f"{hf}.attention.self.query", block.query),
            **dense(f"{hf}.attention.self.key", block.key),
            **dense(f"{hf}.attention.self.value", block.value),
            **dense(f"{hf}.attention.output.dense", block.attention_output),
            **norm(f"{hf}.attention.output.LayerNorm", block.attention_layer_norm),
            **dense(f"{hf}.intermediate.dense", block.intermediate),
            **dense(f"{hf}.output.dense", block.output_dense),
            **norm(f"{hf}.output.LayerNorm", block.output_layer_norm),
        })
    return mapping


def load_encoder(checkpoint_dir: str | Path) -> tuple[tf_keras.Model, BertConfig]:
    """Builds the tf_keras BERT encoder of a checkpoint and loads its weights.

    Raises:
        ConversionError: naming the tensor that is missing, unexpected, or of
            a shape the config does not give.

    Example:
        encoder, config = load_encoder("bert-base-uncased/")
        config.num_layers, encoder.output["sequence_output"].shape
    """
    config = read_bert_config(checkpoint_dir)
    tensors = load_tensors(checkpoint_dir)
    prefix = _encoder_prefix(tensors)
    encoder = build_bert_encoder(config)
    mapping = {prefix + name: target for name, target in _weight_map(encoder, config).items()}
    missing = sorted(set(mapping) - set(tensors))
    if missing:
        raise ConversionError(f"checkpoint {checkpoint_dir} lacks the tensor(s) {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''} that a {config.num_layers}"
                              "-layer BERT encoder with a pooler needs")
    unexpected = sorted(name for name in set(tensors) - set(mapping)
                        if name.startswith(prefix) and not name.startswith(_HEAD_PREFIXES))
    if unexpected:
        raise ConversionError(f"checkpoint {checkpoint_dir} has tensor(s) {unexpected[:5]} that "
                              "are no part of a BERT encoder as config.json describes it "
                              "(another architecture, or num_hidden_layers too small?)")
    values = []
    for name, (variable, transposed) in mapping.items():
        tensor = tensors[name].T if transposed else tensors[name]
        if tuple(tensor.shape) != tuple(variable.shape):
            raise ConversionError(
                f"tensor {name!r} has shape {list(tensors[name].shape)} but config.json "
                f"(hidden_size {config.hidden_size}, intermediate_size "
                f"{config.intermediate_size}, vocab_size {config.vocab_size}) implies "
                f"{list(variable.shape)[::-1] if transposed else list(variable.shape)}")
        values.append((variable, tensor.astype(np.float32)))
    tf_keras.backend.batch_set_value(values)
    return encoder, config


def convert_checkpoint(checkpoint_dir: str | Path, output_dir: str | Path, *,
                       lower_case: bool | None = None,
                       default_seq_length: int = 128) -> ConvertedModules:
    """Writes `<output_dir>/preprocess` and `<output_dir>/encoder` from a BERT checkpoint.

    Args:
        checkpoint_dir: `config.json`, `model.safetensors`, `vocab.txt` and
            optionally `tokenizer_config.json` (for the casing).
        output_dir: where the two SavedModels go (each written atomically).
        lower_case: override the checkpoint's casing (see :func:`read_lower_case`).
        default_seq_length: sequence length of the preprocessor's default call.

    Returns:
        The two SavedModel directories, usable as hub handles.

    Example:
        modules = convert_checkpoint("bert-base-uncased/", "converted/bert")
        encoder = hub.KerasLayer(str(modules.encoder_dir), trainable=True)
    """
    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    vocab_file = checkpoint_dir / "vocab.txt"
    if not vocab_file.is_file():
        raise ConversionError(f"{vocab_file} not found: a checkpoint directory needs vocab.txt")
    # Three stages of unequal length: saving the encoder (tracing it) is most of it.
    progress = Progress("converting the checkpoint", 3, unit="stage")
    log.info("converting %s: reading and checking its weights", checkpoint_dir)
    encoder, config = load_encoder(checkpoint_dir)
    progress.add(1)
    vocab_size = len(read_vocab(vocab_file))
    if vocab_size > config.vocab_size:
        raise ConversionError(f"{vocab_file} has {vocab_size} tokens but the word embeddings "
                              f"only {config.vocab_size} rows")
    if lower_case is None:
        lower_case = read_lower_case(checkpoint_dir)
    modules = ConvertedModules(output_dir / "preprocess", output_dir / "encoder")
    log.info("converting %s: writing the preprocessing model", checkpoint_dir)
    build_preprocessor(vocab_file, modules.preprocess_dir, lower_case=lower_case,
                       default_seq_length=min(default_seq_length,
                                              config.max_position_embeddings))
    progress.add(1)
    log.info("converting %s: saving the %d-layer encoder (the longest stage)", checkpoint_dir,
             config.num_layers)
    with atomic_directory(modules.encoder_dir) as tmp:
        save_hub_encoder(encoder, tmp)
        config.to_json(tmp / "assets" / "bert_config.json")
    progress.add(1)
    atomic_write_json(output_dir / "conversion.json",
                      {"checkpoint": str(checkpoint_dir.resolve()), "lower_case": lower_case,
                       "bert_config": dataclasses.asdict(config)})
    log.info("converted %s (%d layers, hidden %d, lower_case=%s) into %s", checkpoint_dir,
             config.num_layers, config.hidden_size, lower_case, output_dir)
    return modules


def main(argv: Sequence[str] | None = None) -> int:
    """`mmentail-convert-bert CHECKPOINT_DIR OUTPUT_DIR [--lower-case|--no-lower-case]`."""
    parser = argparse.ArgumentParser(
        prog="mmentail-convert-bert",
        description="Convert a BERT checkpoint (config.json, model.safetensors, vocab.txt) "
                    "into TF Hub-format preprocessing and encoder SavedModels.")
    parser.add_argument("checkpoint_dir", help="folder with config.json, model.safetensors, "
                                               "vocab.txt")
    parser.add_argument("output_dir", help="writes OUTPUT_DIR/preprocess and OUTPUT_DIR/encoder")
    parser.add_argument("--lower-case", action=argparse.BooleanOptionalAction, default=None,
                        help="override the checkpoint's casing (default: tokenizer_config.json)")
    parser.add_argument("--seq-length", type=int, default=128,
                        help="sequence length of the preprocessor's default call")

    def convert(args: argparse.Namespace) -> int:
        modules = convert_checkpoint(args.checkpoint_dir, args.output_dir,
                                     lower_case=args.lower_case,
                                     default_seq_length=args.seq_length)
        print(f"--preprocess-handle {modules.preprocess_dir}\n"
              f"--encoder-handle {modules.encoder_dir}")
        return 0

    return run_command(parser, convert, argv)


if __name__ == "__main__":
    sys.exit(main())
