"""mmentail-serve: TF Serving's REST API over an export, batching, and bad requests refused."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis.prediction_service_pb2_grpc import PredictionServiceStub
from test_bad_input import png_claiming

from helpers import encode_image, random_image_bytes
from mmentail.schema import EXPORT_INPUTS, LABELS
from mmentail.serving.batcher import Batcher
from mmentail.serving.grpc_api import predict_request
from mmentail.serving.loaded import LoadedExport
from mmentail.serving.server import ModelServer

IMAGES = [random_image_bytes(11, (40, 30)), encode_image("blue", (20, 20)),
          encode_image("red", (30, 24), fmt="GIF"), random_image_bytes(12, (24, 48), "PNG")]
PAIRS = [{"text_1": f"flood warning downtown {i}", "image_1": IMAGES[i % 4],
          "text_2": f"river levels rising {i}", "image_2": IMAGES[(i + 1) % 4]}
         for i in range(8)]


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


def _instance(pair: dict) -> dict:
    return {name: _b64(value) if name.startswith("image") else value
            for name, value in pair.items()}


def _columns(pairs: list[dict]) -> dict:
    return {name: [_instance(pair)[name] for pair in pairs] for name in EXPORT_INPUTS}


def _start(server: ModelServer) -> ModelServer:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _stop(server: ModelServer) -> None:
    server.shutdown()
    server.server_close()


def _predict_at_once(server: ModelServer, bodies: dict) -> dict:
    """{key: (status, answer)} of one `:predict` request per body, all sent together by
    as many client threads; stops `server` afterwards."""
    barrier, answers = threading.Barrier(len(bodies)), {}

    def client(key) -> None:
        barrier.wait()
        answers[key] = _call(server, "POST", ":predict", bodies[key])

    threads = [threading.Thread(target=client, args=(key,)) for key in bodies]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        _stop(server)
    return answers


def _call(server: ModelServer, method: str, path: str, body: object = None):
    """(status, JSON answer) of one request to `server.url + path`."""
    host, port = server.server_address[:2]
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        connection.request(method, f"/v1/models/{server.model_name}{path}", body=data)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def server(export):
    server = _start(ModelServer(("127.0.0.1", 0), export, batch_timeout=0.02,
                                max_request_bytes=200_000))
    yield server
    _stop(server)


def _direct(export: LoadedExport, pairs: list[dict]) -> dict:
    """The loaded signature's own answer for `pairs`."""
    outputs = export.signature(**{name: tf.constant([pair[name] for pair in pairs], tf.string)
                                  for name in EXPORT_INPUTS})
    return {"probabilities": outputs["probabilities"].numpy(),
            "label": [label.decode() for label in outputs["label"].numpy()]}


