"""The commands and code the README and the guides show are the ones that run.

CI runs the README's install, demo and test blocks (`.ci/run`); here the
serving snippet of docs/serving.md runs against a real export, and the flag
table of docs/training.md is the one the flags render.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from helpers import load_tool

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SERVING_GUIDE = ROOT / "docs" / "serving.md"


def _block(marker: str, page: Path = README) -> str:
    """The fenced block that follows `<!-- marker -->` in `page`."""
    match = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```", page.read_text(), re.S)
    assert match, f"{page.name} has no block after <!-- {marker} -->"
    return match.group(1)


def test_serving_snippet_runs(exported, demo_pairs, tmp_path, monkeypatch, capsys):
    _, export_dir = exported
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    shutil.copytree(export_dir, tmp_path / "runs" / "demo" / "export")
    shutil.copy(demo_pairs["image_1_path"][0], tmp_path / "post_a.jpg")
    shutil.copy(demo_pairs["image_2_path"][0], tmp_path / "post_b.png")
    monkeypatch.chdir(tmp_path)
    snippet = _block("serving-snippet", SERVING_GUIDE)
    exec(compile(snippet, str(SERVING_GUIDE), "exec"), {})
    label, probabilities = capsys.readouterr().out.split(" ", 1)
    assert label in ("Contradictory", "Implies", "NoEntailment")
    assert probabilities.startswith("[")


def test_ci_commands_are_in_the_readme():
    assert "pip install -e" in _block("install")
    assert _block("demo").strip() == "mmentail-train --preset demo"
    assert "pytest" in _block("test")


def test_flag_table_in_the_training_guide_is_what_the_flags_render():
    flag_table = load_tool("flag_table")
    assert flag_table.documented_table() == flag_table.rendered_table(), (
        "docs/training.md's flag table is not what mmentail-train's flags give: "
        "run python tools/flag_table.py")
