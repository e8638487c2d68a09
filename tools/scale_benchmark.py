"""Memory and time of whole `mmentail-train` runs from a thousand generated pairs upwards.

Each size gets the demo generator's pairs with 32x32 images (generated once into
`--cache-dir`), trained by `mmentail-train --preset demo` in a fresh process on
two paths: `features`, the default (frozen encoders' features encoded once,
then head epochs), and `full_model` (`--no-feature-cache`: the input pipeline
and the whole model every epoch, decoded inputs in a file cache). Per run:

- `peak_rss_mb`: the process's own peak resident memory (`wait4`);
- `wall_s` and `seconds_per_1k_pairs`: the whole process, start-up included;
- `stages`: the run's `timings.json` (where the time went);
- `first_epoch_pairs_per_s`, `later_epoch_pairs_per_s`: training pairs over
  the `seconds` of `history.csv`'s first epoch and the median of the others.

Memory should stay flat as the pairs grow (input streaming, a bounded shuffle
buffer, memory-mapped features), and time per pair level (no step that grows
faster than the data).

Example:
    python tools/scale_benchmark.py --sizes 1000 10000 100000 \\
        --json docs/scale_benchmark.json --plot docs/scale_benchmark.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

if str(Path(__file__).resolve().parent) not in sys.path:  # the modules beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_measures import train_process  # noqa: E402

PATHS = {"features": [], "full_model": ["--no-feature-cache"]}
DEFAULT_CACHE_DIR = "~/.cache/mmentail/scale-benchmark"
IMAGE_SIDE = 32


def generated_pairs(cache_dir: Path, pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """The CSV and image folder of `pairs` generated pairs with 32x32 images (made once)."""
    from mmentail.sources.demo import generate_demo_dataset

    target = cache_dir / f"pairs-{pairs}"
    if not (target / "pairs.csv").exists():
        started = time.perf_counter()
        print(f"generating {pairs} pairs into {target}", flush=True)
        generate_demo_dataset(target, num_pairs=pairs, seed=seed,
                              image_size_range=(IMAGE_SIDE, IMAGE_SIDE))
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    return target / "pairs.csv", target / "images"


def demo_modules(cache_dir: Path) -> tuple[Path, Path]:
    """The demo's preprocessing model and encoder, built once before any run is timed."""
    from mmentail.sources.demo import prepare_demo

    assets = prepare_demo(cache_dir / "modules")
    return assets.preprocess_dir, assets.encoder_dir


def measure_run(csv: Path, image_dir: Path, path: str, work: Path, cache_dir: Path,
                epochs: int, pairs: int) -> dict[str, Any]:
    """One `mmentail-train` process on `path`'s flags: its figures (see the module doc)."""
    output = work / f"{path}-{pairs}"
    preprocess_dir, encoder_dir = demo_modules(cache_dir)
    flags = ["--preset", "demo", "--data-csv", str(csv), "--image-dir", str(image_dir),
             "--preprocess-handle", str(preprocess_dir), "--encoder-handle", str(encoder_dir),
             "--epochs", str(epochs), "--output", str(output),
             "--cache-dir", str(work / "run-cache"),
             "--pipeline-cache", str(work / f"pipeline-{path}-{pairs}"), *PATHS[path]]
    process = train_process(flags, work / f"{path}-{pairs}.log")
    import pandas as pd

    seconds = pd.read_csv(output / "history.csv")["seconds"].tolist()
    train_pairs = len(pd.read_csv(output / "splits" / "train.csv"))
    return {
        "pairs": pairs, "train_pairs": train_pairs,
        "peak_rss_mb": round(process["peak_rss_mb"], 1),
        "wall_s": round(process["wall_s"], 1),
        "seconds_per_1k_pairs": round(process["wall_s"] / pairs * 1000, 2),
        "stages": json.loads((output / "timings.json").read_text()),
        "first_epoch_pairs_per_s": round(train_pairs / seconds[0], 1),
        "later_epoch_pairs_per_s": round(train_pairs / statistics.median(seconds[1:]), 1),
    }


