"""Deletion test: do the explanations' top words and cells matter most to the export?

    python tools/deletion_test.py runs/demo/export --data-csv runs/demo/splits/test.csv \
        --image-dir ~/.cache/mmentail/demo/data/images --demo-truth --json deletion.json

For each pair, explained by :mod:`mmentail.serving.explain`, its words (both
texts' together) are removed one at a time in the explanation's order, top
score first, and in random orders (`--random-orders`, averaged); so are the
cells of its images (both images' together, filled with the neutral grey).
After each removal the pair is answered again, and the curve of p(label) (the
explained label) against the share removed is summed into its area (AUC,
trapezoids over 0..1): the faster p(label) falls, the smaller the area. An
explanation is faithful when its order gives a smaller area than random order.

With `--demo-truth` (on the demo data, whose topic lives only in the texts'
topic words), a third order removes the topic words first (then the others at
random), and the explanation's top words are compared with the topic words.
Prints a summary over all pairs and over the pairs whose true label is not
NoEntailment; `--json` keeps it with every pair's figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

NO_ENTAILMENT = "NoEntailment"


def demo_topic_words() -> set[str]:
    """The demo's topic words: the words of a topic's phrases found in no other topic's,
    and the topic names (its hashtags), lower case."""
    from mmentail.sources.demo import TOPICS

    words = {topic: {word for phrase in phrases for word in phrase.split()} | {topic}
             for topic, phrases in TOPICS.items()}
    return {word for topic, own in words.items() for word in own
            if not any(word in other for name, other in words.items() if name != topic)}


def is_topic_word(word: str, topic_words: set[str]) -> bool:
    """Whether a word of a text, hashtag and punctuation aside, is a topic word.

    Example:
        >>> is_topic_word("#Flood", {"flood"}), is_topic_word("the", {"flood"})
        (True, False)
    """
    return re.sub(r"[^\w]", "", word.lower()) in topic_words


def area(curve: np.ndarray) -> float:
    """Area under a deletion curve whose points are evenly spread over 0..1.

    Example:
        >>> area(np.array([1.0, 0.0, 0.0]))
        0.25
    """
    if len(curve) < 2:
        return float(curve[0]) if len(curve) else float("nan")
    return float(np.trapezoid(curve, dx=1 / (len(curve) - 1)))


def _word_variants(pair: dict[str, bytes], words: dict[str, list[str]],
                   order: list[tuple[str, int]]) -> list[dict[str, bytes]]:
    """The pair with the first k words of `order` removed, for k = 0..len(order)."""
    from mmentail.serving.explain import without_words

    variants = []
    for k in range(len(order) + 1):
        removed = order[:k]
        variants.append({**pair, **{name: without_words(words[name], {i for n, i in removed
                                                                       if n == name}).encode()
                                    for name in words}})
    return variants


def _cell_variants(pair: dict[str, bytes], pixels: dict[str, np.ndarray],
                   order: list[tuple[str, int]], grid: tuple[int, int]
                   ) -> list[dict[str, bytes]]:
    """The pair with the first k cells of `order` grey, for k = 0..len(order)."""
    from mmentail.serving.explain import occluded

    variants = []
    for k in range(len(order) + 1):
        removed = order[:k]
        variants.append({**pair, **{name: occluded(pixels[name], [c for n, c in removed
                                                                  if n == name], grid)
                                    for name in pixels}})
    return variants


def pair_deletion(predict: Any, pair: dict[str, bytes], explanation: Any,
                  rng: np.random.Generator, random_orders: int = 5,
                  topic_words: set[str] | None = None, max_batch: int = 64
                  ) -> dict[str, Any]:
    """The deletion areas of one explained pair, every curve's variants in one batched call.

    Args:
        predict: the export's predict (a batch of the four inputs -> outputs).
        pair: the pair's four inputs, as bytes.
        explanation: its :class:`~mmentail.serving.explain.Explanation`.
        rng: draws the random orders.
        random_orders: random orders averaged.
        topic_words: with these, a topic-first order of the words too, and the share
            of the explanation's top words that are topic words.
        max_batch: most pairs a call.

    Returns:
        `words` and `cells`: the area of each order (`explanation`, `random`,
        and `topic_first` for words with `topic_words`); `topic_precision`;
        `drops`: p(label) minus p(label) without each part; `top_cell`: the
        explanation's first cell (`image_1:0` is image 1's top-left).
    """
    from mmentail.schema import LABELS
    from mmentail.serving.explain import predict_probabilities

    word_items = [(name, i) for name, words in explanation.words.items()
                  for i in range(len(words))]
    word_scores = [explanation.word_scores[name][i] for name, i in word_items]
    cell_items = [(name, c) for name, scores in explanation.cell_scores.items()
                  for c in range(scores.size)]
    cell_scores = [explanation.cell_scores[name].flat[c] for name, c in cell_items]
    orders: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for kind, items, scores in (("words", word_items, word_scores),
                                ("cells", cell_items, cell_scores)):
        if not items:
            continue
        orders[kind, "explanation"] = [items[i] for i in np.argsort(-np.asarray(scores),
                                                                     kind="stable")]
        for r in range(random_orders):
            orders[kind, f"random {r}"] = [items[i] for i in rng.permutation(len(items))]
    topic = []
    if topic_words is not None and word_items:
        topic = [item for item in word_items
                 if is_topic_word(explanation.words[item[0]][item[1]], topic_words)]
        rest = [item for item in word_items if item not in topic]
        orders["words", "topic_first"] = ([topic[i] for i in rng.permutation(len(topic))]
                                          + [rest[i] for i in rng.permutation(len(rest))])
    variants, spans = [], {}
    for key, order in orders.items():
        made = (_word_variants(pair, explanation.words, order) if key[0] == "words" else
                _cell_variants(pair, explanation.images, order, explanation.grid))
        spans[key] = (len(variants), len(variants) + len(made))
        variants += made
    columns = {name: [variant[name] for variant in variants] for name in pair}
    _, probabilities, _ = predict_probabilities(predict, columns, max_batch)
    column = LABELS.index(explanation.label)
    areas: dict[str, dict[str, float]] = {}
    for (kind, order), (start, end) in spans.items():
        name = "random" if order.startswith("random") else order
        areas.setdefault(kind, {}).setdefault(name, 0.0)
        weight = 1 / random_orders if name == "random" else 1.0
        areas[kind][name] += weight * area(probabilities[start:end, column])
    result: dict[str, Any] = {**areas, "variants": len(variants),
                              "drops": {part: explanation.label_probability - value
                                        for part, value in explanation.modalities.items()}}
    if cell_items:
        result["top_cell"] = "{}:{}".format(*orders["cells", "explanation"][0])
    if topic:
        top = set(orders["words", "explanation"][:len(topic)])
        result["topic_precision"] = len(top & set(topic)) / len(topic)
    return result


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind: pairs, the share whose explanation order (and topic-first order) fell
    faster than random, and the mean areas; the mean topic precision, the mean drop of
    p(label) without each part, and how often each cell came first."""
    summary: dict[str, Any] = {"pairs": len(results)}
    for kind in ("words", "cells"):
        rows = [result[kind] for result in results if kind in result]
        if not rows:
            continue
        figures = {"pairs": len(rows)}
        for order in rows[0]:
            figures[f"mean_area_{order}"] = float(np.mean([row[order] for row in rows]))
            if order != "random":
                figures[f"share_{order}_faster_than_random"] = float(np.mean(
                    [row[order] < row["random"] for row in rows]))
        summary[kind] = figures
    precision = [result["topic_precision"] for result in results if "topic_precision" in result]
    if precision:
        summary["mean_topic_precision"] = float(np.mean(precision))
    if results:
        summary["mean_drop_without"] = {part: float(np.mean([r["drops"][part] for r in results]))
                                        for part in results[0]["drops"]}
    top_cells = collections.Counter(r["top_cell"] for r in results if "top_cell" in r)
    if top_cells:
        summary["top_cell_counts"] = dict(top_cells.most_common())
    return summary


