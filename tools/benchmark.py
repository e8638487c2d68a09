"""Times mmentail against the keras.io "Multimodal entailment" recipe, side by side.

Both sides train the same model (:func:`mmentail.model.build_model`, frozen
BERT and ResNet50V2, the `keras-io` preset's hyper-parameters) on the same
generated pairs, whose images have the size of typical post photos (JPEG
1200x675, some PNG). They differ in how they get there:

- `keras_io`: the TF Hub version of the keras.io example. Every example is
  mapped on its own, without parallel calls, through a Keras model wrapping the
  preprocessor's `tokenize` and `bert_pack_inputs`; images are decoded and
  resized one at a time; decoded images and tokens are cached; `model.fit`
  then runs the frozen encoders forward again in every epoch.
- `mmentail`: :func:`mmentail.pipeline.make_dataset` (parallel decode, batched
  tokenisation), the encoders' features computed once
  (:mod:`mmentail.feature_cache`), and head-only epochs.

Each side runs in its own process, so its peak RSS (read when its training
ends) is its own; the exported SavedModel's serving latency is measured in a
third one. Speed ratios are keras_io time / mmentail time (or mmentail
examples/s / keras_io examples/s): above 1 means mmentail is faster. `cold_epoch_over_encoder_forward` is
mmentail's first epoch (decode, tokenize, encode, first head epoch) over the
encoders' forward pass alone on the same, already decoded, tensors.

Example:
    python tools/benchmark.py --rows 300 --epochs 10 --json docs/benchmarks.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

SIDE_KEYS = ("cold_epoch_s", "later_epoch_s", "total_s", "pipeline_examples_per_s",
             "peak_rss_mb")
DEFAULT_CACHE_DIR = "~/.cache/mmentail/benchmark"


# --- the keras.io recipe, re-implemented --------------------------------------------------


def keras_io_text_model(preprocess_handle: str, seq_length: int):
    """The recipe's text preprocessing: a Keras model over the hub module's two functions."""
    import tensorflow as tf
    import tensorflow_hub as hub
    import tf_keras

    module = hub.load(preprocess_handle)
    texts = [tf_keras.Input((), dtype=tf.string, name=name) for name in ("text_1", "text_2")]
    tokenize = hub.KerasLayer(module.tokenize, name="tokenizer")
    pack = hub.KerasLayer(module.bert_pack_inputs, arguments={"seq_length": seq_length},
                          name="packer")
    return tf_keras.Model(texts, pack([tokenize(text) for text in texts]))


def keras_io_dataset(df, text_model, *, image_size: tuple[int, int], batch_size: int,
                     training: bool):
    """The recipe's input pipeline: shuffle, per-example map, cache, batch, prefetch."""
    import numpy as np
    import tensorflow as tf

    from mmentail.schema import BERT_INPUT_KEYS, LABELS

    def read_image(path):
        data = tf.io.read_file(path)
        is_jpeg = tf.strings.regex_full_match(tf.strings.lower(path), r".*\.jpe?g")
        image = tf.cond(is_jpeg, lambda: tf.io.decode_jpeg(data, channels=3),
                        lambda: tf.io.decode_png(data, channels=3))
        return tf.image.resize(image, image_size)

    def preprocess(row, label):
        packed = text_model([row["text_1"][tf.newaxis], row["text_2"][tf.newaxis]])
        features = {key: tf.cast(tf.squeeze(packed[key], 0), tf.int32)
                    for key in BERT_INPUT_KEYS}
        features["image_1"] = read_image(row["image_1_path"])
        features["image_2"] = read_image(row["image_2_path"])
        return features, label

    columns = {key: df[key].to_numpy() for key in ("text_1", "text_2", "image_1_path",
                                                   "image_2_path")}
    labels = np.eye(len(LABELS), dtype=np.float32)[df["label_idx"]]
    ds = tf.data.Dataset.from_tensor_slices((columns, labels)).shuffle(len(df))
    if training:
        ds = ds.shuffle(len(df))
    ds = ds.map(preprocess).cache()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --- measurements shared by both sides ----------------------------------------------------


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


