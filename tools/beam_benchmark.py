"""Pairs/s of `mmentail-predict` in one process against its Apache Beam pipeline.

Both label the same generated pairs (photo-sized images, as `tools/benchmark.py`
makes them, from the same cache) with the same export (the `keras-io` preset's
model, random image weights), each as the whole command in a fresh process,
timed from outside:

- `in_process`: `mmentail-predict EXPORT --data-csv pairs.csv --output preds.csv`;
- `beam`: the same with `--runner DirectRunner --direct_num_workers N
  --direct_running_mode multi_processing` (N worker processes, each loading
  the export once).

Each command also runs on a one-row CSV: its start-up (the process, TensorFlow,
the export's loading; for Beam also the pipeline's construction, the worker
processes and their loading of the export, and the shards' finalisation). The
table gives pairs/s of the whole command and, start-up taken out, of the
labelling itself: (pairs - 1) / (seconds - start-up seconds).

Example:
    python tools/beam_benchmark.py --rows 1400 --json docs/beam_benchmark.json
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

if str(Path(__file__).resolve().parent) not in sys.path:  # the modules beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import DEFAULT_CACHE_DIR, benchmark_config, machine_info, size_argument  # noqa: E402

from mmentail.config.experiment import IMAGE_BACKBONES  # noqa: E402


def write_export(config, export_dir: Path) -> None:
    """The preset's model, untrained, exported as `mmentail-train` exports it."""
    import tf_keras

    from mmentail.model.build import build_model
    from mmentail.pipeline.preprocess import load_preprocessor
    from mmentail.serving.export import export_savedmodel

    tf_keras.utils.set_random_seed(config.seed)
    model = build_model(config.model)
    export_savedmodel(model, load_preprocessor(config.model.preprocess_handle), export_dir,
                      image_size=(config.model.image_size,) * 2,
                      seq_length=config.model.seq_length)


def timed_command(argv: list[str]) -> dict[str, float]:
    """Wall seconds and CPU seconds (its processes, workers included) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": wall, "cpu_s": (after.ru_utime + after.ru_stime
                                       - before.ru_utime - before.ru_stime)}


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Generates (or reuses) the pairs, exports the model, times the four commands."""
    import pandas as pd

    config = benchmark_config(argparse.Namespace(**vars(args), epochs=2, seq_length=128,
                                                 mixed_precision=False))
    csv_path, image_dir = Path(config.data.data_csv), config.data.image_dir
    pairs = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    rows = len(pairs)
    machine = machine_info()
    result: dict[str, Any] = {"pairs": rows, "workers": args.workers,
                              "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory(prefix="mmentail-beam-benchmark-") as work:
        work = Path(work)
        write_export(config, work / "export")
        one_row = work / "one_row.csv"
        pairs.head(1).to_csv(one_row, index=False)
        beam = ["--runner", "DirectRunner", "--direct_num_workers", str(args.workers),
                "--direct_running_mode", "multi_processing"]
        for name, output, extra in (("in_process", "preds.csv", []), ("beam", "preds", beam)):
            command = ["mmentail-predict", str(work / "export"), "--image-dir", str(image_dir),
                       "--batch-size", str(args.batch_size), "--no-progress", *extra]
            start_up = timed_command([*command, "--data-csv", str(one_row),
                                      "--output", str(work / f"one_{output}")])
            whole = timed_command([*command, "--data-csv", str(csv_path),
                                   "--output", str(work / output)])
            result[name] = {
                "start_up_s": start_up["wall_s"], "total_s": whole["wall_s"],
                "cpu_s": whole["cpu_s"], "pairs_per_s": rows / whole["wall_s"],
                "pairs_per_s_after_start_up": (rows - 1) / (whole["wall_s"]
                                                            - start_up["wall_s"])}
        result["agreement"] = agreement(work / "preds.csv", work / "preds")
    machine["load_average_after"] = list(os.getloadavg())
    result["machine"] = machine
    return result


def agreement(in_process_csv: Path, beam_dir: Path) -> dict[str, Any]:
    """How the Beam pipeline's predictions compare with the in-process ones, pair by pair:
    pairs in each, labels that differ, the largest probability difference."""
    import pandas as pd

    from mmentail.serving.beam_predict import read_prediction_shards

    mine = pd.read_csv(in_process_csv, dtype={"id_1": str, "id_2": str})
    beam = read_prediction_shards(beam_dir)
    joined = mine.merge(beam, on=["id_1", "id_2"], suffixes=("", "_beam"))
    probability = [c for c in mine.columns if c.startswith("p_")]
    return {"pairs_in_process": len(mine), "pairs_beam": len(beam), "pairs_joined": len(joined),
            "labels_differing": int((joined["predicted"] != joined["predicted_beam"]).sum()),
            "max_probability_difference": float(max(
                (joined[c] - joined[f"{c}_beam"]).abs().max() for c in probability))}


def markdown_table(result: dict[str, Any]) -> str:
    lines = [f"| {result['pairs']} pairs | in process | Beam DirectRunner, "
             f"{result['workers']} worker processes |", "| --- | --- | --- |"]
    for key, label, fmt in (("start_up_s", "start-up (one-row CSV), s", ".1f"),
                            ("total_s", "whole command, s", ".1f"),
                            ("cpu_s", "CPU seconds (all processes)", ".0f"),
                            ("pairs_per_s", "pairs/s, whole command", ".1f"),
                            ("pairs_per_s_after_start_up", "pairs/s, start-up taken out",
                             ".1f")):
        lines.append(f"| {label} | {result['in_process'][key]:{fmt}} | "
                     f"{result['beam'][key]:{fmt}} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beam_benchmark.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    arg = parser.add_argument
    arg("--rows", type=int, default=1400, help="generated pairs")
    arg("--source-size", type=size_argument, default=(1200, 675),
        help="WIDTHxHEIGHT of the generated images")
    arg("--image-size", type=int, default=128, help="square side the images are resized to")
    arg("--image-backbone", default="resnet50v2", choices=IMAGE_BACKBONES,
        help="image network (resnet_tiny: a quick check of the tool)")
    arg("--batch-size", type=int, default=64, help="pairs per model call")
    arg("--workers", type=int, default=2, help="Beam worker processes")
    arg("--cache-dir", default=DEFAULT_CACHE_DIR, help="where generated data is kept")
    arg("--json", help="write the result as JSON to this path")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mmentail.io_utils import atomic_write_json

    result = benchmark(args)
    print(markdown_table(result))
    machine = result["machine"]
    print(f"\nmachine: {machine['cpus']} x {machine['cpu_model']}, load average "
          f"{machine['load_average_before'][0]:.2f} before, "
          f"{machine['load_average_after'][0]:.2f} after")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
