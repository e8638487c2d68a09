"""Why an export answered as it did, by occlusion: `mmentail-explain` and the server's `:explain`.

    mmentail-explain runs/demo/export --data-csv pairs.csv --rows 1 6 10 --output why/

Every explanation is measured on the export itself, so it works for any model
the package trains, frozen or fine-tuned, text-only or image-only: parts of
the pair are taken away and the pair is answered again. For a pair whose
export label is L (its decision rule's) and whose model gives L the probability
p (the softmax of the export's `logits`, which decide the label: calibration
changes how sure the answer is, not what drove it):

- **modalities**: p(L) with each text blanked (`""`), with both, with each
  image replaced by a neutral one, and with both;
- **words**: each word's score is p minus p(L) with that word removed. Words
  are the whitespace-separated tokens a reader sees (:func:`split_words`); a
  text without some words is the others joined by single spaces
  (:func:`without_words`), which the export's tokenizer reads as the
  original, since it splits on any whitespace;
- **image cells**: each image is cut into a grid (4x4 by default) and each
  cell's score is p(L) with the image as it is minus p(L) with that cell
  filled with the neutral grey. The image "as it is" is the decoded pixels
  encoded again, as every variant is, so a score measures the cell alone and
  not a decoder difference.

Variants are encoded as BMP: lossless, and the cheapest to write and to read
(a 1200x675 photo: 3 ms to encode and 12 ms for the export to decode, against
99 and 27 ms as PNG). Images over :data:`MAX_SIDE` pixels a side are first
reduced to it (the export shrinks them to its 32-224 px anyway), which bounds
a variant to 3 MB; their cells are scored against the reduced image.

The neutral image is mid-grey, (128, 128, 128), at the image's own size: the
image encoders scale pixels by `x / 127.5 - 1`, so grey is the encoder's zero,
with no colour, edge or texture, and it stays a valid image of the same size.
Positive scores support the label (removing the part lowers p(L)); negative
ones argue against it.

The pairs themselves are answered first, so a refused input is named as in
`:predict` (`image_2[0]: ...`); then each pair's variants go to the export in
one batched call, in chunks of `max_batch` pairs. A pair costs
`7 + words + 2 * (cells + 1)` pair evaluations (its own, six modality
variants, one per word, and per image one per cell plus the re-encoded image).

Example:
    export = load_export("runs/demo/export")
    [why] = explain_pairs(export.predict, {"text_1": [b"flood downtown"],
                                           "image_1": [jpeg], "text_2": [b"river rising"],
                                           "image_2": [png]}, modality=export.modality)
    why.label, why.word_scores["text_1"], why.cell_scores["image_2"]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmentail.cli import run_command
from mmentail.data.pairs import DataError
from mmentail.errors import ConfigError, MmentailError
from mmentail.evaluation.calibration import softmax
from mmentail.io_utils import atomic_write_bytes, atomic_write_json
from mmentail.schema import EXPORT_INPUTS, IMAGE_KEYS, LABELS
from mmentail.serving import loaded
from mmentail.serving.loaded import LoadedExport
from mmentail.serving.predict import add_export_and_pairs_arguments

TEXT_INPUTS = ("text_1", "text_2")
NEUTRAL_GREY = (128, 128, 128)
MAX_SIDE = 1024
DEFAULT_GRID = (4, 4)
# The parts whose removal `modalities` reports, and what each takes away.
MODALITY_PARTS = {"text_1": ("text_1",), "text_2": ("text_2",), "texts": TEXT_INPUTS,
                  "image_1": ("image_1",), "image_2": ("image_2",), "images": IMAGE_KEYS}

Columns = Mapping[str, Sequence[bytes]]
Predict = Callable[[dict[str, list[bytes]]], Mapping[str, Any]]
log = logging.getLogger(__name__)


class UnreadableImage(MmentailError, ValueError):
    """An image the export may decode but Pillow cannot, so it cannot be occluded."""


def split_words(text: str) -> list[str]:
    """The words of a text: its whitespace-separated tokens, as a reader sees them.

    Example:
        >>> split_words("Breaking: the flood\\n\\n#flood 🔥")
        ['Breaking:', 'the', 'flood', '#flood', '🔥']
    """
    return text.split()


def without_words(words: Sequence[str], removed: Collection[int]) -> str:
    """The text of `words` without the words at the indices `removed`, joined by spaces.

    Example:
        >>> without_words(["the", "river", "flood"], {1})
        'the flood'
    """
    return " ".join(word for i, word in enumerate(words) if i not in removed)


def encode_variant(pixels: np.ndarray) -> bytes:
    """uint8 RGB [h, w, 3] as BMP bytes: lossless, and quick to write and to decode."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="BMP")
    return buffer.getvalue()