def run(export_dir: Path, data_csv: Path, image_dir: Path | None, *, random_orders: int,
        seed: int, demo_truth: bool, limit: int | None) -> dict[str, Any]:
    """Explains and deletion-tests every pair of the CSV (the first `limit`)."""
    from mmentail.data.pairs import read_pairs
    from mmentail.serving.explain import explain_pairs
    from mmentail.serving.loaded import load_export

    export = load_export(export_dir)
    export.warm_up()
    pairs = read_pairs(data_csv, None if export.modality == "text"
                       else image_dir or data_csv.parent / "images", labels_required=True)
    pairs = pairs.iloc[:limit] if limit else pairs
    rng = np.random.default_rng(seed)
    topic_words = demo_topic_words() if demo_truth else None
    results, start = [], time.monotonic()
    for _, row in pairs.iterrows():
        pair = {"text_1": row["text_1"].encode(), "text_2": row["text_2"].encode()}
        for name in ("image_1", "image_2"):
            pair[name] = (Path(row[f"{name}_path"]).read_bytes()
                          if f"{name}_path" in row else b"")
        [explanation] = explain_pairs(export.predict, {k: [v] for k, v in pair.items()},
                                      modality=export.modality)
        result = pair_deletion(export.predict, pair, explanation, rng, random_orders,
                               topic_words)
        results.append({"id_1": row["id_1"], "id_2": row["id_2"], "label": row["label"],
                        "predicted": explanation.label, **result})
    entailing = [result for result in results if result["label"] != NO_ENTAILMENT]
    return {"export": str(export_dir), "data_csv": str(data_csv), "random_orders": random_orders,
            "seed": seed, "seconds": time.monotonic() - start,
            "all": summarise(results), "label_not_noentailment": summarise(entailing),
            "pairs": results}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the test and prints its summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path, help="serving export")
    parser.add_argument("--data-csv", type=Path, required=True, help="labelled pairs (a test "
                        "split: <run>/splits/test.csv)")
    parser.add_argument("--image-dir", type=Path, help="images (default: images/ beside it)")
    parser.add_argument("--random-orders", type=int, default=5, help="random orders averaged")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random orders")
    parser.add_argument("--demo-truth", action="store_true",
                        help="the demo's topic words: a topic-first order and their precision")
    parser.add_argument("--limit", type=int, help="only the first N pairs")
    parser.add_argument("--json", type=Path, help="write the summary and per-pair figures")
    args = parser.parse_args(argv)
    import mmentail  # noqa: F401  (the export's tensorflow-text ops)
    from mmentail.io_utils import atomic_write_json

    report = run(args.export_dir, args.data_csv, args.image_dir,
                 random_orders=args.random_orders, seed=args.seed,
                 demo_truth=args.demo_truth, limit=args.limit)
    if args.json:
        atomic_write_json(args.json, report)
    print(json.dumps({key: report[key] for key in ("all", "label_not_noentailment",
                                                   "seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
