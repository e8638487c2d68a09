"""Every notebook runs top to bottom on a fresh install, offline, with quick settings."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebooks")
    return root, {"MMENTAIL_CACHE_DIR": str(root / "cache"), "MMENTAIL_NOTEBOOK_PAIRS": "120",
                  "MMENTAIL_NOTEBOOK_QUICK": "1", "MMENTAIL_NOTEBOOK_RUNS": str(root / "runs"),
                  # Notebook 03 serves the export notebook 02 made (it trains one if run alone).
                  "MMENTAIL_NOTEBOOK_EXPORT": str(root / "runs" / "demo-multimodal" / "export")}


def test_notebooks_are_committed_without_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01_explore_data.ipynb",
                                           "02_train_and_evaluate.ipynb",
                                           "03_serve_the_savedmodel.ipynb",
                                           "04_how_sure_and_why.ipynb"]
    for path in NOTEBOOKS:
        cells = nbformat.read(path, as_version=4).cells
        assert all(not cell.get("outputs") for cell in cells if cell.cell_type == "code"), path


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
        assert "calibration: vector, fitted on validation split" in text
        assert "classwise_ece" in tables and "accuracy of those" in tables
        assert text.count("(true ") == 3 and len(images) >= 5  # 2 diagrams, 3 explanations
    if path.stem.startswith("03"):
        assert "refused:" in text and "image_1" in text
        assert sum(label in text for label in ("Implies", "Contradictory", "NoEntailment")) >= 1
