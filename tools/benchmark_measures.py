"""The three measurements of `tools/benchmark.py`, each run in its own process.

- :func:`measure_keras_io`: the keras.io recipe's pipeline (`keras_io_recipe.py`) and
  `model.fit` of the full model, encoders forward again in every epoch.
- :func:`measure_mmentail`: mmentail's pipeline, encoder features computed once, head-only
  epochs; then the export the third measurement serves.
- :func:`measure_serving`: the export's latency at batch 1 and throughput at batch 1, 8
  and 64, the model's own forward on decoded inputs, the server under 8 clients, and
  the most export / forward this machine's cores allow.
- :func:`measure_train_process`: the whole `mmentail-train` command on the same pairs and
  settings, timed from outside: start-up, reading and checking, splitting, encoding,
  head epochs, test evaluation and export.

All take the benchmark's configuration (the `keras-io` preset on generated pairs):
`config.model` is what both sides build, `config.optim` how both fit.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

# --- what both sides share ------------------------------------------------------------------


def _epoch_clock():
    import tf_keras

    class EpochClock(tf_keras.callbacks.Callback):
        """Records the wall-clock time at the end of every epoch (validation included)."""

        def __init__(self):
            super().__init__()
            self.ends: list[float] = []

        def on_epoch_end(self, epoch, logs=None):
            self.ends.append(time.perf_counter())

    return EpochClock()


def _epoch_figures(start: float, ends: list[float], finished: float) -> dict[str, float]:
    """Cold first epoch, median later epoch and total seconds from epoch end times."""
    durations = [end - begin for begin, end in zip([start, *ends], ends)]
    return {"cold_epoch_s": durations[0], "later_epoch_s": statistics.median(durations[1:]),
            "total_s": finished - start}


def _pipeline_examples_per_s(make: Callable[[], Any], examples: int, repeats: int) -> float:
    """Median examples/s of building a fresh dataset with `make()` and one full pass
    over it: a cold pass, which reads, decodes, tokenizes and caches everything."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in make():
            pass
        rates.append(examples / (time.perf_counter() - started))
    return statistics.median(rates)


def _setup(config):
    """The training and validation rows (90% / 10%, unstratified, so that a smoke run of a
    few rows splits too) and the compiled model, as `mmentail-train` compiles it."""
    import tf_keras
    from sklearn.model_selection import train_test_split

    from mmentail.data.pairs import read_pairs
    from mmentail.model.build import build_model
    from mmentail.training.fit import compile_metrics

    tf_keras.utils.set_random_seed(config.seed)
    pairs = read_pairs(config.data.data_csv, config.data.image_dir)
    train, val = train_test_split(pairs, test_size=0.1, random_state=config.seed)
    model = build_model(config.model)

    def compile_(fitted):
        fitted.compile(optimizer=tf_keras.optimizers.Adam(config.optim.learning_rate),
                       loss=tf_keras.losses.CategoricalCrossentropy(),
                       metrics=compile_metrics())

    return train, val, model, compile_


# --- the three measurements ---------------------------------------------------------------


def measure_keras_io(config, *, repeats: int, **_) -> dict[str, float]:
    """Times the keras.io pipeline and `model.fit` of the full model every epoch."""
    from keras_io_recipe import keras_io_dataset, keras_io_text_model

    train, val, model, compile_ = _setup(config)
    compile_(model)
    text_model = keras_io_text_model(config.model.preprocess_handle, config.model.seq_length)
    common = {"image_size": (config.model.image_size,) * 2, "batch_size": config.optim.batch_size}
    rate = _pipeline_examples_per_s(
        lambda: keras_io_dataset(train, text_model, training=True, **common), len(train),
        repeats)
    clock = _epoch_clock()
    start = time.perf_counter()
    model.fit(keras_io_dataset(train, text_model, training=True, **common),
              validation_data=keras_io_dataset(val, text_model, training=False, **common),
              epochs=config.optim.epochs, callbacks=[clock], verbose=0)
    return {**_epoch_figures(start, clock.ends, time.perf_counter()),
            "pipeline_examples_per_s": rate, "peak_rss_mb": _peak_rss_mb()}


