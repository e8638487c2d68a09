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

Every `mmentail-train` flag applies to every variant (e.g. `--epochs 60`; see
`--help`). Op determinism is on, so a seed gives the same table on the same machine.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

import tensorflow as tf

from mmentail.cli import run_command
from mmentail.config.experiment import ExperimentConfig, with_overrides
from mmentail.config.flags import config_from_args
from mmentail.errors import ConfigError
from mmentail.evaluation.metrics import minority_recall
from mmentail.io_utils import atomic_write_json, atomic_write_text
from mmentail.schema import LABELS
from mmentail.train import build_parser, run

DEFAULT_OUTPUT = "runs/ablations"
# name -> the overrides (`{field or section.field: value}`) that make the variant.
VARIANTS: dict[str, dict[str, Any]] = {
    "multimodal, cross-entropy": {},
    "text only, cross-entropy": {"modality": "text"},
    "image only, cross-entropy": {"modality": "image"},
    "multimodal, focal": {"loss": "focal"},
    "multimodal, class-weighted": {"class_weights": True},
}


def run_ablations(base: ExperimentConfig, variants: dict[str, dict[str, Any]] = VARIANTS,
                  existing: str = "auto") -> dict[str, dict[str, Any]]:
    """Test metrics per variant; each run writes to `<base.output>/<variant index>`.

    Args:
        base: the configuration every variant starts from (e.g. from
            :func:`mmentail.config.presets.resolve_config`); its `output` is the
            parent directory of the variants' runs.
        variants: name -> the overrides that make the variant, applied with
            :func:`mmentail.config.experiment.with_overrides`.
        existing: what to do with runs already in the variants' directories
            (see :func:`mmentail.training.run_dir.open_run_dir`).
    """
    results = {}
    for i, (name, changes) in enumerate(variants.items()):
        config = with_overrides(base, {**changes, "output": str(Path(base.output) / f"{i}")})
        logging.getLogger("mmentail").info("ablation %r -> %s", name, config.output)
        results[name] = run(config, existing, export=False).metrics
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


def _seeds(text: str) -> list[int]:
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from None


def build_ablations_parser() -> argparse.ArgumentParser:
    """`mmentail-train`'s parser (every flag applies to every variant) plus `--seeds`."""
    parser = build_parser()
    parser.prog = "ablations.py"
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--seeds", type=_seeds,
                        help="comma-separated seeds, each a full set of variants with its own "
                             "split; figures are medians (default: the configuration's --seed)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def ablate(args: argparse.Namespace) -> int:
        tf.config.experimental.enable_op_determinism()
        config = config_from_args(args)
        output = Path(args.output or DEFAULT_OUTPUT)
        seeds = args.seeds or [config.seed]
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"--seeds repeats a seed: {seeds}")
        runs = []
        for seed in seeds:
            where = output / f"seed-{seed}" if len(seeds) > 1 else output
            runs.append(run_ablations(with_overrides(config, {"seed": seed,
                                                              "output": str(where)}),
                                      existing=args.existing or "auto"))
        table = markdown_table(runs)
        atomic_write_text(output / "ablations.md", table + "\n")
        atomic_write_json(output / "ablations.json",
                          {"preset": config.preset,
                           "config": with_overrides(config, {"output": str(output)}).to_json(),
                           "variants": VARIANTS,
                           "results": dict(zip(map(str, seeds), runs))})
        print(table)
        return 0

    return run_command(build_ablations_parser(), ablate,
                       sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
