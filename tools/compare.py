"""Is recipe B better than recipe A on the same pairs? A paired bootstrap says how sure.

    python tools/compare.py runs/cv-concat runs/cv-cross-attention
    python tools/compare.py runs/demo runs/demo-focal --resamples 2000 --seed 1

A and B are directories written by `mmentail-train`: a run (its `predictions.csv`,
the test pairs) or a cross-validation (`--folds`; its `oof.csv`, every pair). The
pairs are matched by (id_1, id_2) and must be the same in both, with the same
labels: the same data and, for single runs, the same `--seed` (the seed picks the
test split). It prints the macro-F1 of each, the difference B - A with a 95%
paired-bootstrap interval (the same resampled pairs score both, so what the two
share cancels out), and each class's F1 difference with its interval. An
interval that excludes 0 ranks the two.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mmentail.cli import run_command
from mmentail.data.pairs import DataError
from mmentail.errors import MissingFileError
from mmentail.evaluation.bootstrap import (
    CONFIDENCE,
    RESAMPLES,
    bootstrap_indices,
    percentile_interval,
    resampled_f1,
)
from mmentail.evaluation.report import (
    PAIR_KEYS,
    PREDICTIONS,
    label_indices,
    read_predictions,
)
from mmentail.schema import LABELS

OUT_OF_FOLD = "oof.csv"


def predictions_of(directory: str | Path) -> pd.DataFrame:
    """The predictions of a cross-validation (`oof.csv`) or of a run (`predictions.csv`).

    Raises:
        MissingFileError: the directory holds neither.
    """
    directory = Path(directory)
    for name in (OUT_OF_FOLD, PREDICTIONS):
        if (directory / name).is_file():
            return read_predictions(directory / name)
    raise MissingFileError(f"{directory} has no {OUT_OF_FOLD} or {PREDICTIONS}: not a run or "
                           "cross-validation written by this version of mmentail-train")


def paired(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """A's and B's predictions of each pair side by side (columns suffixed `_a`, `_b`).

    Raises:
        DataError: a pair twice in one side, pairs in one side only, or different labels.
    """
    problems = []
    for name, frame in (("A", a), ("B", b)):
        twice = frame[frame.duplicated(list(PAIR_KEYS))]
        if len(twice):
            problems.append(f"{name} holds {len(twice)} pair(s) more than once, e.g. "
                            f"{twice[list(PAIR_KEYS)].iloc[0].tolist()}")
    merged = a.merge(b, on=list(PAIR_KEYS), how="outer", suffixes=("_a", "_b"), indicator=True)
    for side, name in (("left_only", "A"), ("right_only", "B")):
        only = merged[merged["_merge"] == side]
        if len(only):
            problems.append(f"{len(only)} pair(s) only in {name}, e.g. "
                            f"{only[list(PAIR_KEYS)].iloc[0].tolist()}")
    both = merged[merged["_merge"] == "both"]
    differing = both[both["label_a"] != both["label_b"]]
    if len(differing):
        problems.append(f"{len(differing)} pair(s) with different labels in A and B")
    if problems:
        raise DataError("A and B are not predictions of the same pairs (compare runs of the "
                        "same data and --seed, or cross-validations of the same data)",
                        problems)
    return both.drop(columns="_merge").reset_index(drop=True)


def _side(both: pd.DataFrame, side: str) -> pd.DataFrame:
    """One side's `label` and `predicted` columns of :func:`paired`'s frame."""
    return both.rename(columns={f"label_{side}": "label", f"predicted_{side}": "predicted"})


def compare(a_dir: str | Path, b_dir: str | Path, *, resamples: int = RESAMPLES,
            seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Macro-F1 and each class's F1 of A and B, and of B - A with paired-bootstrap intervals.

    Returns:
        `{"pairs", "a", "b", "difference"}`; each of the last three maps
        "macro_f1" and every label to a value, and "difference" also has
        "intervals" (same keys) and "b_better" (share of resamples with B's
        macro-F1 above A's).
    """
    both = paired(predictions_of(a_dir), predictions_of(b_dir))
    labels, predicted_a = label_indices(_side(both, "a"))
    _, predicted_b = label_indices(_side(both, "b"))
    indices = np.vstack([np.arange(len(both)),  # row 0: the pairs as they are
                         bootstrap_indices(len(both), resamples, seed)])
    f1 = {side: resampled_f1(labels, guess, indices)
          for side, guess in (("a", predicted_a), ("b", predicted_b))}

    def figures(values: np.ndarray) -> dict[str, np.ndarray]:
        return {"macro_f1": values.mean(axis=1), **dict(zip(LABELS, values.T))}

    a, b = figures(f1["a"]), figures(f1["b"])
    difference = {name: b[name] - a[name] for name in a}
    return {"pairs": len(both),
            "a": {name: float(v[0]) for name, v in a.items()},
            "b": {name: float(v[0]) for name, v in b.items()},
            "difference": {
                **{name: float(v[0]) for name, v in difference.items()},
                "intervals": {name: percentile_interval(v[1:], confidence)
                              for name, v in difference.items()},
                "b_better": float(np.mean(difference["macro_f1"][1:] > 0))},
            "confidence": confidence, "resamples": resamples, "seed": seed}


def comparison_text(result: dict[str, Any], a_dir: str, b_dir: str) -> str:
    """The console report of :func:`compare`."""
    difference = result["difference"]
    lines = [f"A: {a_dir}\nB: {b_dir}\n{result['pairs']} pairs in both; "
             f"{result['confidence']:.0%} paired-bootstrap intervals over "
             f"{result['resamples']} resamples",
             f"{'':<14} {'A':>7} {'B':>7} {'B - A':>8}   interval"]
    for name in ("macro_f1", *LABELS):
        low, high = difference["intervals"][name]
        title = "macro-F1" if name == "macro_f1" else f"F1 {name}"
        lines.append(f"{title:<16.16} {result['a'][name]:>5.3f} {result['b'][name]:>7.3f} "
                     f"{difference[name]:>+8.3f}   [{low:+.3f}, {high:+.3f}]")
    lines.append(f"B's macro-F1 is above A's in {difference['b_better']:.1%} of the resamples")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="compare", description="Paired comparison of two runs or cross-validations "
                                    "over the same pairs: macro-F1 and per-class F1 of B - A "
                                    "with paired-bootstrap intervals.")
    parser.add_argument("a", help="run or cross-validation directory (the baseline)")
    parser.add_argument("b", help="run or cross-validation directory (the candidate)")
    parser.add_argument("--resamples", type=int, default=RESAMPLES,
                        help=f"bootstrap resamples (default {RESAMPLES})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples (default 0)")

    def body(args: argparse.Namespace) -> int:
        result = compare(args.a, args.b, resamples=args.resamples, seed=args.seed)
        print(comparison_text(result, args.a, args.b))
        return 0

    return run_command(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
