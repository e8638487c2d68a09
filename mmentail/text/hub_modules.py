"""TF Hub-format BERT modules built offline, and one resolver for all handles.

TF Hub's BERT preprocessing model exposes `tokenize` (strings -> ragged word
pieces), `bert_pack_inputs(segments, seq_length)` (ragged pieces -> the encoder's
three int32 tensors) and a default call. :func:`build_preprocessor` writes a
SavedModel with that interface from any WordPiece vocab file, so the same code
path runs against tfhub.dev handles, converted checkpoints and the demo modules.

Example:
    vocab = learn_wordpiece_vocab(["a cat sat", "a dog ran"], vocab_size=60)
    write_vocab(vocab, "/tmp/vocab.txt")
    build_preprocessor("/tmp/vocab.txt", "/tmp/preprocess")
    pre = tf.saved_model.load("/tmp/preprocess")
    pre(tf.constant(["a cat"]))["input_word_ids"].shape
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import tensorflow as tf
import tensorflow_text as tf_text
import tf_keras

from mmentail.errors import MissingFileError
from mmentail.io_utils import atomic_directory
from mmentail.text.bert import BertConfig, build_bert_encoder, save_hub_encoder

RESERVED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def resolve_handle(handle: str) -> str:
    """Returns a handle `hub.load` accepts: a URL unchanged, or a checked local path.

    Raises:
        MissingFileError: `handle` is neither a URL nor a directory holding a SavedModel.
    """
    if "://" in handle and not handle.startswith("file://"):
        return handle
    path = Path(handle.removeprefix("file://")).expanduser()
    if not (path / "saved_model.pb").is_file():
        raise MissingFileError(
            f"hub handle {handle!r} is not a URL and {path} holds no SavedModel "
            "(expected saved_model.pb)")
    return str(path.resolve())


def learn_wordpiece_vocab(texts: Iterable[str], vocab_size: int = 2000,
                          lower_case: bool = True) -> list[str]:
    """Learns a BERT WordPiece vocab from `texts` with tensorflow-text's learner."""
    from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset

    dataset = tf.data.Dataset.from_tensor_slices(list(texts)).batch(256)
    return bert_vocab_from_dataset.bert_vocab_from_dataset(
        dataset, vocab_size=vocab_size, reserved_tokens=list(RESERVED_TOKENS),
        bert_tokenizer_params={"lower_case": lower_case},
        learn_params={"upper_thresh": 100_000, "lower_thresh": 1, "num_iterations": 4})


def write_vocab(vocab: Sequence[str], path: str | Path) -> None:
    Path(path).write_text("".join(token + "\n" for token in vocab), encoding="utf-8")


def read_vocab(path: str | Path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines()


def preprocessor_vocab(handle: str) -> list[str]:
    """The WordPiece vocab of a BERT preprocessing model (URL or path), to read ids back.

    TF Hub's preprocessing models and :func:`build_preprocessor`'s keep it as
    `assets/vocab.txt`.
    """
    import tensorflow_hub as hub

    return read_vocab(Path(hub.resolve(resolve_handle(handle))) / "assets" / "vocab.txt")


class BertPreprocessor(tf.Module):
    """A TF Hub-style BERT preprocessing model over a WordPiece vocab file."""

    def __init__(self, vocab_file: str | Path, lower_case: bool = True,
                 default_seq_length: int = 128):
        super().__init__(name="bert_preprocess")
        vocab = read_vocab(vocab_file)
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in vocab]
        if missing:
            raise ValueError(f"vocab file {vocab_file} lacks the special tokens {missing}")
        self.vocab_file = tf.saved_model.Asset(str(vocab_file))
        self._table = tf.lookup.StaticVocabularyTable(
            tf.lookup.TextFileInitializer(
                self.vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER),
            num_oov_buckets=1)
        self._tokenizer = tf_text.BertTokenizer(
            self._table, lower_case=lower_case, token_out_type=tf.int32,
            unknown_token="[UNK]")
        self._cls_id = vocab.index("[CLS]")
        self._sep_id = vocab.index("[SEP]")
        self._pad_id = vocab.index("[PAD]")
        self.vocab_size = tf.Variable(len(vocab), trainable=False, name="vocab_size")
        self.lower_case = tf.Variable(lower_case, trainable=False, name="lower_case")
        self._default_seq_length = default_seq_length

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(self, text):
        """Strings [batch] -> int32 word-piece ids, ragged [batch, words, pieces]."""
        return self._tokenizer.tokenize(text)

    def _pack(self, segments, seq_length):
        pieces = [tf.cast(s.merge_dims(-2, -1), tf.int32) for s in segments]
        budget = seq_length - len(pieces) - 1
        trimmed = tf_text.RoundRobinTrimmer(max_seq_length=budget).trim(pieces)
        ids, type_ids = tf_text.combine_segments(
            trimmed, start_of_sequence_id=self._cls_id, end_of_segment_id=self._sep_id)
        word_ids, mask = tf_text.pad_model_inputs(ids, seq_length, pad_value=self._pad_id)
        type_ids, _ = tf_text.pad_model_inputs(type_ids, seq_length, pad_value=0)
        return {"input_word_ids": word_ids, "input_mask": mask, "input_type_ids": type_ids}

    @tf.function
    def bert_pack_inputs(self, segments, seq_length):
        """Packs 1 or 2 tokenized segments as `[CLS] a [SEP] (b [SEP])`, trimmed
        round-robin and padded to `seq_length`; returns the encoder input dict."""
        return self._pack(segments, seq_length)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, text):
        """Single-segment preprocessing with the default sequence length."""
        return self._pack([self._tokenizer.tokenize(text)], self._default_seq_length)


def build_preprocessor(vocab_file: str | Path, export_dir: str | Path,
                       lower_case: bool = True, default_seq_length: int = 128) -> None:
    """Writes a TF Hub-format BERT preprocessing SavedModel to `export_dir`, atomically."""
    module = BertPreprocessor(vocab_file, lower_case, default_seq_length)
    ragged = tf.RaggedTensorSpec([None, None, None], tf.int32, ragged_rank=2)
    length = tf.TensorSpec([], tf.int32)
    for num_segments in (1, 2):
        module.bert_pack_inputs.get_concrete_function([ragged] * num_segments, length)
    with atomic_directory(export_dir) as tmp:
        tf.saved_model.save(module, str(tmp),
                            signatures={"serving_default": module.__call__})


def build_random_encoder(vocab_size: int, export_dir: str | Path, hidden_size: int = 64,
                         num_layers: int = 2, num_heads: int = 2, seed: int = 0) -> BertConfig:
    """Writes a small randomly initialised BERT encoder (Reusable SavedModel) to `export_dir`."""
    tf_keras.utils.set_random_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                        num_layers=num_layers, num_heads=num_heads,
                        intermediate_size=4 * hidden_size)
    encoder = build_bert_encoder(config, seed=seed)
    with atomic_directory(export_dir) as tmp:
        save_hub_encoder(encoder, tmp)
        config.to_json(Path(tmp) / "assets" / "bert_config.json")
    return config
