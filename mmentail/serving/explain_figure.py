"""The picture of an explanation: the texts with their words shaded, each image under its
heat map, and what each part carried, on one colour scale.

Red marks what supports the label (taking it away lowers p(label)), blue what
argues against it; words and image cells share the scale, so a red word and a
red cell of the same shade moved p(label) as much. Drawn without pyplot, so a
caller's matplotlib backend is left alone.

Example:
    [why] = explain_pairs(export.predict, columns)
    Path("why.png").write_bytes(explanation_png(why, title="row 5"))
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from mmentail.schema import LABELS
from mmentail.serving.explain import Explanation

_CMAP = "RdBu_r"
# The colour scale spans at least this much, so a pair whose parts barely matter
# is drawn pale rather than saturated by its noise.
_MIN_SCALE = 0.01
# Linear within this score, logarithmic beyond: a saturated probability moves by
# thousandths when a word goes, and those still show their order in colour.
_LINEAR_UP_TO = 0.001
_PART_NAMES = {"text_1": "text 1", "text_2": "text 2", "texts": "both texts",
               "image_1": "image 1", "image_2": "image 2", "images": "both images"}


def explanation_figure(explanation: Explanation, title: str = ""):
    """A matplotlib Figure of `explanation` (see the module's description)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import SymLogNorm
    from matplotlib.figure import Figure

    scores = [*explanation.word_scores.values(), *explanation.cell_scores.values()]
    largest = max([float(np.abs(s).max()) for s in scores if np.size(s)] + [_MIN_SCALE])
    norm = SymLogNorm(_LINEAR_UP_TO, vmin=-largest, vmax=largest, base=10)
    has_texts, has_images = bool(explanation.words), bool(explanation.images)
    longest = max([len(" ".join(words)) for words in explanation.words.values()] + [0])
    heights = [0.6 + 0.3 * (longest // 60 + 1)] * has_texts + [3.2] * has_images + [1.5]
    figure = Figure(figsize=(11, 1.2 + sum(heights)), layout="constrained")
    FigureCanvasAgg(figure)  # text extents are measured while the words are laid out
    grid = figure.add_gridspec(len(heights), 3, height_ratios=heights,
                               width_ratios=[1, 1, 0.04])
    p = explanation.label_probability
    others = ", ".join(f"{label} {value:.2f}"
                       for label, value in zip(LABELS, explanation.probabilities))
    figure.suptitle(f"{explanation.label} (model's p = {p:.2f}, which the scores are drops of)"
                    f"\n{title + chr(10) if title else ''}calibrated probabilities: {others}",
                    fontsize=11)
    row = 0
    if has_texts:
        for side, name in enumerate(explanation.words):
            ax = figure.add_subplot(grid[row, side])
            _shaded_words(ax, explanation.words[name], explanation.word_scores[name], norm,
                          f"post {side + 1} text")
        row += 1
    mappable = None
    if has_images:
        for side, name in enumerate(explanation.images):
            ax = figure.add_subplot(grid[row, side])
            mappable = _heat_map(ax, explanation.images[name], explanation.cell_scores[name],
                                 norm, f"post {side + 1} image")
        row += 1
    _parts(figure.add_subplot(grid[row, :2]), explanation)
    if mappable is None:
        from matplotlib.cm import ScalarMappable

        mappable = ScalarMappable(norm, _CMAP)
    bar = figure.colorbar(mappable, cax=figure.add_subplot(grid[:row, 2]))
    bar.set_label(f"drop in p({explanation.label}) when taken away (log scale beyond "
                  f"{_LINEAR_UP_TO:g})\nred: supports the label, blue: against it", fontsize=9)
    return figure


def explanation_png(explanation: Explanation, title: str = "") -> bytes:
    """:func:`explanation_figure` as PNG bytes."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # emoji the font lacks are drawn as boxes
        warnings.filterwarnings("ignore", "Glyph .* missing from font", UserWarning)
        explanation_figure(explanation, title).savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _shaded_words(ax, words: list[str], scores: np.ndarray, norm, heading: str) -> None:
    """The words laid out as running text, each on a box shaded by its score."""
    from matplotlib import colormaps

    cmap = colormaps[_CMAP]
    ax.set_axis_off()
    ax.set_title(heading, loc="left", fontsize=10, color="0.3")
    if not words:
        ax.text(0, 1, "(no words)", va="top", fontsize=10, color="0.4")
        return
    renderer = ax.figure.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    size = 11 if len(words) <= 40 else 8
    x, y, line = 0.0, 1.0, 0.0
    space = 0.012
    for word, score in zip(words, scores):
        colour = cmap(norm(score))
        dark = np.dot(colour[:3], (0.299, 0.587, 0.114)) < 0.5
        text = ax.text(x, y, word, va="top", ha="left", fontsize=size,
                       color="white" if dark else "black", transform=ax.transAxes,
                       bbox={"boxstyle": "round,pad=0.2", "facecolor": colour,
                             "edgecolor": "none"})
        extent = text.get_window_extent(renderer)
        width, line = extent.width / box.width, max(line, 1.6 * extent.height / box.height)
        if x > 0 and x + width > 1:
            x, y = 0.0, y - line
            text.set_position((x, y))
        x += width + space


def _heat_map(ax, pixels: np.ndarray, scores: np.ndarray, norm, heading: str):
    """The image with its cells' scores laid over it, half transparent, and written in."""
    height, width = pixels.shape[:2]
    ax.imshow(pixels, extent=(0, width, height, 0))
    # The stronger a cell's score, the more its colour covers the image: cells that do
    # not matter leave the image as it is, whatever its own colours.
    opacity = np.clip(1.7 * np.abs(norm(scores) - 0.5), 0, 0.85)
    mappable = ax.imshow(scores, cmap=_CMAP, norm=norm, alpha=opacity, interpolation="nearest",
                         extent=(0, width, height, 0))
    rows, cols = scores.shape
    box = ax.get_window_extent(ax.figure.canvas.get_renderer())
    cell_inches = min(box.width * height / width, box.height) / ax.figure.dpi / cols
    for r in range(rows):  # the scores that round to a hundredth, where the cells leave room
        for c in range(cols if cell_inches > 0.45 else 0):
            value = scores[r, c]
            if abs(value) < 0.005:
                continue
            ax.text((c + 0.5) * width / cols, (r + 0.5) * height / rows, f"{value:+.2f}",
                    ha="center", va="center", fontsize=8,
                    bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "alpha": 0.6,
                          "edgecolor": "none"})
    ax.set_xticks(np.linspace(0, width, cols + 1), labels=[])
    ax.set_yticks(np.linspace(0, height, rows + 1), labels=[])
    ax.grid(True, color="white", linewidth=0.8)
    ax.tick_params(length=0)
    ax.set_title(f"{heading} ({width}x{height}, {rows}x{cols} cells)", loc="left", fontsize=10,
                 color="0.3")
    return mappable


def _parts(ax, explanation: Explanation) -> None:
    """p(label) with each text or image taken away, beside the whole pair's."""
    parts = list(explanation.modalities)
    values = [explanation.modalities[part] for part in parts]
    p = explanation.label_probability
    positions = np.arange(len(parts))[::-1]
    ax.barh(positions, values, color="#8fa9d6", height=0.6)
    ax.axvline(p, color="#b2182b", linewidth=1.5)
    for y, value in zip(positions, values):
        ax.text(min(value + 0.01, 0.93), y, f"{value:.2f}", va="center", fontsize=8)
    ax.set_yticks(positions, labels=[f"without {_PART_NAMES[part]}" for part in parts],
                  fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"p({explanation.label})", fontsize=9)
    ax.set_title(f"what each part carried: p(label) with it taken away (texts blanked, images "
                 f"grey); red line: the whole pair, {p:.2f}", loc="left", fontsize=10,
                 color="0.3")
