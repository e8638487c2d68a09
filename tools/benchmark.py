"""Times mmentail against the keras.io "Multimodal entailment" recipe, side by side.

Both sides train the same model (:func:`mmentail.model.build.build_model` of the
`keras-io` preset's `config.model`: frozen BERT and ResNet50V2) with the same
hyper-parameters on the same generated pairs, whose images have the size of
typical post photos (JPEG 1200x675, some PNG). They differ in how they get there:

- `keras_io`: the recipe's per-example input pipeline (`tools/keras_io_recipe.py`),
  and `model.fit` of the full model, encoders forward again in every epoch.
- `mmentail`: :func:`mmentail.pipeline.dataset.make_dataset` (parallel decode,
  batched tokenisation), the encoders' features computed once
  (:mod:`mmentail.training.feature_cache`), and head-only epochs.

Each measurement (`tools/benchmark_measures.py`) runs in a fresh child process
(`multiprocessing`, spawn; `--same-process` for a quick check of the tool), so its
peak RSS and CPU seconds are its own:
keras_io, then mmentail (which also exports the model), then the export's
serving speed: latency at batch 1, pairs/s at batch 1, 8 and 64, beside the
model's own forward pass on already decoded inputs (the most the export can
reach), and `mmentail-serve`'s server under 8 concurrent clients. Speed ratios are
keras_io time / mmentail time (or mmentail examples/s / keras_io examples/s):
above 1 means mmentail is faster. `whole_process` sets the keras.io recipe's `fit` against
the whole `mmentail-train` command on the same pairs, timed from outside
(start-up, checks, split, encoding, head epochs, test evaluation and export; its
training split is the run's, a little smaller than the recipe's 90%; with
`--mixed-precision`, that run computes in mixed_bfloat16, its export too).
`cold_epoch_over_encoder_forward` is
mmentail's first epoch (decode, tokenize, encode, first head epoch) over the
encoders' forward pass alone on the same, already decoded, tensors.

Example:
    python tools/benchmark.py --rows 300 --epochs 10 --json docs/benchmarks.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

if str(Path(__file__).resolve().parent) not in sys.path:  # the modules beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark_measures  # noqa: E402
from benchmark_measures import MEASURES  # noqa: E402

from mmentail.config.experiment import IMAGE_BACKBONES  # noqa: E402

SIDE_KEYS = ("cold_epoch_s", "later_epoch_s", "total_s", "pipeline_examples_per_s",
             "peak_rss_mb")
DEFAULT_CACHE_DIR = "~/.cache/mmentail/benchmark"


def measure_in_child(name: str, config, **options: Any) -> dict[str, float]:
    """One measurement of :data:`MEASURES` in a fresh (spawned) process: its figures,
    plus `cpu_s`, the CPU seconds the process used. An error in it is raised here."""
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as child:
        figures = child.submit(benchmark_measures.measure, name, config, options).result()
    print(f"benchmark: {name} measured in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    return figures


# --- the result ----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, load included (the machine may be shared)."""
    import tensorflow as tf

    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")),
               platform.processor()) if cpuinfo.exists() else platform.processor()
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
        ("whole mmentail-train process (s)"
         + (", mixed_bfloat16" if result["train_process"]["mixed_precision"] else ""),
         k["total_s"], result["train_process"]["wall_s"], r["whole_process"]),
    ]
    lines = ["| | keras.io recipe | mmentail | speed-up |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {a:.2f} | {b:.2f} | {ratio:.1f}x |" for name, a, b, ratio in rows]
    s = result["serving"]
    stages = result["train_process"]["stages"]
    lines += ["", "| mmentail detail | value |", "| --- | ---: |",
              "| mmentail-train stages (s) | "
              + ", ".join(f"{name} {seconds:.1f}" for name, seconds in stages.items()) + " |",
              f"| encoder forward alone, same tensors (s) | {encoder_forward:.2f} |",
              f"| cold first epoch / encoder forward | "
              f"{r['cold_epoch_over_encoder_forward']:.3f} |",
              f"| serving p50, batch 1 (ms) | {s['p50_ms_batch1']:.1f} |",
              f"| serving p99, batch 1 (ms) | {s['p99_ms_batch1']:.1f} |"]
    lines += [f"| export, batch {size} (pairs/s) | {s[f'pairs_per_s_batch{size}']:.1f} |"
              for size in (1, 8, 64)]
    lines += [f"| model forward alone, decoded inputs, batch 64 (pairs/s) | "
              f"{s['forward_pairs_per_s_batch64']:.1f} |",
              f"| export / model forward, batch 64 | {s['export_over_forward']:.2f} |",
              f"| the most export / model forward can be here (CPU s: forward "
              f"{s['forward_cpu_s_batch64']:.2f}, decoding {s['decode_cpu_s_batch64']:.2f}) | "
              f"{s['export_over_forward_ceiling']:.2f} |",
              f"| server, 8 clients x 1 pair a request (pairs/s) | "
              f"{s['server_pairs_per_s_8_clients']:.1f} |",
              f"| server, 8 clients x 8 pairs a request (pairs/s) | "
              f"{s['server_pairs_per_s_8_clients_x8']:.1f} |",
              f"| server (1 pair a request) / export batch 64 | "
              f"{s['server_over_export']:.2f} |"]
    return "\n".join(lines)