def decode_rgb(data: bytes, field: str = "image", max_side: int = MAX_SIDE) -> np.ndarray:
    """Encoded image bytes as uint8 RGB [h, w, 3], read as the export reads them: the
    first frame, transparent pixels composited onto white, 16-bit scaled to 8; reduced
    to at most `max_side` pixels a side, its shape kept.

    Raises:
        UnreadableImage: naming `field`, for bytes Pillow cannot decode.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)
            if image.mode.startswith("I;16"):
                rgb = Image.fromarray((np.asarray(image, np.uint16) >> 8).astype(np.uint8)
                                      ).convert("RGB")
            elif image.mode in ("RGBA", "LA", "PA", "La") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                rgb = Image.alpha_composite(white, rgba).convert("RGB")
            else:
                rgb = image.convert("RGB")
            rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            return np.asarray(rgb)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise UnreadableImage(f"{field}: the image cannot be read for its explanation: "
                              f"{error}") from None


def grid_cells(height: int, width: int, grid: tuple[int, int] = DEFAULT_GRID
               ) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of each grid cell, row by row, edges rounded to pixels.

    Example:
        >>> grid_cells(10, 6, (2, 3))
        [(0, 5, 0, 2), (0, 5, 2, 4), (0, 5, 4, 6), (5, 10, 0, 2), (5, 10, 2, 4), (5, 10, 4, 6)]
    """
    rows = np.linspace(0, height, grid[0] + 1).round().astype(int)
    cols = np.linspace(0, width, grid[1] + 1).round().astype(int)
    return [(int(rows[r]), int(rows[r + 1]), int(cols[c]), int(cols[c + 1]))
            for r in range(grid[0]) for c in range(grid[1])]


def occluded(pixels: np.ndarray, cells: Iterable[int], grid: tuple[int, int] = DEFAULT_GRID
             ) -> bytes:
    """`pixels` with the grid cells `cells` (row-major indices) filled with grey, encoded."""
    out = pixels.copy()
    bounds = grid_cells(*pixels.shape[:2], grid)
    for cell in cells:
        top, bottom, left, right = bounds[cell]
        out[top:bottom, left:right] = NEUTRAL_GREY
    return encode_variant(out)


def neutral_image(pixels: np.ndarray) -> bytes:
    """A mid-grey image of the same size as `pixels`, encoded."""
    return encode_variant(np.full_like(pixels, NEUTRAL_GREY))


