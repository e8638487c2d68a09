"""Export a trained model as a SavedModel that serves raw strings and image bytes.

The `serving_default` signature:

- inputs, each a batched `tf.string` [batch]: `text_1`, `image_1`, `text_2`,
  `image_2` (raw post texts, and encoded JPEG/PNG/GIF/BMP/WebP bytes);
- outputs: `probabilities`, float32 [batch, 3] in the order of
  `labels` (Contradictory, Implies, NoEntailment), calibrated by the run's
  fitted map (:mod:`mmentail.evaluation.calibration`); `logits`, float32
  [batch, 3], the model's uncalibrated logits (its log-probabilities: softmax
  of them gives the probabilities before calibration); and `label`, a
  `tf.string` [batch]: the label of the run's decision rule
  (:mod:`mmentail.evaluation.decision`) applied to the model's logits,
  `argmax(logits + offsets)`: the model's most probable label when the offsets
  are zero (`--decision-rule argmax`). Calibration changes the probabilities,
  never the label, so with a `vector` map (the default) or a rule the label
  need not be the most probable one after calibration. The offsets and the
  calibration are in the metadata (`assets.extra/mmentail.json`,
  `decision_rule` and `calibration`, beside `mmentail_version`, the version
  that wrote the export).

The `serve` endpoint (a function of the SavedModel, not among its
`signatures`, so TensorFlow Serving and the REST server list
`serving_default` alone) takes the same four inputs as ONE dict argument,
`{"text_1": ..., "image_1": ..., "text_2": ..., "image_2": ...}`, and
returns the same outputs: it calls `serving_default`'s function, so both
run one graph. It is the endpoint Keras 3 loads
(`keras.layers.TFSMLayer(export_dir, call_endpoint="serve")`), whose layers
take one argument: a `serving_default` signature takes keyword arguments
alone. Keras 3 passes the string `label` through (`tf.string`; `"string"`
in a functional model, bytes from `predict`); `predict` takes the strings as
tensors or a `tf.data.Dataset`, not as NumPy object arrays.

Tokenization and image decoding are inside the SavedModel, with the same code
training used; a batch's images are decoded in parallel. Untrusted input gives
a result or an `InvalidArgumentError` that names the input (`image_2[3]: ...`),
never a crash: an empty batch gives empty outputs; texts are truncated to the
sequence length and invalid UTF-8 is replaced by U+FFFD; images must be
JPEG/PNG/GIF/BMP/WebP and their header may claim at most `max_pixels` pixels
(checked before decoding); inputs of different batch sizes, and image bytes the
decoder rejects, raise.

The export uses tensorflow-text ops: `import tensorflow_text` (or
`import mmentail`) before `tf.saved_model.load`.

Example:
    import mmentail, tensorflow as tf
    served = tf.saved_model.load("runs/demo/export")
    out = served.signatures["serving_default"](
        text_1=tf.constant(["..."]), image_1=tf.constant([jpeg_bytes]),
        text_2=tf.constant(["..."]), image_2=tf.constant([png_bytes]))
    out["label"], out["probabilities"], out["logits"]

    import keras  # Keras 3
    layer = keras.layers.TFSMLayer("runs/demo/export", call_endpoint="serve")
    inputs = {name: keras.Input(shape=(), dtype="string", name=name)
              for name in ("text_1", "image_1", "text_2", "image_2")}
    model = keras.Model(inputs, layer(inputs))  # outputs: probabilities, logits, label
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tensorflow as tf
import tf_keras

from mmentail import __version__
from mmentail.config.experiment import VERSION_KEY
from mmentail.evaluation.calibration import Calibration, log_probabilities
from mmentail.evaluation.decision import DecisionRule
from mmentail.io_utils import atomic_directory, atomic_write_json
from mmentail.pipeline.preprocess import image_decoder, pack_text_pair
from mmentail.schema import EXPORT_INPUTS, IMAGE_KEYS, LABELS, MAX_IMAGE_PIXELS


def decode_images(image_bytes: tf.Tensor, name: str, image_size: tuple[int, int],
                  max_pixels: int = MAX_IMAGE_PIXELS) -> tf.Tensor:
    """The export's decoding of one input's batch of encoded images, in order.

    In parallel (a tf.data map of training's decoder), under the input's name
    scope, so even a decoder error names the item (`image_2[3]: ...`).

    Args:
        image_bytes: tf.string [batch] of encoded images.
        name: the input's name (`image_1` or `image_2`).
        image_size: (height, width) the images are resized to.
        max_pixels: images whose header claims more pixels are rejected.
    """
    with tf.name_scope(name):
        count = tf.size(image_bytes)
        sources = tf.strings.join([name, "[", tf.strings.as_string(tf.range(count)), "]"])
        images = tf.data.Dataset.from_tensor_slices((image_bytes, sources)).map(
            image_decoder(image_size, max_pixels),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return images.batch(tf.cast(count, tf.int64)).get_single_element()


class ServingModule(tf.Module):
    """Wraps a Keras model with the preprocessing it was trained with."""

    def __init__(self, model: tf_keras.Model, preprocessor: Any, image_size: tuple[int, int],
                 seq_length: int, modality: str, max_pixels: int = MAX_IMAGE_PIXELS,
                 decision_rule: DecisionRule = DecisionRule(),
                 calibration: Calibration = Calibration()):
        super().__init__(name="mmentail_serving")
        # The model's variables, not the Keras object: saving a Keras model
        # traces every layer's call for a Keras restore path that serving never
        # uses (tens of seconds, and as long again to load, for ResNet50V2).
        self.model_variables = list(model.variables)
        self._call_model = model.__call__
        self.preprocessor = preprocessor
        self.labels = tf.constant(LABELS)
        self.label_offsets = tf.constant(decision_rule.offsets, tf.float32)
        self._calibration = calibration
        self._image_size = tuple(image_size)
        self._seq_length = seq_length
        self._modality = modality
        self._max_pixels = max_pixels

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=k)
                                  for k in EXPORT_INPUTS])
    def serve_tensors(self, text_1, image_1, text_2, image_2):
        """The four inputs as four tensors: the `serving_default` signature."""
        batch = tf.shape(text_1)[0]
        checks = [tf.debugging.assert_equal(tf.shape(tensor)[0], batch,
                                            message=f"{name} has a different batch size than "
                                                    "text_1")
                  for name, tensor in (("image_1", image_1), ("text_2", text_2),
                                       ("image_2", image_2))]
        with tf.control_dependencies(checks):
            # The image encoder's batch norm rejects an empty batch: skip the model.
            uncalibrated = tf.cond(
                batch > 0, lambda: self._predict(text_1, image_1, text_2, image_2),
                lambda: tf.zeros([0, len(LABELS)], tf.float32))
        logits = log_probabilities(uncalibrated)
        probabilities = self._calibration.apply_logits(logits)
        return {"probabilities": probabilities, "logits": logits,
                "label": tf.gather(self.labels, tf.argmax(logits + self.label_offsets, axis=-1))}

    @tf.function(input_signature=[{k: tf.TensorSpec([None], tf.string, name=k)
                                   for k in EXPORT_INPUTS}])
    def serve(self, inputs):
        """The four inputs as one dict: the `serve` endpoint, a call of `serve_tensors`
        (in the SavedModel, one graph that both reach)."""
        return self.serve_tensors(**inputs)

    def _predict(self, text_1, image_1, text_2, image_2):
        features = {}
        if self._modality != "image":
            features.update(pack_text_pair(self.preprocessor, text_1, text_2, self._seq_length))
        if self._modality != "text":
            for key, image_bytes in zip(IMAGE_KEYS, (image_1, image_2)):
                features[key] = decode_images(image_bytes, key, self._image_size,
                                              self._max_pixels)
        return tf.cast(self._call_model(features, training=False), tf.float32)


def export_savedmodel(model: tf_keras.Model, preprocessor: Any, export_dir: str | Path, *,
                      image_size: tuple[int, int], seq_length: int, modality: str = "both",
                      metadata: dict[str, Any] | None = None,
                      max_pixels: int = MAX_IMAGE_PIXELS,
                      decision_rule: DecisionRule = DecisionRule(),
                      calibration: Calibration = Calibration()) -> Path:
    """Writes the serving SavedModel to `export_dir`, atomically.

    The directory appears complete or not at all: a failure (or a kill) while
    saving leaves any previous export at `export_dir` untouched.

    Args:
        model: the trained Keras model.
        preprocessor: the loaded TF Hub BERT preprocessing model it was trained with.
        export_dir: target directory.
        image_size: (height, width) images are resized to.
        seq_length: BERT sequence length.
        modality: "both", "text" or "image": which inputs the model reads (all
            four are always accepted, so clients need not change).
        metadata: written beside the model as `assets.extra/mmentail.json`.
        max_pixels: images whose header claims more pixels (height x width)
            are rejected before decoding.
        decision_rule: the offsets the `label` output adds to the log-probabilities.
        calibration: the map from the model's logits to the `probabilities` output.
    """
    module = ServingModule(model, preprocessor, image_size, seq_length, modality, max_pixels,
                           decision_rule, calibration)
    with atomic_directory(export_dir) as tmp:
        tf.saved_model.save(module, str(tmp),
                            signatures={"serving_default": module.serve_tensors})
        atomic_write_json(Path(tmp) / "assets.extra" / "mmentail.json",
                          {VERSION_KEY: __version__,
                           "labels": list(LABELS), "image_size": list(image_size),
                           "seq_length": seq_length, "modality": modality,
                           "max_image_pixels": max_pixels,
                           "decision_rule": decision_rule.to_json(),
                           "calibration": calibration.to_json(),
                           **(metadata or {})})
    return Path(export_dir)
