from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

import mmentail
from helpers import TINY_IMAGE, TINY_SEQ
from mmentail.data.pairs import read_pairs
from mmentail.pipeline.dataset import make_dataset
from mmentail.serving.export import export_savedmodel

SIZE = (TINY_IMAGE, TINY_IMAGE)


@pytest.fixture(scope="module")
def signature(exported):
    """The export's serving signature, loaded once for the module."""
    return tf.saved_model.load(str(exported[1])).signatures["serving_default"]


def _inputs(rows) -> dict[str, tf.Tensor]:
    """The export's four inputs for `rows`: texts, and image files' bytes."""
    return {**{key: tf.constant(list(rows[key])) for key in ("text_1", "text_2")},
            **{key: tf.constant([Path(p).read_bytes() for p in rows[f"{key}_path"]])
               for key in ("image_1", "image_2")}}


def _serve(signature, rows):
    return signature(**_inputs(rows))


def test_export_matches_keras_model_on_raw_inputs(exported, signature, demo_pairs, preprocessor):
    model, export_dir = exported
    rows = demo_pairs.iloc[:12]
    features, _ = next(iter(make_dataset(rows, preprocessor, image_size=SIZE,
                                         seq_length=TINY_SEQ, batch_size=12,
                                         training=False)))
    expected = model(features, training=False).numpy()
    outputs = _serve(signature, rows)
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
    labels = [label.decode() for label in outputs["label"].numpy()]
    assert labels == [("Contradictory", "Implies", "NoEntailment")[i]
                      for i in np.argmax(expected, -1)]
    metadata = json.loads((Path(export_dir) / "assets.extra" / "mmentail.json").read_text())
    assert metadata["mmentail_version"] == mmentail.__version__ and metadata["note"] == "test"


def test_keras_3_calls_the_serve_endpoint_with_one_dict_alone_and_in_a_functional_model(
        exported, signature, demo_pairs):
    """Keras 3 (`import keras`, not tf_keras) loads the export as a `TFSMLayer` on its
    `serve` endpoint: the four inputs as one dict give `serving_default`'s outputs, called
    directly and as the layer of a functional model of four string inputs (`predict`
    too, whose string `label` comes back as bytes)."""
    import keras

    assert keras.version().startswith("3.")
    rows = demo_pairs.iloc[:6]
    inputs = _inputs(rows)
    expected = _serve(signature, rows)
    layer = keras.layers.TFSMLayer(str(exported[1]), call_endpoint="serve")
    strings = {name: keras.Input(shape=(), dtype="string", name=name) for name in inputs}
    model = keras.Model(strings, layer(strings))
    assert model.output["label"].dtype == "string"
    for outputs in (layer(inputs), model(inputs)):
        assert set(outputs) == {"probabilities", "logits", "label"}
        for name in ("probabilities", "logits"):
            np.testing.assert_allclose(np.asarray(outputs[name]), expected[name].numpy(),
                                       atol=1e-5)
        assert outputs["label"].dtype == tf.string
        assert outputs["label"].numpy().tolist() == expected["label"].numpy().tolist()
    predicted = model.predict(inputs, verbose=0)
    np.testing.assert_allclose(predicted["probabilities"], expected["probabilities"].numpy(),
                               atol=1e-5)
    assert predicted["label"].tolist() == expected["label"].numpy().tolist()
    # The keyword signature is unchanged: four named inputs, the same three outputs.
    assert sorted(signature.structured_input_signature[1]) == sorted(inputs)
    assert sorted(signature.structured_outputs) == ["label", "logits", "probabilities"]


def test_second_image_reaches_the_model(signature, demo_pairs):
    rows = demo_pairs.iloc[:4]
    swapped = rows.assign(image_2_path=list(rows["image_1_path"]))
    a = _serve(signature, rows)["probabilities"].numpy()
    b = _serve(signature, swapped)["probabilities"].numpy()
    assert np.abs(a - b).max() > 1e-4


