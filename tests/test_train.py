from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import tensorflow as tf
from helpers import TINY_IMAGE, TINY_SEQ

from mmentail.config import resolve_config
from mmentail.train import main


def _args(demo, output) -> list[str]:
    return ["--preset", "demo", "--output", str(output), "--data-csv", str(demo.csv_path),
            "--image-dir", str(demo.image_dir), "--preprocess-handle", str(demo.preprocess_dir),
            "--encoder-handle", str(demo.encoder_dir), "--image-size", str(TINY_IMAGE),
            "--seq-length", str(TINY_SEQ), "--batch-size", "16", "--epochs", "2"]


def test_cli_trains_records_the_run_and_exports(demo, tmp_path, capsys):
    output = tmp_path / "run"
    assert main(_args(demo, output)) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and str(output / "export") in printed

    config = json.loads((output / "config.json").read_text())
    assert config["epochs"] == 2 and config["image_size"] == TINY_IMAGE
    assert config["encoder_handle"] == str(demo.encoder_dir)
    splits = {name: pd.read_csv(output / "splits" / f"{name}.csv", dtype=str)
              for name in ("train", "val", "test")}
    assert sum(len(s) for s in splits.values()) == 80
    assert set(splits["train"].id_1).isdisjoint(splits["test"].id_1)
    assert list(splits["test"].columns) == ["id_1", "text_1", "image_1", "id_2", "text_2",
                                            "image_2", "label"]
    metrics = json.loads((output / "metrics.json").read_text())
    assert 0 <= metrics["macro_f1"] <= 1
    assert sum(map(sum, metrics["confusion_matrix"])) == len(splits["test"])
    assert len(pd.read_csv(output / "history.csv")) == 2

    served = tf.saved_model.load(str(output / "export"))
    image = demo.image_dir.iterdir().__next__().read_bytes()
    result = served.signatures["serving_default"](
        text_1=tf.constant(["Breaking: the river flood downtown"]), image_1=tf.constant([image]),
        text_2=tf.constant(["Update on the flood warning"]), image_2=tf.constant([image]))
    assert result["label"].numpy()[0].decode() in ("Contradictory", "Implies", "NoEntailment")
    assert abs(float(tf.reduce_sum(result["probabilities"])) - 1) < 1e-4


def test_flags_override_presets():
    config = resolve_config("keras-io", {"epochs": 3, "image_size": None})
    assert config.epochs == 3 and config.image_size == 128 and config.batch_size == 32
    assert config.encoder_handle.startswith("https://tfhub.dev/")
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_config("nope")


def test_unwritable_output_fails_before_training(demo, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit, match="cannot write to output dir"):
        main(_args(demo, blocker / "run"))


def test_mirrored_strategy_with_two_cpu_replicas(demo, tmp_path):
    script = f"""
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
from mmentail.train import main
sys.exit(main({_args(demo, tmp_path / 'run') + ['--strategy', 'mirrored']!r}))
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MirroredStrategy over 2 replica(s)" in proc.stderr
    assert (tmp_path / "run" / "export" / "saved_model.pb").is_file()


def _serve_one(export_dir, image: bytes):
    served = tf.saved_model.load(str(export_dir))
    return served.signatures["serving_default"](
        text_1=tf.constant(["Breaking: the river flood downtown"]), image_1=tf.constant([image]),
        text_2=tf.constant(["Update on the flood warning"]), image_2=tf.constant([image]))


def test_text_only_run_reads_no_image(demo, tmp_path):
    csv_path = tmp_path / "data" / "pairs.csv"  # no images/ beside it
    csv_path.parent.mkdir()
    csv_path.write_bytes(demo.csv_path.read_bytes())
    args = _args(demo, tmp_path / "run")
    args[args.index("--data-csv") + 1] = str(csv_path)
    args[args.index("--image-dir") + 1] = str(tmp_path / "missing")
    assert main(args + ["--modality", "text", "--epochs", "1"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["majority_baseline"]["label"] == "NoEntailment"
    result = _serve_one(tmp_path / "run" / "export", b"not an image: never decoded")
    assert result["label"].numpy()[0].decode() in ("Contradictory", "Implies", "NoEntailment")


def test_image_only_run_loads_no_text_model(demo, tmp_path):
    args = _args(demo, tmp_path / "run")
    for flag in ("--preprocess-handle", "--encoder-handle"):
        args[args.index(flag) + 1] = str(tmp_path / "no-such-text-model")
    assert main(args + ["--modality", "image", "--epochs", "1"]) == 0
    image = next(demo.image_dir.iterdir()).read_bytes()
    assert _serve_one(tmp_path / "run" / "export", image)["probabilities"].shape == (1, 3)


def test_training_options_are_wired(demo, tmp_path, capsys):
    """Focal loss, AdamW with warmup and cosine decay, clipping, smoothing, modality
    dropout, cross-attention and early stopping run together on the feature cache."""
    output = tmp_path / "run"
    assert main(_args(demo, output) + [
        "--epochs", "6", "--loss", "focal", "--focal-alpha", "balanced",
        "--optimizer", "adamw", "--lr-schedule", "cosine", "--warmup-epochs", "1",
        "--clipnorm", "1.0", "--label-smoothing", "0.1", "--modality-dropout", "0.2",
        "--fusion", "cross_attention", "--early-stopping", "1"]) == 0
    config = json.loads((output / "config.json").read_text())
    assert config["loss"] == "focal" and config["fusion"] == "cross_attention"
    assert len(pd.read_csv(output / "history.csv")) < 6  # stopped early
    for name in ("confusion_matrix.png", "per_class.png", "training_curves.png"):
        assert (output / name).is_file()
    assert "majority baseline" in capsys.readouterr().out


def test_fine_tuning_the_top_image_block_trains_end_to_end_and_exports(demo, tmp_path):
    output = tmp_path / "run"
    assert main(_args(demo, output) + [
        "--epochs", "1", "--train-image-encoder", "--image-trainable-blocks", "1",
        "--encoder-learning-rate", "1e-4"]) == 0
    config = json.loads((output / "config.json").read_text())
    assert config["train_image_encoder"] and config["feature_cache"]  # on, but not usable
    image = next(demo.image_dir.iterdir()).read_bytes()
    assert _serve_one(output / "export", image)["probabilities"].shape == (1, 3)
