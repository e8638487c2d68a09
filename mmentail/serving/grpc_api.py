"""TensorFlow Serving's gRPC API for this model: `PredictionService` and `ModelService`.

A client written for `tensorflow_model_server --port=8500` works unchanged: the
stubs and messages are tensorflow-serving-api's own. `Predict` takes the four
inputs as 1-D `DT_STRING` tensors of one batch size (raw texts, encoded image
bytes) and answers every output of the export (`probabilities`, `label`, and
`logits` where the export has them) unless `output_filter` names some;
`GetModelMetadata` answers the SignatureDefs, `GetModelStatus` the one version,
AVAILABLE. Requests go through the REST server's batcher, so gRPC and REST
clients share model calls, and are checked by :mod:`mmentail.serving.rest`'s
checks, so a bad request is refused in the words REST uses, with the status
mapped by :data:`STATUS_CODES` (400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND). A
request over `--max-request-bytes` is refused by gRPC itself before it is read
(RESOURCE_EXHAUSTED: REST's 413).

Example:
    http = ModelServer(("127.0.0.1", 8501), load_export("runs/demo/export"))
    grpc_server, port = start_grpc_server(http, "127.0.0.1", 8500)
    ...
    grpc_server.stop(STOP_GRACE_S).wait()
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from mmentail.schema import EXPORT_INPUTS
from mmentail.serving.loaded import SIGNATURE
from mmentail.serving.rest import (
    VERSION,
    BadRequest,
    check_batch_sizes,
    check_image_headers,
    check_input_names,
    check_servable,
    check_signature_name,
)

if TYPE_CHECKING:
    from mmentail.serving.server import ModelServer

WORKERS = 16  # concurrent calls; more wait in gRPC's queue
STOP_GRACE_S = 3.0  # seconds calls in flight get to finish once a stop is asked for
STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND}
log = logging.getLogger(__name__)


class PredictionApi(prediction_service_pb2_grpc.PredictionServiceServicer,
                    model_service_pb2_grpc.ModelServiceServicer):
    """`Predict`, `GetModelMetadata` and `GetModelStatus` for the export `http` serves.

    Args:
        http: the REST server: its export, model name, and batcher are shared.
    """

    def __init__(self, http: ModelServer):
        self.http = http

    def Predict(self, request: predict_pb2.PredictRequest,
                context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        """Labels the request's pairs (through the shared batcher)."""
        def answer() -> tuple[predict_pb2.PredictResponse, int]:
            self._check_spec(request.model_spec)
            columns = self._columns(request.inputs)
            wanted = self._wanted_outputs(request.output_filter)
            outputs = self.http.predict(columns)
            response = predict_pb2.PredictResponse(model_spec=self._spec())
            for name in wanted:
                response.outputs[name].CopyFrom(_tensor(outputs[name]))
            return response, len(columns[EXPORT_INPUTS[0]])

        return _answered("Predict", context, answer)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context: grpc.ServicerContext
                         ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """The export's SignatureDefs, as `metadata["signature_def"]` (REST's `/metadata`)."""
        def answer() -> tuple[get_model_metadata_pb2.GetModelMetadataResponse, int]:
            self._check_spec(request.model_spec, signature=False)
            if not request.metadata_field:
                raise BadRequest("GetModelMetadataRequest must specify at least one "
                                 "metadata_field (\"signature_def\")")
            unknown = [field for field in request.metadata_field if field != "signature_def"]
            if unknown:
                raise BadRequest(f"Metadata field {unknown[0]} is not supported "
                                 "(\"signature_def\" is)")
            signatures = json_format.ParseDict(
                {"signature_def": self.http.export.signature_defs},
                get_model_metadata_pb2.SignatureDefMap())
            response = get_model_metadata_pb2.GetModelMetadataResponse(
                model_spec=self._spec(signature=False))
            response.metadata["signature_def"].Pack(signatures)
            return response, 0

        return _answered("GetModelMetadata", context, answer)

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                       context: grpc.ServicerContext
                       ) -> get_model_status_pb2.GetModelStatusResponse:
        """The one version, AVAILABLE (REST's `GET /v1/models/<name>`)."""
        def answer() -> tuple[get_model_status_pb2.GetModelStatusResponse, int]:
            self._check_spec(request.model_spec, signature=False)
            status = get_model_status_pb2.ModelVersionStatus(
                version=int(VERSION), state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
            status.status.error_code = error_codes_pb2.OK
            return get_model_status_pb2.GetModelStatusResponse(model_version_status=[status]), 0

        return _answered("GetModelStatus", context, answer)

    def _check_spec(self, spec: model_pb2.ModelSpec, *, signature: bool = True) -> None:
        """REST's checks of the model name, version, label and signature name."""
        version = str(spec.version.value) if spec.HasField("version") else None
        label = spec.version_label if spec.HasField("version_label") else None
        check_servable(spec.name, version, label, self.http.model_name)
        if signature:
            check_signature_name(spec.signature_name or SIGNATURE)

    def _spec(self, *, signature: bool = True) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.http.model_name,
                                   signature_name=SIGNATURE if signature else "")
        spec.version.value = int(VERSION)
        return spec

    def _columns(self, inputs: Any) -> dict[str, list[bytes]]:
        """The inputs' items, each input a 1-D string tensor, all of one batch size, their
        images' headers read: REST's checks, in its words where the two requests meet."""
        check_input_names(inputs, "inputs")
        for name in EXPORT_INPUTS:
            tensor = inputs[name]
            if tensor.dtype != types_pb2.DT_STRING:
                raise BadRequest(f"inputs.{name} must be a string tensor (DT_STRING), not "
                                 f"{types_pb2.DataType.Name(tensor.dtype)}")
            shape = [dim.size for dim in tensor.tensor_shape.dim]
            if tensor.tensor_shape.unknown_rank or len(shape) != 1:
                raise BadRequest(f"inputs.{name} must be 1-D (one item per pair), not of "
                                 f"shape {shape}")
            if len(tensor.string_val) != shape[0]:
                raise BadRequest(f"inputs.{name} has shape {shape} but "
                                 f"{len(tensor.string_val)} values")
        columns = {name: list(inputs[name].string_val) for name in EXPORT_INPUTS}
        check_batch_sizes({name: len(items) for name, items in columns.items()})
        if self.http.export.modality != "text":
            check_image_headers(columns, self.http.export.max_pixels)
        return columns

    def _wanted_outputs(self, output_filter: Any) -> list[str]:
        """The outputs to answer: `output_filter`'s, or every output of the signature."""
        outputs = list(self.http.export.signature_defs.get(SIGNATURE, {}).get("outputs", {}))
        outputs = outputs or ["probabilities", "label"]
        unknown = [name for name in output_filter if name not in outputs]
        if unknown:
            raise BadRequest(f"output tensor alias not found in signature: {unknown[0]} "
                             f"(the outputs are {', '.join(sorted(outputs))})")
        return list(output_filter) or outputs


