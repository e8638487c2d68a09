"""`mmentail-serve`: an export behind TensorFlow Serving's REST API (and, with
`--grpc-port`, its gRPC API), with request batching.

    mmentail-serve runs/demo/export --port 8501 --grpc-port 8500
    curl http://127.0.0.1:8501/v1/models/mmentail
    curl -d @request.json http://127.0.0.1:8501/v1/models/mmentail:predict
    curl -d @request.json http://127.0.0.1:8501/v1/models/mmentail:explain

The endpoints and JSON are TF Serving's (:mod:`mmentail.serving.rest`), so a
client written for `tensorflow_model_server` works unchanged, and `:explain`
(KServe's V1 verb) explains each pair (:mod:`mmentail.serving.explain`); `GET /` is a page
for trying pairs in a browser (:mod:`mmentail.serving.page`). Concurrent
requests are merged into one model call (:mod:`mmentail.serving.batcher`). A bad
request gets `{"error": "..."}` with status 400 naming the field (413 for a body
over `--max-request-bytes`, 404 for an unknown path or model), and the server
goes on serving. One log line per request: method, path, status, pairs, time.
`--grpc-port` adds TF Serving's gRPC `PredictionService` on the same export and
batcher (:mod:`mmentail.serving.grpc_api`).

Example:
    server = ModelServer(("127.0.0.1", 0), load_export("runs/demo/export"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url  # http://127.0.0.1:<port>/v1/models/mmentail
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

import grpc
import tensorflow as tf

from mmentail.cli import run_command
from mmentail.errors import ConfigError
from mmentail.serving.batcher import Batcher
from mmentail.serving.explain import UnreadableImage, explain_pairs
from mmentail.serving.grpc_api import STOP_GRACE_S, start_grpc_server
from mmentail.serving.loaded import LoadedExport, load_export, model_error_message
from mmentail.serving.page import CONTENT_SECURITY_POLICY, PageAsset, page_asset
from mmentail.serving.rest import (
    BadRequest,
    PredictRequest,
    explain_response,
    model_metadata,
    model_status,
    parse_predict,
    predict_response,
    route,
)

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
log = logging.getLogger(__name__)


class ModelServer(ThreadingHTTPServer):
    """An HTTP server answering TF Serving's REST API for one loaded export.

    Args:
        address: (host, port); port 0 picks a free port (see :attr:`url`).
        export: the loaded export.
        model_name: the `<name>` in `/v1/models/<name>`.
        max_batch: most pairs in one model call.
        batch_timeout: seconds a request waits for others to share its call.
        max_request_bytes: larger bodies are refused (413) without being read.
    """

    daemon_threads = True  # a client holding a connection open does not block shutdown

    def __init__(self, address: tuple[str, int], export: LoadedExport, *,
                 model_name: str = "mmentail", max_batch: int = 64,
                 batch_timeout: float = 0.005,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        super().__init__(address, _Handler)
        self.export, self.model_name = export, model_name
        self.max_request_bytes = max_request_bytes
        self.batcher = Batcher(export.predict, max_batch, batch_timeout)

    @property
    def url(self) -> str:
        """The model's base URL, e.g. `http://127.0.0.1:8501/v1/models/mmentail`."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1/models/{self.model_name}"

    def server_close(self) -> None:
        super().server_close()
        self.batcher.close()

    def answer(self, endpoint: str, body: bytes) -> tuple[dict[str, Any], int]:
        """The JSON answer to an endpoint and the number of pairs it labelled.

        Raises:
            BadRequest: the request is refused (the model's own refusals included).
        """
        if endpoint == "status":
            return model_status(), 0
        if endpoint == "metadata":
            return model_metadata(self.model_name, self.export.signature_defs), 0
        request = parse_predict(body, check_images=self.export.modality != "text",
                                max_pixels=self.export.max_pixels)
        if endpoint == "explain":
            return self._explain(request), request.size
        return predict_response(self.predict(request.columns), request.row_format), request.size

    def predict(self, columns: dict[str, list[bytes]]) -> dict[str, Any]:
        """The export's outputs for checked columns, through the batcher (REST's and gRPC's).

        Raises:
            BadRequest: the model refused an item, in its own words (`image_2: ...`).
        """
        try:
            return self.batcher.submit(columns)
        except tf.errors.InvalidArgumentError as error:
            raise BadRequest(model_error_message(error)) from None

    def _explain(self, request: PredictRequest) -> dict[str, Any]:
        """`:explain`: each pair explained, its variants through the batcher (a refusal
        of the model's is a :class:`BadRequest` in its words, as for `:predict`)."""
        try:
            explanations = explain_pairs(self.predict, request.columns,
                                         modality=self.export.modality,
                                         max_batch=self.batcher.max_batch)
        except UnreadableImage as error:
            raise BadRequest(str(error)) from None
        return explain_response([why.to_json() for why in explanations], request.row_format)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connections
    server_version = "mmentail-serve"
    timeout = 60  # seconds a client may stall mid-request before its connection is dropped
    server: ModelServer

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def handle_expect_100(self) -> bool:
        """Refuses an oversized body before the client sends it (curl's `Expect`)."""
        try:
            self._content_length()
        except BadRequest as error:
            self.close_connection = True
            self._send(error.status, {"error": str(error)})
            log.info("%s %s %d pairs=0 (refused before the body)", self.command, self.path,
                     error.status)
            return False
        return super().handle_expect_100()

    def _handle(self, method: str) -> None:
        start, pairs = time.monotonic(), 0
        try:
            body = self._read_body()  # first: an unread body would be taken for a request
            asset = page_asset(self.path, self.server.model_name) if method == "GET" else None
            if asset is not None:
                self._send_page(asset)
                log.info("%s %s 200 pairs=0 %.1f ms", method, self.path,
                         (time.monotonic() - start) * 1000)
                return
            answer, pairs = self.server.answer(route(method, self.path, self.server.model_name),
                                               body)
            status = 200
        except BadRequest as error:
            answer, status = {"error": str(error)}, error.status
        except TimeoutError:
            answer, status = {"error": "the request body did not arrive in time"}, 408
            self.close_connection = True
        except Exception as error:  # a bug: answered, logged, and the server goes on
            log.exception("%s %s failed", method, self.path)
            answer, status = {"error": f"internal error: {type(error).__name__}: {error}"}, 500
        self._send(status, answer)
        log.info("%s %s %d pairs=%d %.1f ms", method, self.path, status, pairs,
                 (time.monotonic() - start) * 1000)

    def _content_length(self) -> int:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
        if length < 0:
            raise BadRequest("Content-Length is negative")
        if length > self.server.max_request_bytes:
            raise BadRequest(f"the request body of {length} bytes is over the limit of "
                             f"{self.server.max_request_bytes} bytes (--max-request-bytes)",
                             413)
        return length

    def _read_body(self) -> bytes:
        """The body (b"" if none), read whole once its length is known to be allowed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise BadRequest("chunked request bodies are not supported: send Content-Length",
                             411)
        try:
            length = self._content_length()
        except BadRequest:
            self.close_connection = True  # the unread body must not be taken for a request
            raise
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise BadRequest(f"the request body ended after {len(body)} of {length} bytes")
        return body

    def _send_page(self, asset: PageAsset) -> None:
        """A page file, its scripts allowed to reach this server only."""
        self._send_bytes(200, asset.body, asset.content_type,
                         {"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                          "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    def _send(self, status: int, answer: dict[str, Any]) -> None:
        self._send_bytes(status, json.dumps(answer).encode("utf-8"), "application/json")

    def _send_bytes(self, status: int, data: bytes, content_type: str,
                    headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left; nothing to answer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)  # requests are logged by _handle, one line each


def build_parser() -> argparse.ArgumentParser:
    """`mmentail-serve`'s flags; their defaults are TF Serving's port and a 5 ms batch wait."""
    parser = argparse.ArgumentParser(
        prog="mmentail-serve",
        description="Serve an export over TensorFlow Serving's REST API "
                    "(/v1/models/<name>, /metadata, :predict) and, with --grpc-port, its "
                    "gRPC API, batching concurrent requests.")
    parser.add_argument("export_dir", help="serving export (a run's <output>/export)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8501, help="port (TF Serving's REST port)")
    parser.add_argument("--model-name", default="mmentail", help="<name> in /v1/models/<name>")
    parser.add_argument("--max-batch", type=int, default=64, help="most pairs in one model call")
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0,
                        help="how long a request waits for others to share its model call")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help="larger request bodies are refused with 413 "
                             "(gRPC: RESOURCE_EXHAUSTED)")
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="also answer TF Serving's gRPC API (PredictionService, "
                             "ModelService) on this port (TF Serving's is 8500; 0: a free "
                             "port); off by default")
    return parser


def serve(args: argparse.Namespace) -> int:
    """Loads the export and serves until Ctrl-C or SIGTERM; returns 0 after a clean stop."""
    if args.max_batch < 1 or args.batch_timeout_ms < 0 or args.max_request_bytes < 1:
        raise ConfigError("--max-batch and --max-request-bytes must be at least 1, "
                          "--batch-timeout-ms at least 0")
    export = load_export(args.export_dir)
    log.info("loading %s", export.path)
    export.warm_up()
    try:
        server = ModelServer((args.host, args.port), export, model_name=args.model_name,
                             max_batch=args.max_batch,
                             batch_timeout=args.batch_timeout_ms / 1000,
                             max_request_bytes=args.max_request_bytes)
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    grpc_server = None
    if args.grpc_port is not None:
        try:
            grpc_server, grpc_port = start_grpc_server(server, args.host, args.grpc_port)
        except OSError as e:
            server.server_close()
            raise ConfigError(f"cannot listen on {args.host}:{args.grpc_port} for gRPC: "
                              f"{e.strerror or e}") from None
        log.info("gRPC at %s:%d", args.host, grpc_port)
    serve_until_signalled(server, grpc_server=grpc_server)
    log.info("stopped")
    return 0


def serve_until_signalled(server: ModelServer,
                          signals: tuple[int, ...] = STOP_SIGNALS, *,
                          grpc_server: grpc.Server | None = None) -> int:
    """Serves on a thread until one of `signals` arrives, then stops; returns the signal.

    The signals' handlers raise nothing: an exception raised by a handler lands
    wherever the main thread happens to be, and mid-way through `threading` or
    `socketserver` code it can leave a lock held and the stop hung. Instead the
    main thread sleeps in `recv` on a socket that Python's C-level handler writes
    each signal's number to (`signal.set_wakeup_fd`), whichever thread the
    kernel delivered it to, and stops the server from there: the serving loop
    ends within its 0.5 s poll, queued requests are answered, the listening
    socket is closed. Both signals get a handler even when the server was
    started with one ignored (a shell's background job ignores SIGINT). Once a
    signal has arrived the previous handlers are back, so a second Ctrl-C
    interrupts a stop that hangs. A `grpc_server` (already started, on the
    same batcher) stops with it: it takes no new call at once, and calls in
    flight get :data:`~mmentail.serving.grpc_api.STOP_GRACE_S` seconds, while the
    HTTP server stops; the batcher closes after both. Call it from the main
    thread: only it can set signal handlers.

    Example:
        serve_until_signalled(ModelServer(("127.0.0.1", 8501), load_export("export")))
    """
    wake_read, wake_write = socket.socketpair()
    wake_write.setblocking(False)
    previous_handlers = {signum: signal.signal(signum, _note_signal) for signum in signals}
    previous_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
    loop = threading.Thread(target=server.serve_forever, name="mmentail-http", daemon=True)
    loop.start()
    log.info("serving %s at %s (Ctrl-C stops)", server.export.path, server.url)
    try:
        signum = None
        while signum not in signals:
            signum = wake_read.recv(1)[0]  # other handled signals are written here too
        log.info("stopping (%s)", signal.Signals(signum).name)
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for handled, handler in previous_handlers.items():
            signal.signal(handled, handler)
        grpc_stopped = grpc_server.stop(STOP_GRACE_S) if grpc_server is not None else None
        server.shutdown()
        loop.join()
        if grpc_stopped is not None:
            grpc_stopped.wait()
        server.server_close()
        wake_read.close()
        wake_write.close()
    return signum


def _note_signal(signum: int, frame: Any) -> None:
    """A Python-level handler that does nothing: the C-level one has already written
    `signum` to the wake-up socket :func:`serve_until_signalled` waits on."""


def main(argv: Sequence[str] | None = None) -> int:
    """The `mmentail-serve` command: serves until stopped; a bad export or flag is a message."""
    return run_command(build_parser(), serve, argv)


if __name__ == "__main__":
    sys.exit(main())
