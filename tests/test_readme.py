"""The README's serving snippet runs as written against a real export."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(marker: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"README has no block after <!-- {marker} -->"
    return match.group(1)


def test_serving_snippet_runs(exported, demo_pairs, tmp_path, monkeypatch, capsys):
    _, export_dir = exported
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    shutil.copytree(export_dir, tmp_path / "runs" / "demo" / "export")
    shutil.copy(demo_pairs["image_1_path"][0], tmp_path / "post_a.jpg")
    shutil.copy(demo_pairs["image_2_path"][0], tmp_path / "post_b.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(_block("serving-snippet"), "README.md", "exec"), {})
    label, probabilities = capsys.readouterr().out.split(" ", 1)
    assert label in ("Contradictory", "Implies", "NoEntailment")
    assert probabilities.startswith("[")


def test_ci_commands_are_in_the_readme():
    assert "pip install -e" in _block("install")
    assert _block("demo").strip() == "mmentail-train --preset demo"
    assert "pytest" in _block("test")


def test_configuration_table_lists_every_flag():
    import argparse

    from mmentail.train import build_parser

    table = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(--[a-z-]+)`", table, re.M))
    flags = {option for action in build_parser()._actions for option in action.option_strings
             if option.startswith("--") and not option.startswith("--no-")
             and action.help != argparse.SUPPRESS} - {"--help"}
    shared = {"--debug", "--verbose"}  # added by cli.run_command, not build_parser
    assert flags - shared <= listed, sorted(flags - listed)
    assert listed <= flags | shared, sorted(listed - flags)