def _pipeline_examples_per_s(make, examples: int, repeats: int) -> float:
    """Median examples/s of building a fresh dataset with `make()` and one full pass
    over it: a cold pass, which reads, decodes, tokenizes and caches everything."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in make():
            pass
        rates.append(examples / (time.perf_counter() - started))
    return statistics.median(rates)


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup(config):
    """The run's training and validation rows (90% / 10%, unstratified, so that a
    smoke run of a few rows splits too) and its model."""
    import tf_keras
    from sklearn.model_selection import train_test_split

    from mmentail.data.pairs import read_pairs
    from mmentail.model import ModelConfig
    from mmentail.model.build import build_model

    tf_keras.utils.set_random_seed(config.seed)
    pairs = read_pairs(config.data_csv, config.image_dir)
    train, val = train_test_split(pairs, test_size=0.1, random_state=config.seed)
    size = (config.image_size, config.image_size)
    model = build_model(ModelConfig(
        encoder_handle=config.encoder_handle, image_weights=None, image_size=size,
        seq_length=config.seq_length, projection_dim=config.projection_dim,
        dropout=config.dropout, text_pooling=config.text_pooling))
    return train, val, model


def _compile(model, config) -> None:
    """Compiles `model` as `mmentail-train` compiles what it trains."""
    import tf_keras

    model.compile(optimizer=tf_keras.optimizers.Adam(config.learning_rate),
                  loss=tf_keras.losses.CategoricalCrossentropy(),
                  metrics=[tf_keras.metrics.CategoricalAccuracy(name="accuracy"),
                           tf_keras.metrics.F1Score(average="macro", name="macro_f1")])


# --- the three measured processes ---------------------------------------------------------


def run_keras_io(config, repeats: int, **_) -> dict[str, float]:
    """Times the keras.io pipeline and `model.fit` of the full model every epoch."""
    train, val, model = _setup(config)
    _compile(model, config)
    text_model = keras_io_text_model(config.preprocess_handle, config.seq_length)
    common = dict(image_size=(config.image_size, config.image_size),
                  batch_size=config.batch_size)
    rate = _pipeline_examples_per_s(
        lambda: keras_io_dataset(train, text_model, training=True, **common), len(train),
        repeats)
    clock = _epoch_clock()
    start = time.perf_counter()
    model.fit(keras_io_dataset(train, text_model, training=True, **common),
              validation_data=keras_io_dataset(val, text_model, training=False, **common),
              epochs=config.epochs, callbacks=[clock], verbose=0)
    return {**_epoch_figures(start, clock.ends, time.perf_counter()),
            "pipeline_examples_per_s": rate, "peak_rss_mb": _peak_rss_mb()}


def run_mmentail(config, repeats: int, export_dir: str, **_) -> dict[str, float]:
    """Times mmentail's pipeline, feature cache and head-only epochs, then exports."""
    import numpy as np
    import tensorflow as tf

    from mmentail.pipeline.dataset import make_dataset
    from mmentail.pipeline.preprocess import load_preprocessor
    from mmentail.serving.export import export_savedmodel
    from mmentail.training.feature_cache import cached_features, feature_dataset

    train, val, model = _setup(config)
    head, encoders = model.get_layer("head"), model.get_layer("encoders")
    _compile(head, config)
    preprocessor = load_preprocessor(config.preprocess_handle)
    size = (config.image_size, config.image_size)
    common = dict(image_size=size, seq_length=config.seq_length, batch_size=config.batch_size,
                  seed=config.seed)
    rate = _pipeline_examples_per_s(
        lambda: make_dataset(train, preprocessor, training=True, **common), len(train),
        repeats)

    clock = _epoch_clock()
    start = time.perf_counter()
    # A cold cache: features are encoded now (persist=False keeps nothing on disk).
    fit_train, fit_val = (
        feature_dataset(*cached_features(
            encoders, make_dataset(part, preprocessor, training=False, cache=False, **common),
            strategy=tf.distribute.get_strategy(), directory=export_dir,
            key={"split": name, "count": len(part)}, persist=False),
            batch_size=config.batch_size, training=training, seed=config.seed)
        for name, part, training in (("train", train, True), ("val", val, False)))
    head.fit(fit_train, validation_data=fit_val, epochs=config.epochs, callbacks=[clock],
             verbose=0)
    figures = _epoch_figures(start, clock.ends, time.perf_counter())
    figures["peak_rss_mb"] = _peak_rss_mb()

    # The encoders alone, on the same examples already decoded and tokenized, with
    # their predict function built anew, as the cold epoch built it.
    decoded = [features for part in (train, val) for features, _ in make_dataset(
        part, preprocessor, training=False, **common)]
    inputs = {key: np.concatenate([batch[key] for batch in decoded]) for key in decoded[0]}
    encoders.predict_function = None
    started = time.perf_counter()
    encoders.predict(inputs, batch_size=config.batch_size, verbose=0)
    figures["encoder_forward_s"] = time.perf_counter() - started

    export_savedmodel(model, preprocessor, export_dir, image_size=size,
                      seq_length=config.seq_length)
    return {**figures, "pipeline_examples_per_s": rate}


