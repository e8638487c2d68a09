"""Re-executes the notebooks in place, so that they are stored with their outputs.

    python tools/run_notebooks.py                      # all of notebooks/, full demo runs
    python tools/run_notebooks.py notebooks/03_serve_the_savedmodel.ipynb --quick

Each notebook runs top to bottom in a fresh kernel (nbclient), in order, in one
scratch directory: their runs go to its `runs/notebook/` (the notebooks' own
default, so the outputs show that relative path) and are thrown away after;
notebook 03 serves the export notebook 02 trained. The demo data and hub modules
come from the notebooks' own cache (`~/.cache/mmentail`, or `--cache-dir`), as
for a reader. Every code cell records the SHA-256 of its source in its metadata
(`mmentail.source_sha256`): `tests/test_notebooks.py` recomputes it, so a cell
edited after the run fails until the notebooks are run again.

The outputs are kept small and free of what changes on every run without saying
anything about the notebook: TensorFlow's C++ log lines are silenced
(TF_CPP_MIN_LOG_LEVEL=2); stderr streams (Python's warnings) are dropped, and so
are the lines of TensorFlow's Python logger (temporary paths, retracing notes)
and Keras's per-epoch log (its epoch timings; the losses and scores per epoch are
in the training-curves figure). Figures stay at 100 dpi (matplotlib's, and the
runs' own images'); a PNG over 100 KiB (photo-like demo images, explanations) is
stored with a 256-colour palette, a third of its size. No cell timings are
recorded.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import nbformat
from nbclient import NotebookClient
from PIL import Image

from mmentail.io_utils import atomic_write_text

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
METADATA_KEY = "mmentail"
# The tiny settings the notebooks take from MMENTAIL_NOTEBOOK_QUICK=1 (as their test does).
QUICK_ENV = {"MMENTAIL_NOTEBOOK_QUICK": "1", "MMENTAIL_NOTEBOOK_PAIRS": "120"}
NOTEBOOK_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2",
                # Notebook 03 serves the export notebook 02 trained (relative to the kernel's
                # working directory, where the notebooks' runs/notebook/ is).
                "MMENTAIL_NOTEBOOK_EXPORT": "runs/notebook/demo-multimodal/export"}
# Lines of stdout left out: TensorFlow's Python logger, Keras's `verbose=2` epoch log.
NOISE_LINE = re.compile(r"^(?:(?:INFO|WARNING):tensorflow:.*|Epoch \d+/\d+|"
                        r"\d+/\d+ - \d+m?s - .*/step)$")
PALETTE_ABOVE_BYTES = 100 * 1024


def source_hash(source: str) -> str:
    """The SHA-256 (hex) of a cell's source, as recorded in its metadata.

    Example:
        >>> source_hash("print(1)")[:12]
        'd287bb7f9d15'
    """
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def palette_png(data: bytes) -> bytes:
    """PNG `data` again with a 256-colour palette (median cut, no dithering), drawn on
    white where it is transparent; the original if that is not smaller.

    Example:
        palette_png(Path("runs/demo/why/row-1.png").read_bytes())
    """
    image = Image.open(io.BytesIO(data)).convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
    buffer = io.BytesIO()
    flat.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        buffer, format="PNG", optimize=True)
    return buffer.getvalue() if buffer.tell() < len(data) else data


def quiet_outputs(outputs: list[nbformat.NotebookNode]) -> list[nbformat.NotebookNode]:
    """`outputs` without stderr streams and without the stdout lines of :data:`NOISE_LINE`,
    consecutive stdout streams joined into one, PNGs over :data:`PALETTE_ABOVE_BYTES`
    with a palette (:func:`palette_png`).

    Example:
        >>> from nbformat.v4 import new_output
        >>> outputs = [new_output("stream", name="stdout", text="Epoch 1/2\\n"),
        ...            new_output("stream", name="stdout", text="test accuracy 0.9\\n"),
        ...            new_output("stream", name="stderr", text="UserWarning: ...\\n")]
        >>> [(o.name, o.text) for o in quiet_outputs(outputs)]
        [('stdout', 'test accuracy 0.9\\n')]
    """
    kept: list[nbformat.NotebookNode] = []
    for output in outputs:
        if output.output_type == "stream":
            if output.name != "stdout":
                continue
            text = "".join(line for line in output.text.splitlines(keepends=True)
                           if not NOISE_LINE.match(line.rstrip("\n")))
            if not text:
                continue
            if kept and kept[-1].output_type == "stream":
                kept[-1].text += text
                continue
            output.text = text
        png = output.get("data", {}).get("image/png")
        if png and len(png) * 3 // 4 > PALETTE_ABOVE_BYTES:
            output.data["image/png"] = base64.b64encode(
                palette_png(base64.b64decode(png))).decode("ascii")
        kept.append(output)
    return kept


def execute(path: Path, workdir: Path) -> nbformat.NotebookNode:
    """The notebook at `path` run top to bottom in a fresh kernel whose working directory
    is `workdir` (the environment as set by the caller), its outputs quietened
    (:func:`quiet_outputs`) and each code cell's source hash recorded.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed (the file is left as it was).
    """
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=1800, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = quiet_outputs(cell.outputs)
            cell.metadata[METADATA_KEY] = {"source_sha256": source_hash(cell.source)}
    return notebook


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_notebooks.py", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="the notebooks to run, in order (default: all of notebooks/)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny runs (the notebook test's settings) instead of the demo's")
    parser.add_argument("--cache-dir", type=Path,
                        help="the demo data and hub modules (default: the notebooks' own, "
                             "~/.cache/mmentail)")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    os.environ.update(NOTEBOOK_ENV, **(QUICK_ENV if args.quick else {}))
    if args.cache_dir is not None:
        os.environ["MMENTAIL_CACHE_DIR"] = str(args.cache_dir.resolve())
    with tempfile.TemporaryDirectory(prefix="mmentail-notebooks-") as scratch:
        for path in paths:
            start = time.perf_counter()
            notebook = execute(path, Path(scratch))
            atomic_write_text(path, nbformat.writes(notebook) + "\n")
            print(f"{path.name}: {time.perf_counter() - start:.0f} s, "
                  f"{path.stat().st_size / 1024:.0f} KiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