def measure_mmentail(config, *, repeats: int, export_dir: str, **_) -> dict[str, float]:
    """Times mmentail's pipeline, feature cache and head-only epochs, then exports."""
    import numpy as np
    import tensorflow as tf

    from mmentail.pipeline.dataset import make_dataset
    from mmentail.pipeline.preprocess import load_preprocessor
    from mmentail.serving.export import export_savedmodel
    from mmentail.training.feature_cache import cached_features, feature_dataset

    train, val, model, compile_ = _setup(config)
    head, encoders = model.get_layer("head"), model.get_layer("encoders")
    compile_(head)
    preprocessor = load_preprocessor(config.model.preprocess_handle)
    size, batch_size = (config.model.image_size,) * 2, config.optim.batch_size
    common = {"image_size": size, "seq_length": config.model.seq_length,
              "batch_size": batch_size, "seed": config.seed}
    rate = _pipeline_examples_per_s(
        lambda: make_dataset(train, preprocessor, training=True, **common), len(train),
        repeats)

    clock = _epoch_clock()
    start = time.perf_counter()
    # A cold cache: features are encoded now (persist=False keeps nothing on disk).
    fit_train, fit_val = (
        feature_dataset(*cached_features(
            encoders, lambda: make_dataset(part, preprocessor, training=False, cache=False,
                                           **common),
            strategy=tf.distribute.get_strategy(), directory=export_dir,
            key={"split": name, "count": len(part)}, persist=False),
            batch_size=batch_size, training=training, seed=config.seed)
        for name, part, training in (("train", train, True), ("val", val, False)))
    head.fit(fit_train, validation_data=fit_val, epochs=config.optim.epochs, callbacks=[clock],
             verbose=0)
    figures = _epoch_figures(start, clock.ends, time.perf_counter())
    figures["peak_rss_mb"] = _peak_rss_mb()  # training's peak, before the export below

    # The encoders alone, on the same examples already decoded and tokenized, with
    # their predict function built anew, as the cold epoch built it.
    decoded = [features for part in (train, val) for features, _ in make_dataset(
        part, preprocessor, training=False, **common)]
    inputs = {key: np.concatenate([batch[key] for batch in decoded]) for key in decoded[0]}
    encoders.predict_function = None
    started = time.perf_counter()
    encoders.predict(inputs, batch_size=batch_size, verbose=0)
    figures["encoder_forward_s"] = time.perf_counter() - started

    export_savedmodel(model, preprocessor, export_dir, image_size=size,
                      seq_length=config.model.seq_length)
    return {**figures, "pipeline_examples_per_s": rate}


def measure_serving(config, *, export_dir: str, serving_calls: int,
                    serving_rounds: int = 3, **_) -> dict[str, Any]:
    """The export's speed (batch 1, 8, 64), the model's own forward on decoded inputs
    (the limit the export can reach), and the server's under 8 concurrent clients.

    The three figures compared (export batch 64, forward batch 64, server) are
    measured in `serving_rounds` interleaved rounds, a few seconds apart, and each
    ratio is the median of the rounds' own ratios: on a shared machine the load
    moves every figure by ~10% from one minute to the next, and a ratio of figures
    measured minutes apart would carry that drift."""
    import numpy as np
    import tensorflow as tf

    import mmentail  # noqa: F401  (registers the tensorflow-text ops the export uses)

    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    rows = serving_rows(config.data.data_csv, config.data.image_dir)

    def batch(first: int, size: int) -> dict[str, tf.Tensor]:
        chosen = _cycle(rows, first, size)
        return {key: tf.constant([row[key] for row in chosen]) for key in chosen[0]}

    serve(**batch(0, 1))
    latencies = []
    for i in range(serving_calls):
        inputs = batch(i, 1)
        started = time.perf_counter()
        serve(**inputs)["probabilities"].numpy()
        latencies.append((time.perf_counter() - started) * 1000)
    figures: dict[str, Any] = {"p50_ms_batch1": float(np.percentile(latencies, 50)),
                               "p99_ms_batch1": float(np.percentile(latencies, 99)),
                               "pairs_per_s_batch1": 1000 / statistics.median(latencies)}
    inputs_8, inputs_64 = batch(0, 8), batch(0, 64)
    figures["pairs_per_s_batch8"] = _pairs_per_s(
        lambda: serve(**inputs_8)["probabilities"].numpy(), 8)
    export_64 = lambda: serve(**inputs_64)["probabilities"].numpy()  # noqa: E731
    forward_64 = _forward_call(config, inputs_64)
    rounds: dict[str, list[float]] = {"pairs_per_s_batch64": [],
                                      "forward_pairs_per_s_batch64": [],
                                      "server_pairs_per_s_8_clients": []}
    with LoadedServer(export_dir, rows) as server:
        export_64(), forward_64()  # warm-up (the server warms up per request size)
        for _ in range(serving_rounds):
            rounds["pairs_per_s_batch64"].append(
                _pairs_per_s(export_64, 64, repeats=1, warm_up=False))
            rounds["forward_pairs_per_s_batch64"].append(
                _pairs_per_s(forward_64, 64, repeats=1, warm_up=False))
            rounds["server_pairs_per_s_8_clients"].append(server.pairs_per_s(1))
        figures["server_pairs_per_s_8_clients_x8"] = server.pairs_per_s(8)
    figures.update({name: statistics.median(values) for name, values in rounds.items()})
    figures["export_over_forward"] = statistics.median(
        e / f for e, f in zip(rounds["pairs_per_s_batch64"],
                              rounds["forward_pairs_per_s_batch64"]))
    figures["server_over_export"] = statistics.median(
        s / e for s, e in zip(rounds["server_pairs_per_s_8_clients"],
                              rounds["pairs_per_s_batch64"]))
    figures["rounds"] = rounds
    figures.update(_export_ceiling(forward_64, _decode_call(config, inputs_64)))
    return figures