def run_serving(config, export_dir: str, serving_calls: int, **_) -> dict[str, float]:
    """Latency at batch 1 and throughput at batch 64 of the exported SavedModel."""
    import numpy as np
    import tensorflow as tf

    import mmentail  # noqa: F401  (registers the tensorflow-text ops the export uses)
    from mmentail.data.pairs import read_pairs

    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    pairs = read_pairs(config.data_csv, config.image_dir)
    rows = [{"text_1": row.text_1, "text_2": row.text_2,
             "image_1": Path(row.image_1_path).read_bytes(),
             "image_2": Path(row.image_2_path).read_bytes()} for row in pairs.itertuples()]

    def batch(first: int, size: int) -> dict[str, tf.Tensor]:
        chosen = [rows[(first + i) % len(rows)] for i in range(size)]
        return {key: tf.constant([row[key] for row in chosen]) for key in chosen[0]}

    serve(**batch(0, 1))
    latencies = []
    for i in range(serving_calls):
        inputs = batch(i, 1)
        started = time.perf_counter()
        serve(**inputs)["probabilities"].numpy()
        latencies.append((time.perf_counter() - started) * 1000)
    big = batch(0, 64)
    serve(**big)
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        serve(**big)["probabilities"].numpy()
        rates.append(64 / (time.perf_counter() - started))
    return {"p50_ms_batch1": float(np.percentile(latencies, 50)),
            "p99_ms_batch1": float(np.percentile(latencies, 99)),
            "examples_per_s_batch64": statistics.median(rates)}


MEASURES = {"keras_io": run_keras_io, "mmentail": run_mmentail, "serving": run_serving}


# --- orchestration -------------------------------------------------------------------------