def _tensor(values: np.ndarray) -> Any:
    """An output as a TensorProto (labels as UTF-8 strings)."""
    if values.dtype == object:
        values = np.asarray([str(value).encode("utf-8") for value in values], dtype=object)
    return tf.make_tensor_proto(values)


def _answered(method: str, context: grpc.ServicerContext,
              answer: Callable[[], tuple[Any, int]]) -> Any:
    """`answer()`'s response, or the request refused with its status; logged on one line
    (method, status, pairs, time) as REST requests are."""
    start, pairs, code = time.monotonic(), 0, grpc.StatusCode.OK
    try:
        response, pairs = answer()
    except BadRequest as error:
        code = STATUS_CODES.get(error.status, grpc.StatusCode.INVALID_ARGUMENT)
        context.abort(code, str(error))  # raises, after the finally's log line
    except Exception as error:  # a bug: answered, logged, and the server goes on
        log.exception("gRPC %s failed", method)
        code = grpc.StatusCode.INTERNAL
        context.abort(code, f"internal error: {type(error).__name__}: {error}")
    finally:
        log.info("gRPC %s %s pairs=%d %.1f ms", method, code.name, pairs,
                 (time.monotonic() - start) * 1000)
    return response


def predict_request(columns: Mapping[str, Sequence[bytes | str]],
                    model_name: str = "mmentail") -> predict_pb2.PredictRequest:
    """A client's Predict request for a batch of pairs: each input a 1-D string tensor.

    Args:
        columns: `text_1`, `image_1`, `text_2`, `image_2`, one item per pair (texts as
            str or UTF-8 bytes; images as the encoded file's bytes).
        model_name: the served model's name (`--model-name`).

    Example:
        >>> request = predict_request({"text_1": ["a"], "image_1": [b""],
        ...                            "text_2": ["b"], "image_2": [b""]})
        >>> request.inputs["text_1"].string_val, request.model_spec.name
        ([b'a'], 'mmentail')
    """
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = SIGNATURE
    for name, items in columns.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(
            [item.encode("utf-8") if isinstance(item, str) else item for item in items],
            dtype=tf.string, shape=[len(items)]))
    return request


def start_grpc_server(http: ModelServer, host: str, port: int,
                      workers: int = WORKERS) -> tuple[grpc.Server, int]:
    """TF Serving's gRPC API on `host:port` (0: a free port) for `http`'s export,
    answering on a pool of `workers` threads; requests over `http.max_request_bytes`
    are refused (RESOURCE_EXHAUSTED).

    Returns:
        The started server (stop it with `.stop(STOP_GRACE_S)`) and the port it listens on.

    Raises:
        OSError: the port cannot be bound.

    Example:
        server, port = start_grpc_server(http, "127.0.0.1", 0)
    """
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(workers,
                                                                thread_name_prefix="mmentail-grpc"),
                         options=[("grpc.max_receive_message_length", http.max_request_bytes),
                                  ("grpc.so_reuseport", 0)])
    api = PredictionApi(http)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(api, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(api, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as error:  # gRPC's own words for a port it cannot bind
        raise OSError(str(error)) from None
    if bound == 0:  # older gRPC releases answer 0 instead of raising
        raise OSError(f"cannot bind {host}:{port}")
    server.start()
    return server, bound
