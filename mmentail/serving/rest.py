"""TensorFlow Serving's REST API for this model: routes, request parsing, response bodies.

Clients written for `tensorflow_model_server --rest_api_port` work unchanged:
the same URLs (`/v1/models/<name>[/versions/1][/metadata|:predict]`), the row
(`instances`) and columnar (`inputs`) request formats, binary values as
`{"b64": ...}`, and errors as `{"error": "..."}`. KServe's V1 protocol adds the
`:explain` verb: the same requests, answered with the predictions and an
explanation of each pair (:mod:`mmentail.serving.explain`). Every item is checked here,
before it joins other clients' items in a batch, so one bad image fails only
its own request, with the field named: `image_2[0]: not valid base64`. The
checks a gRPC request needs too (`check_*`: servable, signature, input names,
batch sizes, image headers) are shared with :mod:`mmentail.serving.grpc_api`, so
both APIs refuse the same request in the same words.

Example:
    >>> request = parse_predict(b'{"inputs": {"text_1": ["a"], "image_1": [{"b64": ""}],'
    ...                         b' "text_2": ["b"], "image_2": [{"b64": ""}]}}',
    ...                         check_images=False)
    >>> request.row_format, request.size, request.columns["text_1"]
    (False, 1, [b'a'])
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from mmentail.data.images import image_bytes_problems
from mmentail.errors import MmentailError
from mmentail.schema import EXPORT_INPUTS, LABELS, MAX_IMAGE_PIXELS
from mmentail.serving.loaded import SIGNATURE

VERSION = "1"
_IMAGE_INPUTS = ("image_1", "image_2")
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                   r"(?:/labels/(?P<label>[^/:]+))?(?P<verb>/metadata|:predict|:explain)?/?$")
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
               int: "a number", float: "a number", type(None): "null"}


class BadRequest(MmentailError, ValueError):
    """A request the server refuses, with the HTTP status to answer (TF Serving's codes)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class PredictRequest:
    """A checked predict request: each input's bytes, and which format to answer in."""

    columns: dict[str, list[bytes]]
    row_format: bool

    @property
    def size(self) -> int:
        return len(self.columns[EXPORT_INPUTS[0]])


def route(method: str, path: str, model_name: str) -> str:
    """Which endpoint `method path` asks for: 'status', 'metadata', 'predict' or 'explain'.

    Raises:
        BadRequest: 404 for a path, model, version or label that is not served;
            405 for a method the endpoint does not take.
    """
    match = _PATH.match(path.split("?", 1)[0])
    if not match:
        raise BadRequest(f"Malformed request: {method} {path}", 404)
    check_servable(*match.group("name", "version", "label"), model_name)
    endpoint = {None: "status", "/metadata": "metadata", ":predict": "predict",
                ":explain": "explain"}[match["verb"]]
    expected = "POST" if endpoint in ("predict", "explain") else "GET"
    if method != expected:
        raise BadRequest(f"{endpoint} takes {expected}, not {method}: {path}", 405)
    return endpoint


def check_servable(name: str, version: str | None, label: str | None, model_name: str) -> None:
    """Refuses a model name, version or version label that is not served (REST's and
    gRPC's `model_spec` alike).

    Raises:
        BadRequest: 404, in TF Serving's words (`Servable not found for request: Latest(x)`).
    """
    if name != model_name:
        raise BadRequest(f"Servable not found for request: Latest({name})", 404)
    if version not in (None, VERSION):
        raise BadRequest(f"Servable not found for request: Specific({name}, {version})", 404)
    if label is not None:
        raise BadRequest(f"Unrecognized servable version label: {label}", 404)


def check_signature_name(signature: Any) -> None:
    """Refuses a signature other than `serving_default` (400)."""
    if signature != SIGNATURE:
        raise BadRequest(f"Serving signature name: {json.dumps(signature)} not found in "
                         f"signature def (this model has \"{SIGNATURE}\")")


def model_status() -> dict[str, Any]:
    """`GET /v1/models/<name>`: the one version, loaded (a `GetModelStatusResponse`)."""
    return {"model_version_status": [{"version": VERSION, "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


def model_metadata(model_name: str, signature_defs: dict[str, Any]) -> dict[str, Any]:
    """`GET /v1/models/<name>/metadata`: a `GetModelMetadataResponse` in JSON."""
    return {"model_spec": {"name": model_name, "signature_name": "", "version": VERSION},
            "metadata": {"signature_def": {"signature_def": signature_defs}}}


def parse_predict(body: bytes, *, check_images: bool = True,
                  max_pixels: int = MAX_IMAGE_PIXELS) -> PredictRequest:
    """Reads and checks a predict request body, every item, before any model call.

    Args:
        body: the raw request body.
        check_images: check each image's header (format, size, truncation); off
            for an export that reads no image.
        max_pixels: largest image (height x width) accepted: the export's limit.

    Raises:
        BadRequest: naming what is wrong and where (`image_2[0]: not valid base64`).
    """
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"JSON Parse error: {e}") from None
    if not isinstance(request, dict):
        raise BadRequest("the request must be a JSON object with \"instances\" or \"inputs\"")
    check_signature_name(request.get("signature_name", SIGNATURE))
    if ("instances" in request) == ("inputs" in request):
        raise BadRequest("a request needs \"instances\" (row format) or \"inputs\" (columnar "
                         "format)" + (", not both" if "inputs" in request else ""))
    row_format = "instances" in request
    raw = _rows_to_columns(request["instances"]) if row_format else _columns(request["inputs"])
    columns = {name: [_item_bytes(value, f"{name}[{i}]", name in _IMAGE_INPUTS)
                      for i, value in enumerate(raw[name])] for name in EXPORT_INPUTS}
    if check_images:
        check_image_headers(columns, max_pixels)
    return PredictRequest(columns, row_format)


def check_input_names(found: Collection[str], where: str) -> None:
    """Every input named once, and nothing else.

    Raises:
        BadRequest: `<where>: missing input(s) image_2 (the inputs are ...)`.
    """
    missing = [name for name in EXPORT_INPUTS if name not in found]
    unknown = [name for name in found if name not in EXPORT_INPUTS]
    problems = ([f"missing input(s) {', '.join(missing)}"] if missing else []) + (
        [f"unknown input(s) {', '.join(unknown)}"] if unknown else [])
    if problems:
        raise BadRequest(f"{where}: {'; '.join(problems)} (the inputs are "
                         f"{', '.join(EXPORT_INPUTS)})")


def check_batch_sizes(sizes: Mapping[str, int]) -> None:
    """Every input with one item per pair: `sizes` maps each input to its item count.

    Raises:
        BadRequest: `inputs.image_2 has 1 items but inputs.text_1 has 2: ...`.
    """
    first = EXPORT_INPUTS[0]
    for name in EXPORT_INPUTS[1:]:
        if sizes[name] != sizes[first]:
            raise BadRequest(f"inputs.{name} has {sizes[name]} items but "
                             f"inputs.{first} has {sizes[first]}: every input needs "
                             "one item per pair")


def check_image_headers(columns: Mapping[str, Sequence[bytes]], max_pixels: int) -> None:
    """Each image's header read (format, size, truncation) before any model call.

    Raises:
        BadRequest: naming the first bad item, `image_1[0]: the image is a truncated JPEG`.
    """
    fields = [(name, i) for name in _IMAGE_INPUTS for i in range(len(columns[name]))]
    problems = image_bytes_problems([columns[name][i] for name, i in fields], max_pixels)
    for (name, i), problem in zip(fields, problems):
        if problem:
            raise BadRequest(f"{name}[{i}]: the image {problem}")


def _rows_to_columns(instances: Any) -> dict[str, list[Any]]:
    """`instances`, one object per pair, as one list per input."""
    if not isinstance(instances, list):
        raise BadRequest(f"instances must be a list of objects, not {_json_type(instances)}")
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise BadRequest(f"instances[{i}] must be an object with "
                             f"{', '.join(EXPORT_INPUTS)}, not {_json_type(instance)}")
        check_input_names(instance, f"instances[{i}]")
    return {name: [instance[name] for instance in instances] for name in EXPORT_INPUTS}


def _columns(inputs: Any) -> dict[str, list[Any]]:
    """`inputs`, one list per input, checked for equal lengths."""
    if not isinstance(inputs, dict):
        raise BadRequest(f"inputs must be an object with {', '.join(EXPORT_INPUTS)}, "
                         f"not {_json_type(inputs)}")
    check_input_names(inputs, "inputs")
    for name in EXPORT_INPUTS:
        if not isinstance(inputs[name], list):
            raise BadRequest(f"inputs.{name} must be a list (one item per pair), "
                             f"not {_json_type(inputs[name])}")
    check_batch_sizes({name: len(inputs[name]) for name in EXPORT_INPUTS})
    return inputs


def _item_bytes(value: Any, field: str, image: bool) -> bytes:
    """One item's bytes: `{"b64": ...}` decoded, or a string's UTF-8 (texts only)."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise BadRequest(f"{field}: expected {{\"b64\": \"<base64>\"}}, got an object "
                             f"with {sorted(value)}")
        try:  # plain padded base64, decoded without a copy of the text first
            return binascii.a2b_base64(value["b64"], strict_mode=True)
        except (binascii.Error, ValueError):
            pass
        text = "".join(value["b64"].split())  # line breaks of wrapped base64
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{field}: not valid base64") from None
    if isinstance(value, str) and not image:
        return value.encode("utf-8", "surrogatepass")  # the export reads bad UTF-8 as U+FFFD
    expected = "{\"b64\": \"<base64 of the image file>\"}" if image else "a string"
    raise BadRequest(f"{field}: expected {expected}, got {_json_type(value)}")


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "a value")


def predict_response(outputs: dict[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    """The predict answer: `{"predictions": [...]}` for rows, `{"outputs": {...}}` for columns.

    Example:
        >>> out = {"probabilities": np.array([[0.5, 0.25, 0.25]]), "label": ["Contradictory"]}
        >>> predict_response(out, row_format=True)
        {'predictions': [{'probabilities': [0.5, 0.25, 0.25], 'label': 'Contradictory'}]}
    """
    probabilities = np.asarray(outputs["probabilities"], dtype=float).tolist()
    labels = [str(label) for label in outputs["label"]]
    if row_format:
        return {"predictions": [{"probabilities": p, "label": label}
                                for p, label in zip(probabilities, labels)]}
    return {"outputs": {"probabilities": probabilities, "label": labels}}


def explain_response(explanations: list[dict[str, Any]], row_format: bool) -> dict[str, Any]:
    """The `:explain` answer (KServe's V1 protocol): the predictions in the request's
    format, as `:predict` gives them, and `explanations`, one object per pair.

    Example:
        >>> why = {"label": "Implies", "probabilities": {"Contradictory": 0.25,
        ...        "Implies": 0.5, "NoEntailment": 0.25}}
        >>> explain_response([why], row_format=False)["outputs"]
        {'probabilities': [[0.25, 0.5, 0.25]], 'label': ['Implies']}
    """
    outputs = {"probabilities": np.asarray([[why["probabilities"][label] for label in LABELS]
                                            for why in explanations], float).reshape(-1, 3),
               "label": [why["label"] for why in explanations]}
    return {**predict_response(outputs, row_format), "explanations": explanations}