def _run_child(measure: str, config_path: Path, work: Path, args) -> dict[str, float]:
    """Runs one measurement in a fresh process; adds the CPU seconds it used."""
    result_path = work / f"{measure}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", measure,
               "--config", str(config_path), "--result", str(result_path),
               "--export-dir", str(work / "export"), "--repeats", str(args.repeats),
               "--serving-calls", str(args.serving_calls)]
    process = subprocess.Popen(command)
    started = time.perf_counter()
    _, status, usage = os.wait4(process.pid, 0)
    print(f"benchmark: {measure} measured in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"benchmark: the {measure} measurement failed "
                         f"(exit code {process.returncode})")
    result = json.loads(result_path.read_text())
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    return result


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, load included (the machine may be shared)."""
    import tensorflow as tf

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text(
    ).splitlines() if line.startswith("model name")), platform.processor()) if Path(
        "/proc/cpuinfo").exists() else platform.processor()
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "gpus": len(tf.config.list_physical_devices("GPU")),
            "load_average_before": list(os.getloadavg())}


def markdown_table(result: dict[str, Any]) -> str:
    """The run as a Markdown table: one row a figure, the two sides and their ratio."""
    k, m, r = result["keras_io"], result["mmentail"], result["ratios"]
    encoder_forward = m["cold_epoch_s"] / r["cold_epoch_over_encoder_forward"]
    rows = [
        ("cold first epoch (s)", k["cold_epoch_s"], m["cold_epoch_s"],
         k["cold_epoch_s"] / m["cold_epoch_s"]),
        ("later epoch, median (s)", k["later_epoch_s"], m["later_epoch_s"], r["later_epoch"]),
        ("total, all epochs (s)", k["total_s"], m["total_s"], r["total"]),
        ("input pipeline (examples/s)", k["pipeline_examples_per_s"],
         m["pipeline_examples_per_s"], r["pipeline"]),
        ("peak RSS (MB)", k["peak_rss_mb"], m["peak_rss_mb"],
         k["peak_rss_mb"] / m["peak_rss_mb"]),
    ]
    lines = ["| | keras.io recipe | mmentail | speed-up |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {a:.2f} | {b:.2f} | {ratio:.1f}x |" for name, a, b, ratio in rows]
    s = result["serving"]
    lines += ["", "| mmentail detail | value |", "| --- | ---: |",
              f"| encoder forward alone, same tensors (s) | {encoder_forward:.2f} |",
              f"| cold first epoch / encoder forward | "
              f"{r['cold_epoch_over_encoder_forward']:.3f} |",
              f"| serving p50, batch 1 (ms) | {s['p50_ms_batch1']:.1f} |",
              f"| serving p99, batch 1 (ms) | {s['p99_ms_batch1']:.1f} |",
              f"| serving throughput, batch 64 (examples/s) | "
              f"{s['examples_per_s_batch64']:.1f} |"]
    return "\n".join(lines)


def benchmark(args) -> dict[str, Any]:
    """Generates (or reuses) the data, runs the three measurements, returns the result."""
    from mmentail.config import resolve_config
    from mmentail.io_utils import atomic_write_json
    from mmentail.sources.demo import prepare_demo

    width, height = args.source_size
    demo = prepare_demo(Path(args.cache_dir).expanduser() / f"{args.rows}-{width}x{height}",
                        num_pairs=args.rows, image_size_range=(width, width),
                        aspect_ratio=width / height)
    config = resolve_config("keras-io", {
        "data_csv": str(demo.csv_path), "image_dir": str(demo.image_dir),
        "preprocess_handle": str(demo.preprocess_dir), "encoder_handle": str(demo.encoder_dir),
        "image_weights": "none", "image_size": args.image_size, "epochs": args.epochs,
        "batch_size": args.batch_size, "seq_length": args.seq_length})
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="mmentail-benchmark-") as tmp:
        work = Path(tmp)
        config_path = work / "config.json"
        atomic_write_json(config_path, config.to_json())
        measured = {name: _run_child(name, config_path, work, args) for name in MEASURES}
    machine["load_average_after"] = list(os.getloadavg())
    # CPU seconds each process used: on a shared machine, wall times also carry the load.
    machine["process_cpu_s"] = {name: figures.pop("cpu_s") for name, figures in measured.items()}
    keras_io, mmentail, serving = (measured[name] for name in MEASURES)
    encoder_forward = mmentail.pop("encoder_forward_s")
    return {
        "keras_io": {key: keras_io[key] for key in SIDE_KEYS},
        "mmentail": {key: mmentail[key] for key in SIDE_KEYS},
        "ratios": {
            "total": keras_io["total_s"] / mmentail["total_s"],
            "later_epoch": keras_io["later_epoch_s"] / mmentail["later_epoch_s"],
            "pipeline": mmentail["pipeline_examples_per_s"] / keras_io["pipeline_examples_per_s"],
            "cold_epoch_over_encoder_forward": mmentail["cold_epoch_s"] / encoder_forward,
        },
        "serving": serving,
        "machine": machine,
    }


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmark.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    arg = parser.add_argument
    arg("--rows", type=int, default=600, help="generated pairs (train/val/test split as usual)")
    arg("--epochs", type=int, default=10, help="training epochs, at least 2")
    arg("--image-size", type=int, default=128, help="square side the images are resized to")
    arg("--batch-size", type=int, default=32)
    arg("--seq-length", type=int, default=128, help="BERT sequence length")
    arg("--source-size", type=_size, default=(1200, 675),
        help="WIDTHxHEIGHT of the generated images")
    arg("--repeats", type=int, default=3, help="input pipeline passes (median)")
    arg("--serving-calls", type=int, default=100, help="batch-1 serving calls timed")
    arg("--cache-dir", default=DEFAULT_CACHE_DIR, help="where generated data is kept")
    arg("--json", help="write the result as JSON to this path")
    # One measurement in this process (used by the benchmark itself).
    for hidden in ("--measure", "--config", "--result", "--export-dir"):
        arg(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (a cold and a later epoch)")
    if args.rows < 20:
        parser.error("--rows must be at least 20 (the split needs a few rows per part)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    from mmentail.io_utils import atomic_write_json

    if args.measure:
        from mmentail.config import load_config

        figures = MEASURES[args.measure](load_config(args.config), repeats=args.repeats,
                                         export_dir=args.export_dir,
                                         serving_calls=args.serving_calls)
        atomic_write_json(args.result, figures)
        return 0
    result = benchmark(args)
    print(markdown_table(result))
    machine = result["machine"]
    print(f"\nmachine: {machine['cpus']} x {machine['cpu_model']}, {machine['platform']}, "
          f"TensorFlow {machine['tensorflow']}, load average "
          f"{machine['load_average_before'][0]:.2f} before, "
          f"{machine['load_average_after'][0]:.2f} after; CPU seconds per process "
          + ", ".join(f"{k} {v:.0f}" for k, v in machine["process_cpu_s"].items()))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