def predict_probabilities(predict: Predict, columns: Columns, max_batch: int = 64
                          ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Probabilities [n, 3], the model's own probabilities [n, 3] and labels of
    `columns`' pairs, `max_batch` pairs a call.

    The model's own probabilities are the softmax of the export's `logits`, which its
    label is decided from (the calibrated probabilities, of an export without
    `logits`).
    """
    size = len(columns[EXPORT_INPUTS[0]])
    empty = np.zeros((0, len(LABELS)), np.float32)
    probabilities, model, labels = [empty], [empty], []
    for start in range(0, size, max_batch):
        outputs = predict({name: list(columns[name][start:start + max_batch])
                           for name in EXPORT_INPUTS})
        probabilities.append(np.asarray(outputs["probabilities"], np.float32))
        model.append(softmax(outputs["logits"]).astype(np.float32)
                     if "logits" in outputs else probabilities[-1])
        labels += [label.decode() if isinstance(label, bytes) else str(label)
                   for label in outputs["label"]]
    return np.concatenate(probabilities), np.concatenate(model), labels


@dataclasses.dataclass
class Explanation:
    """Why the export gave one pair its label.

    Attributes:
        label: the export's label (its decision rule's, on the model's logits).
        probabilities: the export's (calibrated) probabilities, in :data:`LABELS` order.
        model_probabilities: the model's own probabilities (softmax of the export's
            `logits`), which the label is decided from and every score measures.
        modalities: p(label) with each part of :data:`MODALITY_PARTS` removed.
        words: each text's words (:func:`split_words`).
        word_scores: per text, each word's score (p(label) minus p(label) without it).
        cell_scores: per image, [rows, cols] scores (p(label) minus p(label) with the
            cell grey).
        images: per image, the decoded pixels the cells cut (for the picture).
        grid: (rows, cols) of the image grids.
        variants: pair evaluations the explanation took, the pair's own included.
    """

    label: str
    probabilities: np.ndarray
    model_probabilities: np.ndarray
    modalities: dict[str, float]
    words: dict[str, list[str]]
    word_scores: dict[str, np.ndarray]
    cell_scores: dict[str, np.ndarray]
    images: dict[str, np.ndarray]
    grid: tuple[int, int]
    variants: int

    @property
    def label_probability(self) -> float:
        """The model's p(label) of the whole pair, which the scores are drops of."""
        return float(self.model_probabilities[LABELS.index(self.label)])

    def to_json(self) -> dict[str, Any]:
        """The explanation as JSON: what `mmentail-explain` writes and `:explain` answers."""
        p = self.label_probability
        return {
            "label": self.label,
            "probabilities": {label: float(value)
                              for label, value in zip(LABELS, self.probabilities)},
            "model_probabilities": {label: float(value) for label, value
                                    in zip(LABELS, self.model_probabilities)},
            "label_probability": p,
            "modalities": {part: {"probability": value, "drop": p - value}
                           for part, value in self.modalities.items()},
            "words": {name: [{"word": word, "score": float(score)}
                             for word, score in zip(self.words[name], self.word_scores[name])]
                      for name in self.words},
            "cells": {name: scores.tolist() for name, scores in self.cell_scores.items()},
            "grid": list(self.grid),
            "variants": self.variants,
        }


class _Variants:
    """Pairs to evaluate, each under a key saying what it is."""

    def __init__(self) -> None:
        self.columns: dict[str, list[bytes]] = {name: [] for name in EXPORT_INPUTS}
        self.index: dict[tuple, int] = {}

    def add(self, key: tuple, pair: Mapping[str, bytes]) -> None:
        self.index[key] = len(self.columns[EXPORT_INPUTS[0]])
        for name in EXPORT_INPUTS:
            self.columns[name].append(pair[name])


def explain_pairs(predict: Predict, columns: Columns, *, modality: str = "both",
                  grid: tuple[int, int] = DEFAULT_GRID, max_batch: int = 64
                  ) -> list[Explanation]:
    """Explains each pair of `columns` by occlusion (see the module's description).

    Args:
        predict: answers a batch of the four inputs (a :class:`LoadedExport`'s
            `predict`, or the server's batcher), giving at least `probabilities`
            and `label`.
        columns: the pairs: each input name to a list of bytes (texts UTF-8,
            images encoded).
        modality: which inputs the export reads (`both`, `text`, `image`); the
            others are not varied.
        grid: (rows, cols) of the cells each image is cut into.
        max_batch: most pairs in one call of `predict`.

    Raises:
        tf.errors.InvalidArgumentError: an input the export refuses, named as
            in `:predict` (`image_2[0]: ...`).
        UnreadableImage: an image Pillow cannot decode, named.
    """
    if min(grid) < 1:
        raise ConfigError(f"the grid needs at least 1x1 cells, not {grid[0]}x{grid[1]}")
    probabilities, model, labels = predict_probabilities(predict, columns, max_batch)
    pairs = [{name: columns[name][i] for name in EXPORT_INPUTS} for i in range(len(labels))]
    pixels = [{name: decode_rgb(pair[name], f"{name}[{i}]") for name in IMAGE_KEYS}
              if modality != "text" else {} for i, pair in enumerate(pairs)]
    # Pair by pair: one pair's variants in memory at a time (36 images of up to 3 MB each).
    return [_explain_pair(predict, pair, pixels[i], (probabilities[i], model[i]), labels[i],
                          modality != "image", grid, max_batch)
            for i, pair in enumerate(pairs)]


