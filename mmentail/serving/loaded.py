"""A serving export loaded to answer requests: its signature, its metadata, its SignatureDefs.

The server and `mmentail-predict` both call the export through
:meth:`LoadedExport.predict`, so what a client gets from either is what the
SavedModel itself answers. Loading needs the tensorflow-text ops, registered by
`import mmentail` (this module's package).

Example:
    export = load_export("runs/demo/export")
    outputs = export.predict({"text_1": [b"flood downtown"], "image_1": [jpeg],
                              "text_2": [b"river rising"], "image_2": [png]})
    outputs["label"][0], outputs["probabilities"][0]
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from mmentail.data.pairs import ReadReport, read_pairs
from mmentail.errors import MissingFileError
from mmentail.evaluation.calibration import Calibration
from mmentail.evaluation.decision import DecisionRule
from mmentail.schema import EXPORT_INPUTS, MAX_IMAGE_PIXELS

SIGNATURE = "serving_default"
METADATA_FILE = Path("assets.extra") / "mmentail.json"
# What TensorFlow puts around an op's message in graph mode.
_TRACE_LINES = ("Graph execution error", "Detected at node", "<stack traces")


@dataclasses.dataclass
class LoadedExport:
    """An export: its description at once, its model on first use.

    Reading the metadata is instant and loading the SavedModel takes seconds,
    so a command can check its input against the metadata (pixel limit,
    modality) and fail fast before the model is loaded.

    Attributes:
        path: the export directory.
        metadata: `assets.extra/mmentail.json` (labels, image size, modality, pixel limit).
        signature_defs: every SignatureDef of the `serve` graph, as TensorFlow
            Serving writes them in JSON (dtype names, sizes as strings).
        loaded_signature: the `serving_default` function once loaded (or given).
    """

    path: Path
    metadata: dict[str, Any]
    signature_defs: dict[str, Any]
    loaded_signature: Any = None

    @property
    def signature(self) -> Any:
        """The `serving_default` concrete function, loaded on first use."""
        if self.loaded_signature is None:
            self.loaded_signature = tf.saved_model.load(str(self.path)).signatures[SIGNATURE]
        return self.loaded_signature

    @property
    def max_pixels(self) -> int:
        """Largest image (height x width) the export decodes."""
        return int(self.metadata.get("max_image_pixels", MAX_IMAGE_PIXELS))

    @property
    def decision_rule(self) -> DecisionRule:
        """The rule of the export's `label` output (argmax for exports that record none)."""
        return DecisionRule.from_json(self.metadata.get("decision_rule"))

    @property
    def calibration(self) -> Calibration:
        """The map of the export's `probabilities` (identity for exports that record none)."""
        return Calibration.from_json(self.metadata.get("calibration"))

    @property
    def modality(self) -> str:
        """`both`, `text` or `image`: which inputs the model reads."""
        return str(self.metadata.get("modality", "both"))

    def predict(self, columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Calls the signature on a batch of the four inputs (lists of bytes, or tensors).

        Returns:
            `probabilities` float32 [batch, 3] and `label` (str) [batch], and
            `logits` float32 [batch, 3] from exports that have them (the
            uncalibrated logits; answers to clients carry the first two only).

        Raises:
            tf.errors.InvalidArgumentError: an input the export refuses, named
                (`image_2[3]: ...`); see :func:`model_error_message`.
        """
        outputs = self.signature(**{name: tf.convert_to_tensor(columns[name], tf.string)
                                    for name in EXPORT_INPUTS})
        labels = [label.decode("utf-8") for label in outputs["label"].numpy().tolist()]
        return {"probabilities": outputs["probabilities"].numpy(),
                "label": np.asarray(labels, dtype=object),
                **({"logits": outputs["logits"].numpy()} if "logits" in outputs else {})}

    def warm_up(self) -> None:
        """One call on a tiny pair, so the first client does not wait for graph set-up."""
        image = tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8))
        self.predict({name: [image] if name.startswith("image") else [b"warm up"]
                      for name in EXPORT_INPUTS})


def load_export(export_dir: str | Path) -> LoadedExport:
    """A serving export written by :func:`mmentail.serving.export.export_savedmodel`,
    its SavedModel loaded on first use (:attr:`LoadedExport.signature`).

    Args:
        export_dir: the export directory (`saved_model.pb`, `variables/`, `assets.extra/`).

    Raises:
        MissingFileError: the directory holds no SavedModel with a `serving_default`.
    """
    path = Path(export_dir)
    if not (path / "saved_model.pb").is_file():
        raise MissingFileError(f"{path} has no saved_model.pb: not a serving export "
                               "(a run writes it to <output>/export)")
    signature_defs = _signature_defs(path / "saved_model.pb")
    if SIGNATURE not in signature_defs:
        raise MissingFileError(f"{path} has no {SIGNATURE!r} signature "
                               f"(it has {sorted(signature_defs)})")
    metadata_path = path / METADATA_FILE
    metadata = json.loads(metadata_path.read_text()) if metadata_path.is_file() else {}
    return LoadedExport(path, metadata, signature_defs)


def read_pairs_for(export: str | Path | LoadedExport, data_csv: str | Path,
                   image_dir: str | Path | None = None, *,
                   skip_bad_rows: bool) -> tuple[LoadedExport, Any, ReadReport]:
    """The export (loaded when given as a directory) and the CSV's pairs read as it
    takes them, for `mmentail-predict` and `mmentail-explain`: labels optional, images
    held to the export's pixel limit, none read for a text-only export.

    Args:
        export: a serving export's directory, or the export already loaded.
        data_csv: pairs CSV (training's schema; `label` optional).
        image_dir: the images (default: `images/` beside the CSV).
        skip_bad_rows: skip and count bad rows (in the report) instead of failing.

    Returns:
        (the loaded export, the pairs' DataFrame, the read's report).
    """
    export = export if isinstance(export, LoadedExport) else load_export(export)
    if export.modality == "text":
        image_dir = None
    elif image_dir is None:
        image_dir = Path(data_csv).parent / "images"
    report = ReadReport()
    pairs = read_pairs(data_csv, image_dir, skip_bad_rows=skip_bad_rows, report=report,
                       max_pixels=export.max_pixels, labels_required=False)
    return export, pairs, report


def _signature_defs(saved_model_pb: Path) -> dict[str, Any]:
    """The `serve` graph's SignatureDefs in TensorFlow Serving's JSON form."""
    saved_model = saved_model_pb2.SavedModel.FromString(saved_model_pb.read_bytes())
    graph = next((g for g in saved_model.meta_graphs if "serve" in g.meta_info_def.tags),
                 saved_model.meta_graphs[0])
    return {name: json_format.MessageToDict(signature, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True)
            for name, signature in graph.signature_def.items()}


def model_error_message(error: tf.errors.OpError) -> str:
    """The export's own words for a refused input, without TensorFlow's node trace.

    A decoder error that does not name its input in the message gets the input
    its node runs under (the export decodes each image input in its own scope).

    Example:
        >>> model_error_message(tf.errors.InvalidArgumentError(None, None,
        ...     "Graph execution error:\\n\\nDetected at node cond/image_2/map/Decode "
        ...     "defined at:\\nInvalid JPEG data\\n\\t [[{{node Decode}}]]"))
        'image_2: Invalid JPEG data'
    """
    text = error.message.split("\n\t [[", 1)[0]
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith(_TRACE_LINES)]
    message = " ".join(lines)
    assertion = re.fullmatch(r"assertion failed: \[(.*)\]", message, re.S)
    message = assertion.group(1) if assertion else message
    node = re.search(rf"Detected at node \S*?\b({'|'.join(EXPORT_INPUTS)})\b", error.message)
    if node and node.group(1) not in message:
        message = f"{node.group(1)}: {message}"
    return message
