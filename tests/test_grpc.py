"""mmentail-serve's gRPC API: TF Serving's own stubs get REST's answers and REST's refusals."""

from __future__ import annotations

import json
import statistics

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from test_bad_input import png_claiming
from test_readme import SERVING_GUIDE, _block
from test_server import (
    _TRUNCATED,
    GOOD,
    PAIRS,
    _b64,
    _call,
    _columns,
    _refusing_export,
    _start,
    _stop,
)

from helpers import load_tool
from mmentail.schema import EXPORT_INPUTS, LABELS
from mmentail.serving.grpc_api import predict_request, start_grpc_server
from mmentail.serving.loaded import LoadedExport
from mmentail.serving.server import ModelServer

MAX_REQUEST_BYTES = 200_000


class _Served:
    """A REST server and its gRPC API on the same batcher, with TF Serving's stubs."""

    def __init__(self, export: LoadedExport, **options):
        self.http = _start(ModelServer(("127.0.0.1", 0), export, **options))
        self.grpc_server, self.port = start_grpc_server(self.http, "127.0.0.1", 0)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        self.grpc_server.stop(0).wait()
        _stop(self.http)


@pytest.fixture(scope="module")
def served(export):
    served = _Served(export, batch_timeout=0.02, max_request_bytes=MAX_REQUEST_BYTES)
    yield served
    served.stop()


def _request(pairs: list[dict], **columns: list) -> predict_pb2.PredictRequest:
    """A Predict request for `pairs`, `columns` replacing inputs' items."""
    return predict_request({name: columns.get(name, [pair[name] for pair in pairs])
                            for name in EXPORT_INPUTS})


def _outputs(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}


def test_predict_gives_rests_answers_through_the_same_batcher(served, export):
    status, rest = _call(served.http, "POST", ":predict", {"inputs": _columns(PAIRS[:4])})
    assert status == 200
    requests_before = served.http.batcher.stats.requests
    response = served.predictions.Predict(_request(PAIRS[:4]), timeout=60)
    assert served.http.batcher.stats.requests == requests_before + 1
    outputs = _outputs(response)
    signature_outputs = export.signature_defs["serving_default"]["outputs"]
    assert set(outputs) == set(signature_outputs) >= {"probabilities", "label", "logits"}
    assert outputs["probabilities"].shape == outputs["logits"].shape == (4, 3)
    np.testing.assert_allclose(outputs["probabilities"], rest["outputs"]["probabilities"],
                               atol=1e-6)
    labels = [label.decode() for label in outputs["label"]]
    assert labels == rest["outputs"]["label"] and set(labels) <= set(LABELS)
    assert response.model_spec.name == "mmentail"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    only_labels = served.predictions.Predict(_with_outputs("label"), timeout=60).outputs
    assert list(only_labels) == ["label"]
    assert tf.make_ndarray(only_labels["label"]).tolist() == outputs["label"].tolist()[:2]


def test_the_guides_client_snippet_gets_rests_answer(served, tmp_path, monkeypatch, capsys):
    (tmp_path / "post_a.jpg").write_bytes(PAIRS[0]["image_1"])
    (tmp_path / "post_b.png").write_bytes(PAIRS[0]["image_2"])
    monkeypatch.chdir(tmp_path)
    snippet = _block("grpc-snippet", SERVING_GUIDE)
    assert "127.0.0.1:8500" in snippet
    exec(compile(snippet.replace(":8500", f":{served.port}"), str(SERVING_GUIDE), "exec"), {})
    label, probabilities = capsys.readouterr().out.split(" ", 1)
    pair = {**PAIRS[0], "text_1": "Breaking: the river flood downtown",
            "text_2": "Update on the flood warning"}
    status, rest = _call(served.http, "POST", ":predict", {"inputs": _columns([pair])})
    assert status == 200 and label == rest["outputs"]["label"][0]
    np.testing.assert_allclose([float(p) for p in probabilities.strip(" []\n").split()],
                               rest["outputs"]["probabilities"][0], atol=1e-6)