def _explain_pair(predict: Predict, pair: dict[str, bytes], pixels: dict[str, np.ndarray],
                  probabilities: tuple[np.ndarray, np.ndarray], label: str, texts: bool,
                  grid: tuple[int, int],
                  max_batch: int) -> Explanation:
    """One pair's explanation: its variants built, answered in one batched call, scored."""
    words = {name: split_words(pair[name].decode("utf-8", "replace")) for name in TEXT_INPUTS}
    blank = {**{name: b"" for name in TEXT_INPUTS},
             **{name: neutral_image(pixels[name]) for name in pixels}}
    variants = _Variants()
    for part, removed in MODALITY_PARTS.items():
        if texts if part.startswith("text") else pixels:
            variants.add((part,), {**pair, **{name: blank[name] for name in removed}})
    for name in TEXT_INPUTS if texts else ():
        for w in range(len(words[name])):
            variants.add((name, w), {**pair, name: without_words(words[name], {w}).encode()})
    cells = grid[0] * grid[1]
    for name in pixels:
        variants.add((name, "as is"), {**pair, name: encode_variant(pixels[name])})
        for cell in range(cells):
            variants.add((name, cell), {**pair, name: occluded(pixels[name], [cell], grid)})
    _, varied, _ = predict_probabilities(predict, variants.columns, max_batch)
    column = LABELS.index(label)
    p = float(probabilities[1][column])

    def label_p(*key: Any) -> float:
        return float(varied[variants.index[key], column])

    return Explanation(
        label=label, probabilities=probabilities[0], model_probabilities=probabilities[1],
        modalities={part: label_p(part) for part in MODALITY_PARTS
                    if (part,) in variants.index},
        words=words if texts else {},
        word_scores={name: np.asarray([p - label_p(name, w) for w in range(len(words[name]))])
                     for name in TEXT_INPUTS} if texts else {},
        cell_scores={name: np.asarray([label_p(name, "as is") - label_p(name, c)
                                       for c in range(cells)]).reshape(grid)
                     for name in pixels},
        images=pixels, grid=tuple(grid), variants=1 + len(variants.index))


@dataclasses.dataclass
class ExplainResult:
    """What :func:`explain_csv` wrote: per row, its JSON and picture, and its seconds."""

    written: dict[int, tuple[Path, Path]]
    seconds: dict[int, float]