def benchmark_config(args: argparse.Namespace):
    """The `keras-io` preset on the generated pairs (made once per size, then reused)."""
    from mmentail.config.presets import resolve_config
    from mmentail.sources.demo import prepare_demo

    width, height = args.source_size
    demo = prepare_demo(Path(args.cache_dir).expanduser() / f"{args.rows}-{width}x{height}",
                        num_pairs=args.rows, image_size_range=(width, width),
                        aspect_ratio=width / height)
    return resolve_config("keras-io", {
        "data_csv": str(demo.csv_path), "image_dir": str(demo.image_dir),
        "preprocess_handle": str(demo.preprocess_dir), "encoder_handle": str(demo.encoder_dir),
        "image_backbone": args.image_backbone, "image_weights": "none",
        "image_size": args.image_size, "epochs": args.epochs,
        "batch_size": args.batch_size, "seq_length": args.seq_length,
        "mixed_precision": args.mixed_precision})


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Generates (or reuses) the data, runs the three measurements, returns the result."""
    config = benchmark_config(args)
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="mmentail-benchmark-") as work:
        options = {"repeats": args.repeats, "serving_calls": args.serving_calls,
                   "serving_rounds": args.serving_rounds,
                   "export_dir": str(Path(work) / "export")}
        measured = {name: benchmark_measures.measure(name, config, options)
                    if args.same_process else measure_in_child(name, config, **options)
                    for name in MEASURES}
        process_dir = Path(work) / "process"
        process_dir.mkdir()
        train_process = benchmark_measures.measure_train_process(config, str(process_dir))
    machine["load_average_after"] = list(os.getloadavg())
    # CPU seconds each process used: on a shared machine, wall times also carry the load.
    machine["process_cpu_s"] = {name: figures.pop("cpu_s") for name, figures in measured.items()}
    machine["process_cpu_s"]["train_process"] = train_process.pop("cpu_s")
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
            "whole_process": keras_io["total_s"] / train_process["wall_s"],
        },
        "train_process": train_process,
        "serving": serving,
        "machine": machine,
    }


def size_argument(text: str) -> tuple[int, int]:
    """`--source-size`'s WIDTHxHEIGHT as (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmark.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    arg = parser.add_argument
    arg("--rows", type=int, default=600, help="generated pairs (train/val/test split as usual)")
    arg("--epochs", type=int, default=10, help="training epochs, at least 2")
    arg("--image-size", type=int, default=128, help="square side the images are resized to")
    arg("--image-backbone", default="resnet50v2", choices=IMAGE_BACKBONES,
        help="image network of both sides (resnet_tiny: a quick check of the tool)")
    arg("--batch-size", type=int, default=32)
    arg("--seq-length", type=int, default=128, help="BERT sequence length")
    arg("--source-size", type=size_argument, default=(1200, 675),
        help="WIDTHxHEIGHT of the generated images")
    arg("--repeats", type=int, default=3, help="input pipeline passes (median)")
    arg("--serving-calls", type=int, default=100, help="batch-1 serving calls timed")
    arg("--serving-rounds", type=int, default=3,
        help="interleaved rounds of export, forward and server measured (ratios: median)")
    arg("--cache-dir", default=DEFAULT_CACHE_DIR, help="where generated data is kept")
    arg("--mixed-precision", action="store_true",
        help="the whole-process run as `mmentail-train --mixed-precision` (mixed_bfloat16 on "
             "CPU: faster where the CPU computes in bfloat16, e.g. AVX512-BF16); the other "
             "measurements stay float32, as the keras.io recipe is")
    arg("--same-process", action="store_true",
        help="measure everything in this process: a quick check of the tool, whose peak "
             "RSS and CPU seconds are then no longer each measurement's own")
    arg("--json", help="write the result as JSON to this path")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (a cold and a later epoch)")
    if args.rows < 50:
        parser.error("--rows must be at least 50 (the whole run's stratified split needs a "
                     "few pairs of each label in every part)")
    from mmentail.io_utils import atomic_write_json

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
