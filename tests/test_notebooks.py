"""The notebooks are stored as `tools/run_notebooks.py` executed them, and every notebook
runs top to bottom on a fresh install, offline, with quick settings."""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from helpers import load_tool

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebooks")
    return root, {"MMENTAIL_CACHE_DIR": str(root / "cache"), "MMENTAIL_NOTEBOOK_PAIRS": "120",
                  "MMENTAIL_NOTEBOOK_QUICK": "1", "MMENTAIL_NOTEBOOK_RUNS": str(root / "runs"),
                  # Notebook 03 serves the export notebook 02 made (it trains one if run alone).
                  "MMENTAIL_NOTEBOOK_EXPORT": str(root / "runs" / "demo-multimodal" / "export")}


def test_notebooks_are_stored_executed_from_their_current_sources():
    """Each code cell ran once, in order, without an error, from the source it holds now
    (the hash the tool recorded): a cell edited without running the notebooks again
    fails here. The figures are stored, and each notebook stays under 1 MB."""
    source_hash = load_tool("run_notebooks").source_hash
    assert [p.name for p in NOTEBOOKS] == ["01_explore_data.ipynb",
                                           "02_train_and_evaluate.ipynb",
                                           "03_serve_the_savedmodel.ipynb",
                                           "04_how_sure_and_why.ipynb"]
    for path in NOTEBOOKS:
        assert path.stat().st_size < 1_000_000, path.name
        cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), path.name
        for number, cell in enumerate(cells, 1):
            recorded = cell.metadata.get("mmentail", {}).get("source_sha256")
            assert recorded == source_hash(cell.source), (
                f"{path.name}: code cell {number} is not the one that ran; "
                f"run `python tools/run_notebooks.py {path.relative_to(path.parents[1])}`")
            assert not [o for o in cell.outputs if o.output_type == "error"], (path.name, number)
        assert any("image/png" in o.get("data", {}) for c in cells for o in c.outputs), path.name


def test_stored_outputs_leave_out_logs_and_shrink_large_pngs():
    """What `tools/run_notebooks.py` keeps of a cell's outputs: its own prints, not
    TensorFlow's log lines, Keras's epoch log or stderr; a large PNG re-encoded smaller
    with the same size and nearly the same colours."""
    import base64
    import io

    from nbformat.v4 import new_output
    from PIL import Image

    from helpers import png_pixels

    tool = load_tool("run_notebooks")
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    noisy = buffer.getvalue()
    assert len(noisy) > tool.PALETTE_ABOVE_BYTES
    outputs = [
        new_output("stream", name="stdout", text="INFO:tensorflow:Assets written to: /tmp/x\n"
                   "Epoch 1/30\n27/27 - 5s - loss: 0.5995 - 5s/epoch - 185ms/step\n"),
        new_output("stream", name="stdout", text="test accuracy 0.990\n"),
        new_output("stream", name="stderr", text="UserWarning: something\n"),
        new_output("display_data", data={"image/png": base64.b64encode(noisy).decode()}),
        new_output("stream", name="stdout", text="WARNING:tensorflow:5 out of the last\ndone\n"),
    ]
    kept = tool.quiet_outputs(outputs)
    assert [(o.output_type, o.get("text")) for o in kept] == [
        ("stream", "test accuracy 0.990\n"), ("display_data", None), ("stream", "done\n")]
    stored = base64.b64decode(kept[1].data["image/png"])
    assert len(stored) < len(noisy) * 0.6
    shown = png_pixels(stored)[..., :3].astype(int)
    assert shown.shape == pixels.shape
    assert np.abs(shown - pixels).mean() < 20


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, notebook_env, monkeypatch):
    root, env = notebook_env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(root)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
    text = "".join(o.get("text", "") for o in outputs)
    if path.stem.startswith("01"):
        assert "120 pairs" in text and "[CLS]" in str([o.get("data") for o in outputs])
    if path.stem.startswith("02"):
        assert "majority baseline" in text
        tables = str([o.get("data", {}).get("text/plain") for o in outputs])
        assert "text only" in tables and "multimodal" in tables
        assert len(images) >= 4  # curves, confusion matrix, per-class bars, comparison
    if path.stem.startswith("04"):
        tables = str([o.get("data", {}).get("text/plain") for o in outputs])
        assert "fold 2: vector map fitted on" in text and "texts: the demo pairs" in text
        assert "label_ece" in tables and "promised (after)" in tables
        assert text.count("(true ") == 3 and len(images) >= 5  # 2 diagrams, 3 explanations
    if path.stem.startswith("03"):
        assert "refused:" in text and "image_1" in text
        assert sum(label in text for label in ("Implies", "Contradictory", "NoEntailment")) >= 1