def test_bad_image_bytes_raise_a_named_error(signature, demo_pairs):
    good = Path(demo_pairs["image_1_path"][0]).read_bytes()
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_2"):
        signature(text_1=tf.constant(["a"]), image_1=tf.constant([good]),
                  text_2=tf.constant(["b"]), image_2=tf.constant([b"garbage bytes"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch size"):
        signature(text_1=tf.constant(["a", "b"]), image_1=tf.constant([good]),
                  text_2=tf.constant(["b", "c"]), image_2=tf.constant([good, good]))


def test_failed_export_leaves_previous_export_intact(exported, preprocessor, tmp_path):
    model, export_dir = exported
    target = tmp_path / "export"
    export_savedmodel(model, preprocessor, target, image_size=SIZE, seq_length=TINY_SEQ)
    before = sorted(p.name for p in target.rglob("*"))
    with pytest.raises(Exception):
        export_savedmodel(model, object(), target, image_size=SIZE, seq_length=TINY_SEQ)
    assert sorted(p.name for p in target.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary left behind
    tf.saved_model.load(str(target))


def _pairs_as(demo, tmp_path, fmt: str) -> pd.DataFrame:
    """The first demo pairs with their images re-encoded (losslessly) as `fmt`, read back."""
    rows = pd.read_csv(demo.csv_path, dtype=str, keep_default_na=False).head(6)
    folder = tmp_path / fmt
    folder.mkdir()
    for side in ("1", "2"):
        for post_id in rows[f"id_{side}"]:
            source = next(demo.image_dir.glob(f"{post_id}.*"))
            Image.open(source).convert("RGB").save(folder / f"{post_id}.{fmt}", lossless=True)
        rows[f"image_{side}"] = [f"https://example.com/{i}.{fmt}" for i in rows[f"id_{side}"]]
    rows.to_csv(tmp_path / f"{fmt}.csv", index=False)
    return read_pairs(tmp_path / f"{fmt}.csv", folder)


def test_webp_images_train_and_serve_as_their_png_twins(demo, signature, preprocessor, tmp_path):
    webp, png = _pairs_as(demo, tmp_path, "webp"), _pairs_as(demo, tmp_path, "png")
    assert Path(webp["image_1_path"][0]).read_bytes()[8:12] == b"WEBP"
    features = [next(iter(make_dataset(rows, preprocessor, image_size=SIZE, seq_length=TINY_SEQ,
                                       batch_size=6, training=False)))[0] for rows in (webp, png)]
    for key in ("image_1", "image_2"):
        np.testing.assert_array_equal(features[0][key].numpy(), features[1][key].numpy())
    np.testing.assert_allclose(_serve(signature, webp)["probabilities"].numpy(),
                               _serve(signature, png)["probabilities"].numpy(), atol=1e-6)


@pytest.mark.slow  # builds and saves a second export
def test_a_siamese_text_model_exports_with_the_same_signature(demo, demo_pairs, preprocessor,
                                                              tmp_path):
    """Each post's text encoded alone is computed inside the model, from the packed pair
    the export's preprocessing makes: raw strings in, the Keras model's answers out."""
    import tf_keras

    from mmentail.config.experiment import ModelConfig
    from mmentail.model.build import build_model

    tf_keras.utils.set_random_seed(2)
    model = build_model(ModelConfig(encoder_handle=str(demo.encoder_dir), image_weights="none",
                                    image_backbone="resnet_tiny", image_size=TINY_IMAGE,
                                    seq_length=TINY_SEQ, projection_dim=16,
                                    text_pairing="siamese"))
    export_dir = export_savedmodel(model, preprocessor, tmp_path / "export", image_size=SIZE,
                                   seq_length=TINY_SEQ)
    rows = demo_pairs.iloc[:8]
    features, _ = next(iter(make_dataset(rows, preprocessor, image_size=SIZE,
                                         seq_length=TINY_SEQ, batch_size=8, training=False)))
    served = _serve(tf.saved_model.load(str(export_dir)).signatures["serving_default"], rows)
    np.testing.assert_allclose(served["probabilities"].numpy(),
                               model(features, training=False).numpy(), atol=1e-5)