def _export_ceiling(forward: Callable[[], Any], decode: Callable[[], Any],
                    repeats: int = 3) -> dict[str, float]:
    """The most `export_over_forward` this machine allows, from CPU seconds.

    The export does the forward's work and decodes the batch's images too, on the
    same cores: it takes at least the forward's wall time, and at least the two's
    CPU seconds spread over every core the process may use. So export / forward
    is at most forward wall / max(forward wall, (forward CPU + decoding CPU) / cores).
    """
    cores = len(os.sched_getaffinity(0))
    forward_wall, forward_cpu = _wall_and_cpu(forward, repeats)
    _, decode_cpu = _wall_and_cpu(decode, repeats)
    return {"forward_cpu_s_batch64": forward_cpu, "decode_cpu_s_batch64": decode_cpu,
            "export_over_forward_ceiling":
                forward_wall / max(forward_wall, (forward_cpu + decode_cpu) / cores)}


def _wall_and_cpu(call: Callable[[], Any], repeats: int,
                  warm_up: bool = True) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds (all threads) of `repeats`
    calls of `call`, after a warm-up call unless `call` is already warm."""
    if warm_up:
        call()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def serving_rows(data_csv: str, image_dir: str) -> list[dict[str, Any]]:
    """The pairs of a CSV as a client sends them: texts, and each image file's bytes."""
    from mmentail.data.pairs import read_pairs

    pairs = read_pairs(data_csv, image_dir)
    return [{"text_1": row.text_1, "text_2": row.text_2,
             "image_1": Path(row.image_1_path).read_bytes(),
             "image_2": Path(row.image_2_path).read_bytes()} for row in pairs.itertuples()]


def _cycle(rows: list[dict[str, Any]], first: int, size: int) -> list[dict[str, Any]]:
    """`size` rows from `first` on, starting over at the end (a batch larger than the data)."""
    return [rows[(first + i) % len(rows)] for i in range(size)]


def _pairs_per_s(call: Callable[[], Any], size: int, repeats: int = 3,
                 warm_up: bool = True) -> float:
    """Pairs/s of the median of `repeats` calls of `call` on `size` pairs, after a warm-up
    call unless `call` is already warm."""
    return size / _wall_and_cpu(call, repeats, warm_up)[0]


def _forward_call(config, inputs: dict[str, Any]) -> Callable[[], Any]:
    """The model alone, on `inputs` already decoded and tokenized: what the export does
    after its preprocessing, so the most it can reach."""
    import tensorflow as tf

    from mmentail.model.build import build_model
    from mmentail.pipeline.preprocess import decode_image, load_preprocessor, pack_text_pair
    from mmentail.schema import IMAGE_KEYS

    model = build_model(config.model)  # its speed does not depend on the weights' values
    size = (config.model.image_size,) * 2
    features = pack_text_pair(load_preprocessor(config.model.preprocess_handle),
                              inputs["text_1"], inputs["text_2"], config.model.seq_length)
    for key in IMAGE_KEYS:
        features[key] = tf.stack([decode_image(image, size) for image in inputs[key]])
    forward = tf.function(lambda features: model(features, training=False))
    return lambda: forward(features).numpy()


def _decode_call(config, inputs: dict[str, Any]) -> Callable[[], Any]:
    """Decoding alone: both image inputs of the batch through the export's own decoding
    (:func:`mmentail.serving.export.decode_images`), as its `serve` runs it."""
    import tensorflow as tf

    from mmentail.schema import IMAGE_KEYS
    from mmentail.serving.export import decode_images

    size = (config.model.image_size,) * 2
    decode = tf.function(lambda: [decode_images(inputs[key], key, size) for key in IMAGE_KEYS])
    return lambda: [images.numpy() for images in decode()]