def test_metadata_and_status_answer_as_rest_does(served):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mmentail"
    response = served.predictions.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    status, rest = _call(served.http, "GET", "/metadata")
    assert status == 200
    assert json_format.MessageToDict(
        signatures, preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True) == rest["metadata"]["signature_def"]
    assert response.model_spec.name == "mmentail" and response.model_spec.version.value == 1

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "mmentail"
    versions = served.models.GetModelStatus(status_request, timeout=30).model_version_status
    assert len(versions) == 1 and versions[0].version == 1
    assert versions[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert versions[0].status.error_code == 0  # OK
    with pytest.raises(grpc.RpcError) as refused:  # the export has a predict signature only
        served.predictions.Classify(classification_pb2.ClassificationRequest(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED

    status_request.model_spec.name = "other"
    with pytest.raises(grpc.RpcError) as refused:
        served.models.GetModelStatus(status_request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    del request.metadata_field[:]
    with pytest.raises(grpc.RpcError) as refused:
        served.predictions.GetModelMetadata(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata_field" in refused.value.details()


def test_a_port_in_use_is_refused(served):
    with pytest.raises(OSError):
        start_grpc_server(served.http, "127.0.0.1", served.port)


def _without(name: str) -> predict_pb2.PredictRequest:
    request = _request(PAIRS[:2])
    del request.inputs[name]
    return request


def _with_spec(**fields) -> predict_pb2.PredictRequest:
    request = _request(PAIRS[:2])
    for field, value in fields.items():
        if field == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, field, value)
    return request


def _with_tensor(name: str, tensor) -> predict_pb2.PredictRequest:
    request = _request(PAIRS[:2])
    request.inputs[name].CopyFrom(tensor)
    return request


def _with_outputs(*names: str) -> predict_pb2.PredictRequest:
    request = _request(PAIRS[:2])
    request.output_filter.extend(names)
    return request


def _rest_columns(**columns) -> dict:
    return {"inputs": {**_columns(PAIRS[:2]), **columns}}


_NOT_AN_IMAGE = b"<html>not found</html>"
_HUGE = png_claiming(20_000, 10_000)
_HALF = _TRUNCATED[:len(_TRUNCATED) // 2]

# (gRPC request, REST's twin (path, body) whose error must be gRPC's message word for
#  word, or None, the status code, words of the message)
TWINS = {
    "missing input": (lambda: _without("image_2"),
                      (":predict", {"inputs": {k: v for k, v in _columns(PAIRS[:2]).items()
                                               if k != "image_2"}}),
                      grpc.StatusCode.INVALID_ARGUMENT, "inputs: missing input(s) image_2"),
    "unknown input": (lambda: _with_tensor("image_3", tf.make_tensor_proto([b"x", b"y"])),
                      (":predict", _rest_columns(image_3=["x", "y"])),
                      grpc.StatusCode.INVALID_ARGUMENT, "unknown input(s) image_3"),
    "different batch sizes": (lambda: _request(PAIRS[:2], image_2=[PAIRS[0]["image_2"]]),
                              (":predict", _rest_columns(image_2=[GOOD["image_2"]])),
                              grpc.StatusCode.INVALID_ARGUMENT,
                              "inputs.image_2 has 1 items but inputs.text_1 has 2"),
    "not an image": (lambda: _request(PAIRS[:2], image_2=[_NOT_AN_IMAGE, PAIRS[1]["image_2"]]),
                     (":predict", _rest_columns(image_2=[_b64(_NOT_AN_IMAGE),
                                                         GOOD["image_2"]])),
                     grpc.StatusCode.INVALID_ARGUMENT,
                     "image_2[0]: the image is not a JPEG, PNG, GIF, BMP or WebP image"),
    "over the pixel limit": (lambda: _request(PAIRS[:2], image_1=[PAIRS[0]["image_1"], _HUGE]),
                             (":predict", _rest_columns(image_1=[GOOD["image_1"], _b64(_HUGE)])),
                             grpc.StatusCode.INVALID_ARGUMENT,
                             "image_1[1]: the image is 20000x10000 pixels, over the limit of "
                             "40000000"),
    "truncated image": (lambda: _request(PAIRS[:2], image_1=[_HALF, PAIRS[1]["image_1"]]),
                        (":predict", _rest_columns(image_1=[_b64(_HALF),
                                                            _columns(PAIRS[1:2])["image_1"][0]])),
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "image_1[0]: the image is a truncated JPEG"),
    "unknown signature": (lambda: _with_spec(signature_name="classify"),
                          (":predict", {"signature_name": "classify", **_rest_columns()}),
                          grpc.StatusCode.INVALID_ARGUMENT, "\"classify\" not found"),
    "unknown model": (lambda: _with_spec(name="mmentailx"),
                      ("x:predict", _rest_columns()),
                      grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest"),
    "unknown version": (lambda: _with_spec(version=2), ("/versions/2:predict", _rest_columns()),
                        grpc.StatusCode.NOT_FOUND, "Specific(mmentail, 2)"),
    "version label": (lambda: _with_spec(version_label="stable"),
                      ("/labels/stable:predict", _rest_columns()),
                      grpc.StatusCode.NOT_FOUND, "Unrecognized servable version label: stable"),
    "not a string tensor": (lambda: _with_tensor("text_1", tf.make_tensor_proto([1.0, 2.0])),
                            None, grpc.StatusCode.INVALID_ARGUMENT,
                            "inputs.text_1 must be a string tensor (DT_STRING), not DT_FLOAT"),
    "not 1-D": (lambda: _with_tensor("image_1", tf.make_tensor_proto(
                    [[PAIRS[0]["image_1"]], [PAIRS[1]["image_1"]]])),
                None, grpc.StatusCode.INVALID_ARGUMENT,
                "inputs.image_1 must be 1-D (one item per pair), not of shape [2, 1]"),
    "a scalar": (lambda: _with_tensor("text_2", tf.make_tensor_proto(b"one text")),
                 None, grpc.StatusCode.INVALID_ARGUMENT,
                 "inputs.text_2 must be 1-D (one item per pair), not of shape []"),
    "unknown output": (lambda: _with_outputs("scores"), None, grpc.StatusCode.INVALID_ARGUMENT,
                       "output tensor alias not found in signature: scores"),
    "over --max-request-bytes": (lambda: _request(PAIRS[:2], image_1=[bytes(MAX_REQUEST_BYTES),
                                                                      PAIRS[1]["image_1"]]),
                                 None, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"vs. {MAX_REQUEST_BYTES})"),
}


@pytest.mark.parametrize("case", TWINS)
def test_bad_requests_get_rests_refusal_as_a_status(served, case):
    make, twin, code, words = TWINS[case]
    with pytest.raises(grpc.RpcError) as refused:
        served.predictions.Predict(make(), timeout=60)
    assert refused.value.code() == code
    assert words in refused.value.details()
    if twin is not None:
        path, body = twin
        status, answer = _call(served.http, "POST", path, body)
        assert status == {grpc.StatusCode.INVALID_ARGUMENT: 400,
                          grpc.StatusCode.NOT_FOUND: 404}[code]
        assert refused.value.details() == answer["error"]
    assert served.predictions.Predict(_request(PAIRS[:1]), timeout=60).outputs["label"]


def test_a_request_the_model_refuses_gets_its_message_and_the_server_goes_on():
    served = _Served(_refusing_export(), batch_timeout=0.01)
    try:
        request = _request([{**PAIRS[0], "text_1": "refuse"}])
        with pytest.raises(grpc.RpcError) as refused:
            served.predictions.Predict(request, timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status, answer = _call(served.http, "POST", ":predict",
                               {"inputs": {**_columns(PAIRS[:1]), "text_1": ["refuse"]}})
        assert refused.value.details() == answer["error"] == "image_2: Invalid JPEG data"
        labels = served.predictions.Predict(_request(PAIRS[:2]), timeout=60).outputs["label"]
        assert tf.make_ndarray(labels).tolist() == [b"NoEntailment"] * 2
    finally:
        served.stop()


def test_the_benchmark_tool_measures_both_protocols(exported, tmp_path):
    tool = load_tool("grpc_benchmark")
    out = tmp_path / "grpc.json"
    assert tool.main([str(exported[1]), "--pairs", "12", "--source-size", "40x30",
                      "--clients", "2", "--requests", "1", "--request-pairs", "4",
                      "--rounds", "2", "--cache-dir", str(tmp_path / "cache"),
                      "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for protocol in ("rest", "grpc"):
        assert len(result["rounds"][protocol]) == len(result["cpu_ms_rounds"][protocol]) == 2
        assert result[f"{protocol}_pairs_per_s"] == statistics.median(result["rounds"][protocol])
        assert result[f"{protocol}_cpu_ms_per_pair"] > 0
    ratios = [g / r for g, r in zip(result["rounds"]["grpc"], result["rounds"]["rest"])]
    assert result["grpc_over_rest"] == pytest.approx(statistics.median(ratios))
    # warm-up (2 x 1 request of 4 pairs a protocol) and 2 rounds (2 x 4 pairs a protocol)
    assert result["largest_batch"] <= 8 and result["model_calls"] >= 4