def explain_csv(export: str | Path | LoadedExport, data_csv: str | Path, rows: Sequence[int],
                output: str | Path, *,
                image_dir: str | Path | None = None, grid: tuple[int, int] = DEFAULT_GRID,
                batch_size: int = 64) -> ExplainResult:
    """Explains rows of a pairs CSV, writing `<row>.json` and `<row>.png` to `output`.

    Rows are numbered as `mmentail-predict` numbers them: 1 is the first row
    after the header. Only the rows asked for must be valid.

    Args:
        export: a serving export's directory, or a :class:`LoadedExport`.
        data_csv: pairs CSV (training's schema; `label` optional).
        rows: the row numbers to explain.
        output: folder for the files (created).
        image_dir: the images (default: `images/` beside the CSV).
        grid: (rows, cols) of the image grids.
        batch_size: most pairs in one model call.

    Raises:
        DataError: a row asked for that is not in the CSV, or is invalid (its problem).
    """
    from mmentail.serving.explain_figure import explanation_png  # it imports this module

    rows = [int(row) for row in rows]  # numpy integers too
    export, pairs, report = loaded.read_pairs_for(export, data_csv, image_dir,
                                                  skip_bad_rows=True)
    skipped = dict(zip(report.skipped_rows, report.skipped))
    kept = [row for row in range(1, report.rows_read + 1) if row not in skipped]
    problems = [f"row {row}: there is no such row (rows are numbered from 1, the first row "
                f"after the header, to {report.rows_read})"
                for row in rows if not 1 <= row <= report.rows_read]
    problems += [skipped[row] for row in rows if row in skipped]
    if problems:
        raise DataError(str(data_csv), problems)
    start = time.monotonic()
    export.warm_up()  # loaded before the first row, so each row's seconds are its own
    log.info("loaded %s in %.1f s", export.path, time.monotonic() - start)
    result = ExplainResult({}, {})
    for row in rows:
        pair = pairs.iloc[kept.index(row)]
        columns = {name: [pair[name].encode("utf-8")] for name in TEXT_INPUTS}
        for name in IMAGE_KEYS:
            columns[name] = [Path(pair[f"{name}_path"]).read_bytes() if image_dir else b""]
        start = time.monotonic()
        [explanation] = explain_pairs(export.predict, columns, modality=export.modality,
                                      grid=grid, max_batch=batch_size)
        result.seconds[row] = time.monotonic() - start
        record = {"row": row, "id_1": str(pair["id_1"]), "id_2": str(pair["id_2"]),
                  **({"true_label": pair["label"]} if pair["label"] else {}),
                  **explanation.to_json()}
        json_path, png_path = Path(output) / f"{row}.json", Path(output) / f"{row}.png"
        atomic_write_json(json_path, record)
        atomic_write_bytes(png_path, explanation_png(
            explanation, title=f"row {row}, ids {pair['id_1']}/{pair['id_2']}"
                               + (f", true label {pair['label']}" if pair["label"] else "")))
        result.written[row] = (json_path, png_path)
        log.info("row %d: %s, %d pair evaluations in %.2f s", row, explanation.label,
                 explanation.variants, result.seconds[row])
    return result


def grid_flag(value: str) -> tuple[int, int]:
    """`--grid` as (rows, cols): `4` is 4x4, `3x5` is 3 rows of 5 cells.

    Example:
        >>> grid_flag("4"), grid_flag("3x5")
        ((4, 4), (3, 5))
    """
    try:
        parts = [int(part) for part in value.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give N (NxN cells) or ROWSxCOLS, "
                                         "each at least 1")
    return (parts[0], parts[-1])


def build_parser() -> argparse.ArgumentParser:
    """`mmentail-explain`'s flags."""
    parser = argparse.ArgumentParser(
        prog="mmentail-explain",
        description="Explain an export's answers for rows of a pairs CSV: per row, "
                    "<row>.json and <row>.png in --output (what each text, image, word and "
                    "image cell carried, by occlusion).")
    add_export_and_pairs_arguments(parser)
    parser.add_argument("--rows", type=int, nargs="+", required=True,
                        help="rows to explain, numbered as mmentail-predict numbers them "
                             "(1 = the first row after the header)")
    parser.add_argument("--output", required=True, help="folder for <row>.json and <row>.png")
    parser.add_argument("--grid", type=grid_flag, default=DEFAULT_GRID,
                        help="cells each image is cut into: N (NxN) or ROWSxCOLS "
                             "(default 4)")
    parser.add_argument("--batch-size", type=int, default=64, help="pairs per model call")
    return parser


def _explain(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    result = explain_csv(args.export_dir, args.data_csv, args.rows, args.output,
                         image_dir=args.image_dir, grid=args.grid, batch_size=args.batch_size)
    for row, (json_path, png_path) in result.written.items():
        print(f"row {row}: {json_path} {png_path} ({result.seconds[row]:.2f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The `mmentail-explain` command: 0 when every row's files are written."""
    return run_command(build_parser(), _explain, argv)


if __name__ == "__main__":
    sys.exit(main())
