"""Ablations on the demo data: which modalities, which loss, over fixed seeds.

Trains the same pipeline as `mmentail-train` (`mmentail.train.run`, no export)
once per variant and seed: multimodal, text-only and image-only with plain
cross-entropy, then multimodal with focal loss and with class-weighted
cross-entropy. Prints a Markdown table of test macro-F1, accuracy and the
minority classes' recall beside the majority baseline (medians over the seeds,
each of which also draws its own split), and writes it with every run's
figures to `<output>/ablations.md` and `<output>/ablations.json`.

    PYTHONPATH=. python tools/ablations.py --output runs/ablations
    PYTHONPATH=. python tools/ablations.py --output runs/ablations-vague --demo-vague-posts 0.2
    PYTHONPATH=. python tools/ablations.py --output runs/ablations-seeds --seeds 42,1,2

Any other `mmentail-train` flag is passed on to every variant (e.g. `--epochs 60`).
Op determinism is on, so a seed gives the same table on the same machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

import tensorflow as tf

from mmentail.config import resolve_config
from mmentail.evaluation.metrics import minority_recall
from mmentail.io_utils import atomic_write_json, atomic_write_text
from mmentail.schema import LABELS
from mmentail.train import _parse_args, run

VARIANTS: dict[str, dict[str, Any]] = {
    "multimodal, cross-entropy": {},
    "text only, cross-entropy": {"modality": "text"},
    "image only, cross-entropy": {"modality": "image"},
    "multimodal, focal": {"loss": "focal"},
    "multimodal, class-weighted": {"class_weights": True},
}


def run_ablations(preset: str, overrides: dict[str, Any],
                  variants: dict[str, dict[str, Any]] = VARIANTS,
                  existing: str = "auto") -> dict[str, dict[str, Any]]:
    """Test metrics per variant; each run writes to `<output>/<variant index>`.

    Args:
        preset: the `mmentail-train` preset every variant starts from.
        overrides: flags shared by all variants (`output` is the parent directory).
        variants: name -> the overrides that make the variant.
        existing: what to do with runs already in the variants' directories
            (see :func:`mmentail.run_state.open_run_dir`).
    """
    base = resolve_config(preset, overrides)
    results = {}
    for i, (name, changes) in enumerate(variants.items()):
        config = dataclasses.replace(base, output=str(Path(base.output) / f"{i}"), **changes)
        logging.getLogger("mmentail").info("ablation %r -> %s", name, config.output)
        results[name] = run(config, existing, export=False)
    return results


def markdown_table(runs: Sequence[dict[str, dict[str, Any]]]) -> str:
    """One row per variant plus the majority baseline; figures are medians over `runs`.

    Each run (one seed) maps variant name -> test metrics. With several runs a
    last column gives the minority recall of each, in order.
    """
    minority = [name for name in LABELS if name != "NoEntailment"]
    per_run = len(runs) > 1
    header = ("| model | test macro-F1 | accuracy | minority recall | "
              + " | ".join(f"{name} recall" for name in minority) + " |"
              + (" minority recall per seed |" if per_run else ""))
    rows = [header, "|" + " --- |" * (4 + len(minority) + per_run)]
    baselines = [next(iter(run.values()))["majority_baseline"] for run in runs]
    named = [(name, [run[name] for run in runs]) for name in runs[0]]
    named.append((f"majority baseline ({baselines[0]['label']})", baselines))
    for name, metrics in named:
        figures = [[m["macro_f1"] for m in metrics], [m["accuracy"] for m in metrics],
                   [minority_recall(m) for m in metrics],
                   *([m["per_class"][c]["recall"] for m in metrics] for c in minority)]
        cells = [f"{statistics.median(values):.3f}" for values in figures]
        if per_run:
            cells.append(" / ".join(f"{value:.2f}" for value in figures[2]))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    tf.config.experimental.enable_op_determinism()
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--seeds", help="comma-separated seeds (default: the preset's --seed)")
    known, rest = parser.parse_known_args(argv)
    preset, existing, overrides = _parse_args(rest)
    output = Path(overrides["output"] or "runs/ablations")
    seeds = ([int(seed) for seed in known.seeds.split(",")] if known.seeds
             else [resolve_config(preset, overrides).seed])
    runs = []
    for seed in seeds:
        where = output / f"seed-{seed}" if len(seeds) > 1 else output
        runs.append(run_ablations(preset, {**overrides, "seed": seed, "output": str(where)},
                                  existing=existing))
    table = markdown_table(runs)
    atomic_write_text(output / "ablations.md", table + "\n")
    atomic_write_json(output / "ablations.json",
                      {"preset": preset, "overrides": overrides,
                       "results": dict(zip(map(str, seeds), runs))})
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