class LoadedServer:
    """`mmentail-serve`'s server on 127.0.0.1 in this process, and clients to load it;
    with `grpc`, its gRPC API too, on the same batcher."""

    def __init__(self, export_dir: str, rows: list[dict[str, Any]], clients: int = 8,
                 requests: int = 8, grpc: bool = False):
        self.export_dir, self.rows, self.clients, self.requests = (export_dir, rows, clients,
                                                                   requests)
        self.grpc = grpc
        # (protocol, request size) -> the requests (JSON bodies, or Predict messages)
        self._requests: dict[tuple[str, int], list[Any]] = {}

    def __enter__(self) -> "LoadedServer":
        import threading

        from mmentail.serving.loaded import load_export
        from mmentail.serving.server import ModelServer

        self.server = ModelServer(("127.0.0.1", 0), load_export(self.export_dir))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        if self.grpc:
            from mmentail.serving.grpc_api import start_grpc_server

            self.grpc_server, self.grpc_port = start_grpc_server(self.server, "127.0.0.1", 0)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.grpc:
            self.grpc_server.stop(0).wait()
        self.server.shutdown()
        self.server.server_close()

    def pairs_per_s(self, size: int, protocol: str = "rest") -> float:
        """Pairs/s with `clients` concurrent clients, each sending `requests` TF Serving
        requests of `size` pairs one after the other: REST's `:predict` (images base64
        in JSON) or, for `protocol="grpc"`, gRPC's `Predict` (one channel per client).
        The requests are made, and one client's worth sent as a warm-up, on a
        (protocol, size)'s first measurement."""
        import concurrent.futures

        send = {"rest": self._post, "grpc": self._predict}[protocol]
        if (protocol, size) not in self._requests:
            self._requests[protocol, size] = self._make_requests(protocol, size)
            send(self._requests[protocol, size][::self.clients])
        requests = self._requests[protocol, size]
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(self.clients) as pool:
            list(pool.map(send, (requests[i::self.clients] for i in range(self.clients))))
        return len(requests) * size / (time.perf_counter() - started)

    def _make_requests(self, protocol: str, size: int) -> list[Any]:
        import base64
        import json

        from mmentail.schema import EXPORT_INPUTS

        batches = [_cycle(self.rows, i * size, size)
                   for i in range(self.clients * self.requests)]
        if protocol == "grpc":
            from mmentail.serving.grpc_api import predict_request

            return [predict_request({name: [row[name] for row in batch]
                                     for name in EXPORT_INPUTS}) for batch in batches]
        return [json.dumps({"instances": [
            {"text_1": row["text_1"], "text_2": row["text_2"],
             **{key: {"b64": base64.b64encode(row[key]).decode()}
                for key in ("image_1", "image_2")}}
            for row in batch]}).encode() for batch in batches]

    def _post(self, bodies: list[bytes]) -> None:
        """One REST client: posts `bodies` one after the other, reading each answer."""
        import urllib.request

        for body in bodies:
            request = urllib.request.Request(self.server.url + ":predict", data=body)
            with urllib.request.urlopen(request, timeout=300) as answer:
                answer.read()

    def _predict(self, requests: list[Any]) -> None:
        """One gRPC client: its own channel, `requests` sent one after the other."""
        import grpc
        from tensorflow_serving.apis.prediction_service_pb2_grpc import PredictionServiceStub

        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            stub = PredictionServiceStub(channel)
            for request in requests:
                stub.Predict(request, timeout=300)


def train_process(flags: list[str], log_path: Path) -> dict[str, float]:
    """`mmentail-train FLAGS` in a new process, its output in `log_path`: its wall and CPU
    seconds and its own peak RSS (`wait4`).

    Raises:
        RuntimeError: the command failed (the end of its output is in the message).
    """
    command = [sys.executable, "-c",
               "import sys, mmentail_launcher; sys.exit(mmentail_launcher.train())", *flags]
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"mmentail-train failed; its output ({log_path}) ends:\n"
                           f"{Path(log_path).read_text()[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def measure_train_process(config, work: str) -> dict[str, Any]:
    """`mmentail-train --config` of `config` in a new process with an empty cache
    (features encoded afresh), output in `work`: its wall and CPU seconds, peak RSS,
    stage seconds (`timings.json`) and whether it computed in mixed precision (as its
    own `config.json` records)."""
    work_dir = Path(work)
    record = config.to_json()
    record["output"] = str(work_dir / "run")
    record["data"]["cache_dir"] = str(work_dir / "cache")
    (work_dir / "config.json").write_text(json.dumps(record))
    figures = train_process(["--config", str(work_dir / "config.json")], work_dir / "train.log")
    recorded = json.loads((work_dir / "run" / "config.json").read_text())
    return {**figures, "stages": json.loads((work_dir / "run" / "timings.json").read_text()),
            "mixed_precision": recorded["runtime"]["mixed_precision"]}


MEASURES = {"keras_io": measure_keras_io, "mmentail": measure_mmentail,
            "serving": measure_serving}


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, config, options: dict[str, Any]) -> dict[str, float]:
    """One measurement of :data:`MEASURES`, and `cpu_s`: the CPU seconds this process used
    (run in a fresh process, whose peak RSS and CPU time are then the measurement's own)."""
    figures = MEASURES[name](config, **options)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {**figures, "cpu_s": usage.ru_utime + usage.ru_stime}