def scale_benchmark(sizes: Sequence[int], epochs: int, cache_dir: Path,
                    paths: Sequence[str]) -> dict[str, Any]:
    """Every path at every size, the smallest first; the figures per path and size."""
    result: dict[str, Any] = {"epochs": epochs, "image_side": IMAGE_SIDE, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="mmentail-scale-") as work:
        for pairs in sorted(sizes):
            csv, image_dir = generated_pairs(cache_dir, pairs)
            for path in paths:
                print(f"{path} at {pairs} pairs ...", flush=True)
                figures = measure_run(csv, image_dir, path, Path(work), cache_dir, epochs,
                                      pairs)
                print(f"  {figures}", flush=True)
                result["runs"].setdefault(path, []).append(figures)
    for path, runs in result["runs"].items():
        smallest, largest = runs[0], runs[-1]
        result.setdefault("ratios", {})[path] = {
            "peak_rss_largest_over_smallest": round(
                largest["peak_rss_mb"] / smallest["peak_rss_mb"], 2),
            "time_per_pair_largest_over_second_largest": round(
                largest["seconds_per_1k_pairs"] / runs[-2]["seconds_per_1k_pairs"], 2)
            if len(runs) > 1 else None}
    return result


def markdown_table(result: dict[str, Any]) -> str:
    """The runs as a Markdown table, one row per path and size."""
    lines = ["| path | pairs | peak RSS (MB) | wall (s) | s per 1k pairs | first epoch "
             "pairs/s | later epochs pairs/s | largest stages (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for path, runs in result["runs"].items():
        for run in runs:
            stages = sorted(run["stages"].items(), key=lambda item: -item[1])[:3]
            lines.append(
                f"| {path} | {run['pairs']:,} | {run['peak_rss_mb']:,.0f} | {run['wall_s']:,.0f} "
                f"| {run['seconds_per_1k_pairs']:.2f} | {run['first_epoch_pairs_per_s']:,.0f} "
                f"| {run['later_epoch_pairs_per_s']:,.0f} | "
                + ", ".join(f"{name} {value:.0f}" for name, value in stages) + " |")
    return "\n".join(lines)


def scale_figure(result: dict[str, Any]):
    """Peak RSS and seconds per 1k pairs against the pairs, one line per path (a
    matplotlib Figure, drawn without pyplot)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="tight")
    rss, speed = figure.subplots(1, 2)
    for name, runs in result["runs"].items():
        pairs = [run["pairs"] for run in runs]
        rss.plot(pairs, [run["peak_rss_mb"] for run in runs], marker="o", label=name)
        speed.plot(pairs, [run["seconds_per_1k_pairs"] for run in runs], marker="o",
                   label=name)
    for axis, label in ((rss, "peak RSS (MB)"), (speed, "wall seconds per 1k pairs")):
        axis.set_xscale("log")
        axis.set_xlabel("pairs")
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
        axis.legend()
    figure.suptitle(f"mmentail-train --preset demo, {result['epochs']} epochs, "
                    f"{IMAGE_SIDE} px images")
    return figure


def plot(result: dict[str, Any], path: str) -> None:
    """Writes :func:`scale_figure` to `path` as PNG, at 100 dpi."""
    with tempfile.NamedTemporaryFile(dir=Path(path).parent, suffix=".png",
                                     delete=False) as tmp:
        scale_figure(result).savefig(tmp.name, dpi=100)
    os.replace(tmp.name, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scale_benchmark.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    arg = parser.add_argument
    arg("--sizes", type=int, nargs="+", default=[1000, 10000, 100000],
        help="generated pairs per run, at least 100 each")
    arg("--epochs", type=int, default=2, help="training epochs per run, at least 2")
    arg("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    arg("--cache-dir", default=DEFAULT_CACHE_DIR, help="where generated pairs are kept")
    arg("--json", help="write the result as JSON to this path")
    arg("--plot", help="write the plot as PNG to this path")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (a first and a later epoch)")
    if min(args.sizes) < 100:
        parser.error("--sizes must be at least 100 pairs each")
    from mmentail.io_utils import atomic_write_json

    result = scale_benchmark(args.sizes, args.epochs, Path(args.cache_dir).expanduser(),
                             args.paths)
    print(markdown_table(result))
    print(json.dumps(result.get("ratios", {}), indent=1))
    if args.json:
        atomic_write_json(args.json, result)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
