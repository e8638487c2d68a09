"""Ablations on the demo data: which modalities, which loss, from one fixed seed.

Trains the same pipeline as `mmentail-train` (`mmentail.train.run`, no export)
once per variant: multimodal, text-only and image-only with plain
cross-entropy, then multimodal with focal loss and with class-weighted
cross-entropy. Prints a Markdown table of test macro-F1, accuracy and the
minority classes' recall beside the majority baseline, and writes it with the
full figures to `<output>/ablations.md` and `<output>/ablations.json`.

    PYTHONPATH=. python tools/ablations.py --output runs/ablations
    PYTHONPATH=. python tools/ablations.py --output runs/ablations-8ep --epochs 8

Any other `mmentail-train` flag is passed on to every variant (e.g. `--demo-pairs 3000`).
Op determinism is on, so a seed gives the same table on the same machine.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import tensorflow as tf

from mmentail.config import resolve_config
from mmentail.data import LABELS
from mmentail.evaluate import minority_recall
from mmentail.io_utils import atomic_write_json, atomic_write_text
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


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per variant plus the majority baseline (the same for all, from their split)."""
    minority = [name for name in LABELS if name != "NoEntailment"]
    header = ("| model | test macro-F1 | accuracy | minority recall | "
              + " | ".join(f"{name} recall" for name in minority) + " |")
    rows = [header, "|" + " --- |" * (4 + len(minority))]
    baseline = next(iter(results.values()))["majority_baseline"]
    for name, m in [*results.items(), (f"majority baseline ({baseline['label']})", baseline)]:
        recalls = " | ".join(f"{m['per_class'][c]['recall']:.3f}" for c in minority)
        rows.append(f"| {name} | {m['macro_f1']:.3f} | {m['accuracy']:.3f} | "
                    f"{minority_recall(m):.3f} | {recalls} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    tf.config.experimental.enable_op_determinism()
    preset, existing, overrides = _parse_args(argv)
    overrides["output"] = overrides["output"] or "runs/ablations"
    results = run_ablations(preset, overrides, existing=existing)
    table = markdown_table(results)
    output = Path(overrides["output"])
    atomic_write_text(output / "ablations.md", table + "\n")
    atomic_write_json(output / "ablations.json",
                      {"preset": preset, "overrides": overrides, "results": results})
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