def test_status_and_metadata_have_tf_servings_shape(server):
    assert _call(server, "GET", "") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}}]})
    assert _call(server, "GET", "/versions/1")[0] == 200
    status, metadata = _call(server, "GET", "/metadata")
    assert status == 200
    assert metadata["model_spec"] == {"name": "mmentail", "signature_name": "", "version": "1"}
    signature_defs = metadata["metadata"]["signature_def"]["signature_def"]
    # The export's Keras 3 `serve` endpoint is a function, not a signature: not listed.
    assert sorted(signature_defs) == ["__saved_model_init_op", "serving_default"]
    signature = signature_defs["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert sorted(signature["inputs"]) == sorted(EXPORT_INPUTS)
    for spec in signature["inputs"].values():
        assert spec["dtype"] == "DT_STRING"
        assert [d["size"] for d in spec["tensor_shape"]["dim"]] == ["-1"]
    outputs = signature["outputs"]
    assert outputs["probabilities"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in outputs["probabilities"]["tensor_shape"]["dim"]] == ["-1", "3"]
    assert outputs["label"]["dtype"] == "DT_STRING"


def test_row_format_gives_the_exports_answers(server, export):
    status, answer = _call(server, "POST", ":predict",
                           {"signature_name": "serving_default",
                            "instances": [_instance(pair) for pair in PAIRS[:3]]})
    assert status == 200 and len(answer["predictions"]) == 3
    expected = _direct(export, PAIRS[:3])
    np.testing.assert_allclose([p["probabilities"] for p in answer["predictions"]],
                               expected["probabilities"], atol=1e-5)
    assert [p["label"] for p in answer["predictions"]] == expected["label"]
    assert all(set(p) == {"probabilities", "label"} for p in answer["predictions"])


def test_columnar_format_gives_the_exports_answers(server, export):
    status, answer = _call(server, "POST", ":predict", {"inputs": _columns(PAIRS[3:6])})
    assert status == 200 and set(answer) == {"outputs"}
    expected = _direct(export, PAIRS[3:6])
    np.testing.assert_allclose(answer["outputs"]["probabilities"], expected["probabilities"],
                               atol=1e-5)
    assert answer["outputs"]["label"] == expected["label"]
    assert set(answer["outputs"]["label"]) <= set(LABELS)


def test_concurrent_requests_are_answered_right_and_batched(export):
    server = _start(ModelServer(("127.0.0.1", 0), export, batch_timeout=0.5))
    expected = _direct(export, PAIRS)
    answers = _predict_at_once(server, {i: {"instances": [_instance(pair)]}
                                        for i, pair in enumerate(PAIRS)})
    for i, (status, answer) in sorted(answers.items()):
        assert status == 200
        np.testing.assert_allclose(answer["predictions"][0]["probabilities"],
                                   expected["probabilities"][i], atol=1e-5)
        assert answer["predictions"][0]["label"] == expected["label"][i]
    assert len(answers) == len(PAIRS)
    assert server.batcher.stats.model_calls < len(PAIRS)
    assert server.batcher.stats.largest_batch > 1


GOOD = _instance(PAIRS[0])
_TRUNCATED = random_image_bytes(13, (64, 48))


@pytest.mark.parametrize("body, field", [
    (b"{not json", "JSON Parse error"),
    (b"[1, 2]", "JSON object"),
    ({}, "needs \"instances\" (row format) or \"inputs\""),
    ({"instances": [GOOD], "inputs": _columns(PAIRS[:1])}, "not both"),
    ({"instances": GOOD}, "instances must be a list"),
    ({"instances": [GOOD, "text"]}, "instances[1] must be an object"),
    ({"instances": [{k: v for k, v in GOOD.items() if k != "image_2"}]},
     "instances[0]: missing input(s) image_2"),
    ({"instances": [{**GOOD, "image_3": GOOD["image_1"]}]}, "unknown input(s) image_3"),
    ({"instances": [{**GOOD, "text_1": 3}]}, "text_1[0]: expected a string, got a number"),
    ({"instances": [{**GOOD, "image_1": "raw bytes"}]}, "image_1[0]: expected {\"b64\""),
    ({"instances": [GOOD, {**GOOD, "image_2": {"b64": "not*base64"}}]},
     "image_2[1]: not valid base64"),
    ({"instances": [{**GOOD, "image_2": _b64(b"<html>not found</html>")}]},
     "image_2[0]: the image is not a JPEG, PNG, GIF, BMP or WebP image"),
    ({"instances": [{**GOOD, "image_1": _b64(png_claiming(20_000, 10_000))}]},
     "image_1[0]: the image is 20000x10000 pixels, over the limit of 40000000"),
    ({"instances": [{**GOOD, "image_1": _b64(_TRUNCATED[:len(_TRUNCATED) // 2])}]},
     "image_1[0]: the image is a truncated JPEG"),
    ({"inputs": {**_columns(PAIRS[:2]), "image_2": [GOOD["image_2"]]}},
     "inputs.image_2 has 1 items but inputs.text_1 has 2"),
    ({"inputs": {**_columns(PAIRS[:1]), "text_1": "one text"}}, "inputs.text_1 must be a list"),
    ({"signature_name": "classify", "instances": [GOOD]}, "\"classify\" not found"),
])
def test_bad_requests_get_400_naming_the_field(server, body, field):
    status, answer = _call(server, "POST", ":predict", body)
    assert status == 400 and field in answer["error"], answer
    assert set(answer) == {"error"}
    assert _call(server, "POST", ":predict", {"instances": [GOOD]})[0] == 200


def test_unknown_paths_models_and_methods(server):
    assert _call(server, "GET", "/versions/2")[0] == 404
    assert _call(server, "GET", "/labels/stable")[0] == 404
    assert _call(server, "GET", ":predict")[0] == 405
    status, answer = _call(server, "POST", "x:predict", {"instances": [GOOD]})
    assert status == 404 and "Servable not found" in answer["error"]
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.request("GET", "/v2/anything")
    response = connection.getresponse()
    assert response.status == 404 and "error" in json.loads(response.read())
    assert _call(server, "GET", "")[0] == 200


def test_a_body_over_the_limit_is_refused_unread(server):
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(b"POST /v1/models/mmentail:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 5000000\r\n\r\n{\"instances\": [")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 413")
    assert "over the limit of 200000 bytes" in json.loads(body)["error"]
    assert _call(server, "POST", ":predict", {"instances": [GOOD]})[0] == 200


def _refusing_export() -> LoadedExport:
    """An export stand-in that refuses any batch holding the text 'refuse', as the model
    refuses an image its decoder cannot read."""
    def signature(**inputs):
        texts = inputs["text_1"].numpy().tolist()
        if b"refuse" in texts:
            raise tf.errors.InvalidArgumentError(
                None, None, "Graph execution error:\n\nDetected at node cond/image_2/map/"
                "DecodeJpeg defined at (most recent call last):\n<stack traces unavailable>\n"
                "Invalid JPEG data\n\t [[{{node DecodeJpeg}}]]")
        return {"probabilities": tf.fill([len(texts), 3], 1 / 3),
                "label": tf.fill([len(texts)], "NoEntailment")}

    return LoadedExport(None, {"modality": "text"}, {}, signature)


def test_a_request_the_model_refuses_fails_alone_with_its_message():
    server = _start(ModelServer(("127.0.0.1", 0), _refusing_export(), batch_timeout=0.5))
    answers = _predict_at_once(server, {text: {"instances": [{**GOOD, "text_1": text}]}
                                        for text in ("fine", "refuse", "also fine")})
    assert answers["refuse"] == (400, {"error": "image_2: Invalid JPEG data"})
    for text in ("fine", "also fine"):
        assert answers[text][0] == 200
        assert answers[text][1]["predictions"][0]["label"] == "NoEntailment"


def test_batcher_reruns_a_refused_batch_request_by_request():
    calls = []

    def predict(columns):
        calls.append(len(columns["x"]))
        if b"bad" in columns["x"]:
            raise tf.errors.InvalidArgumentError(None, None, "x[0]: bad")
        return {"y": np.asarray([len(v) for v in columns["x"]])}

    batcher = Batcher(predict, max_batch=4, timeout=0.5)
    results = {}

    def submit(items):
        try:
            results[items[0]] = batcher.submit({"x": items})["y"].tolist()
        except tf.errors.InvalidArgumentError as error:
            results[items[0]] = error.message

    threads = [threading.Thread(target=submit, args=(items,))
               for items in ([b"a", b"bb"], [b"bad"], [b"ccc"], [b"dddd", b"e", b"ff"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    batcher.close()
    assert results == {b"a": [1, 2], b"bad": "x[0]: bad", b"ccc": [3], b"dddd": [4, 1, 2]}
    assert max(calls) <= 4 and len(calls) < 8


class _ServerProcess:
    """`mmentail-serve` as a user starts it (with its gRPC API on a free port), its stderr
    read all along (a full pipe would block the server's writes), with Python's
    faulthandler on."""

    def __init__(self, export_dir, *, ignoring_sigint: bool):
        # An ignored signal stays ignored across exec: a shell starts background jobs so.
        inherited = signal.signal(signal.SIGINT, signal.SIG_IGN if ignoring_sigint
                                  else signal.default_int_handler)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-X", "faulthandler", "-c",
                 "import sys, mmentail_launcher; sys.exit(mmentail_launcher.serve())",
                 str(export_dir), "--port", "0", "--grpc-port", "0"],
                stderr=subprocess.PIPE, text=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        finally:
            signal.signal(signal.SIGINT, inherited)
        self.lines: list[str] = []
        self.serving = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            if "(Ctrl-C stops)" in line:
                self.serving.set()
        self.serving.set()  # the server exited: stop waiting

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def address(self) -> tuple[str, int]:
        assert self.serving.wait(timeout=180), "the server did not start"
        url = re.search(r"at http://([\d.]+):(\d+)/v1/models/mmentail", self.stderr)
        assert url, f"the server exited before serving:\n{self.stderr}"
        return url.group(1), int(url.group(2))

    def grpc_address(self) -> str:
        self.address()
        port = re.search(r"gRPC at [\d.]+:(\d+)", self.stderr)
        assert port, f"no gRPC port in the log:\n{self.stderr}"
        return f"127.0.0.1:{port.group(1)}"

    def stop(self, signum: int, within: float) -> int:
        """Sends `signum`; the exit code, or a failure with every thread's stack."""
        self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack
            self.process.wait(timeout=30)
            self._reader.join(timeout=10)
            pytest.fail(f"no stop within {within} s of {signal.Signals(signum).name}:\n"
                        + self.stderr)
        self._reader.join(timeout=10)
        return code


@pytest.mark.slow
def test_cli_serves_and_stops_cleanly_on_ctrl_c_and_sigterm(exported):
    """The console command stops within seconds of SIGINT (even when started with SIGINT
    ignored, as a shell's background job is) or SIGTERM, its gRPC API with it, with a
    client's connection to each still open; should it not, every thread's stack is in
    the failure."""
    one_pair = predict_request({name: [value] for name, value in PAIRS[0].items()})
    servers = {signal.SIGINT: _ServerProcess(exported[1], ignoring_sigint=True),
               signal.SIGTERM: _ServerProcess(exported[1], ignoring_sigint=False)}
    try:
        for signum, server in servers.items():
            connection = http.client.HTTPConnection(*server.address(), timeout=30)
            connection.request("POST", "/v1/models/mmentail:predict",
                               json.dumps({"instances": [_instance(PAIRS[0])]}))
            assert connection.getresponse().status == 200  # the batcher has run the model
            channel = grpc.insecure_channel(server.grpc_address())
            predictions = PredictionServiceStub(channel)
            assert predictions.Predict(one_pair, timeout=60).outputs["label"]
            assert server.stop(signum, within=15) == 0, server.stderr
            assert f"stopping ({signal.Signals(signum).name})" in server.stderr
            assert "stopped" in server.stderr
            with pytest.raises(grpc.RpcError) as gone:  # the gRPC API stopped too
                predictions.Predict(one_pair, timeout=10)
            assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
            channel.close()
    finally:
        for server in servers.values():
            if server.process.poll() is None:
                server.process.kill()
