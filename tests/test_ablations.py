"""A small version of tools/ablations.py: the demo needs both modalities."""

from __future__ import annotations

import pytest

from helpers import TINY_IMAGE, TINY_SEQ, load_tool
from mmentail.config.presets import resolve_config
from mmentail.sources.demo import prepare_demo


@pytest.fixture(scope="module")
def ablations():
    return load_tool("ablations")


@pytest.mark.slow  # trains three models
def test_multimodal_beats_each_single_modality_and_the_majority(ablations, tmp_path):
    demo = prepare_demo(tmp_path / "demo", num_pairs=300, seed=5, image_size_range=(24, 48))
    overrides = {"output": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
                 "data_csv": str(demo.csv_path),
                 "image_dir": str(demo.image_dir),
                 "preprocess_handle": str(demo.preprocess_dir),
                 "encoder_handle": str(demo.encoder_dir), "image_backbone": "resnet_tiny",
                 "image_size": TINY_IMAGE,
                 "seq_length": TINY_SEQ, "batch_size": 16, "epochs": 30,
                 "learning_rate": 3e-3, "calibration": "none"}  # the labels as trained
    variants = {name: ablations.VARIANTS[name] for name in (
        "multimodal, cross-entropy", "text only, cross-entropy", "image only, cross-entropy")}
    results = ablations.run_ablations(resolve_config("demo", overrides), variants)
    f1 = {name: m["macro_f1"] for name, m in results.items()}
    both = f1.pop("multimodal, cross-entropy")
    assert all(both > single + 0.1 for single in f1.values()), (both, f1)
    baseline = results["multimodal, cross-entropy"]["majority_baseline"]
    assert both > baseline["macro_f1"] + 0.2
    table = ablations.markdown_table([results])
    assert table.count("\n") == 5 and f"| {both:.3f} |" in table
    # Several seeds: medians, and each seed's minority recall in a last column.
    worse = {name: {**m, "macro_f1": 0.0} for name, m in results.items()}
    table = ablations.markdown_table([results, worse, results])
    first = table.splitlines()[2]
    assert first.startswith(f"| multimodal, cross-entropy | {both:.3f} |")
    assert first.count(" / ") == 2
    assert not (tmp_path / "runs" / "0" / "export").exists()


def test_help_lists_the_train_flags_and_seeds(ablations, capsys):
    with pytest.raises(SystemExit) as exit_:
        ablations.main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert "--seeds" in shown and "--epochs" in shown and "--modality" in shown


def test_variants_are_overrides_of_the_base_config(ablations):
    from mmentail.config.experiment import with_overrides

    base = resolve_config("demo", {"output": "runs/x"})
    for changes in ablations.VARIANTS.values():
        with_overrides(base, changes)  # every variant names real settings
    assert with_overrides(base, ablations.VARIANTS["text only, cross-entropy"]
                          ).model.modality == "text"
