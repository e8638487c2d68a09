from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from helpers import TINY_IMAGE, run_config, train_args
from mmentail.config.experiment import ExperimentConfig, with_overrides
from mmentail.config.presets import resolve_config
from mmentail.errors import ConfigError
from mmentail.train import main


def _event_tags(log_dir) -> dict[str, dict[str, list[int]]]:
    """{subdirectory: {tag: steps}} of the TensorBoard event files under `log_dir`."""
    import tensorflow as tf

    tags: dict[str, dict[str, list[int]]] = {}
    for path in sorted(log_dir.glob("*/events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags.setdefault(path.parent.name, {}).setdefault(value.tag, []).append(
                    event.step)
    return tags


def _exit_code(argv: list[str]) -> int:
    """`main(argv)`'s exit code, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.slow  # needs the session's trained run
def test_run_records_the_run_and_exports(trained_run, demo):
    """What a run leaves in its directory (read from the shared 3-epoch run; the CLI
    printing is checked by the runs of `main` below)."""
    output = trained_run.output
    config = json.loads((output / "config.json").read_text())
    assert config == trained_run.config.to_json()
    assert config["optim"]["epochs"] == 3 and config["model"]["image_size"] == TINY_IMAGE
    assert config["model"]["encoder_handle"] == str(demo.encoder_dir)
    assert ExperimentConfig.from_json(config).to_json() == config  # nested, complete
    splits = {name: pd.read_csv(output / "splits" / f"{name}.csv", dtype=str)
              for name in ("train", "val", "test")}
    assert sum(len(s) for s in splits.values()) == 80
    assert set(splits["train"].id_1).isdisjoint(splits["test"].id_1)
    assert list(splits["test"].columns) == ["id_1", "text_1", "image_1", "id_2", "text_2",
                                            "image_2", "label"]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["macro_f1"] == pytest.approx(trained_run.metrics["macro_f1"])
    assert 0 <= metrics["macro_f1"] <= 1
    assert sum(map(sum, metrics["confusion_matrix"])) == len(splits["test"])
    low, high = metrics["bootstrap"]["macro_f1"]
    assert low <= metrics["macro_f1"] <= high
    predictions = pd.read_csv(output / "predictions.csv", dtype={"id_1": str, "id_2": str})
    assert predictions[["id_1", "id_2", "label"]].equals(splits["test"][["id_1", "id_2",
                                                                          "label"]])
    assert predictions[["p_Contradictory", "p_Implies", "p_NoEntailment"]].sum(axis=1).round(
        4).eq(1).all()
    history = pd.read_csv(output / "history.csv")
    assert len(history) == 3 and (history["seconds"] > 0).all()
    # Where the run's time went, stage by stage.
    timings = json.loads((output / "timings.json").read_text())
    assert timings == trained_run.stage_seconds
    assert set(timings) == {"resolve_sources", "read_and_split", "build", "datasets", "fit",
                            "evaluate", "export"}
    assert timings["fit"] >= history["seconds"].sum() * 0.9
    # TensorBoard: every epoch's scalars, macro-F1 included; the test figures and matrix.
    tags = _event_tags(output / "logs")
    assert tags["validation"]["epoch_macro_f1"] == [0, 1, 2]
    assert tags["train"]["epoch_loss"] == [0, 1, 2]
    assert set(tags["test"]) == {"test_macro_f1", "test_accuracy", "test_confusion_matrix"}
    assert json.loads((output / "state.json").read_text())["status"] == "finished"

    assert trained_run.export_dir == output / "export"
    image = next(demo.image_dir.iterdir()).read_bytes()
    result = _serve_one(trained_run.export_dir, image)
    assert result["label"].numpy()[0].decode() in ("Contradictory", "Implies", "NoEntailment")
    assert abs(float(tf.reduce_sum(result["probabilities"])) - 1) < 1e-4


def test_flags_override_presets():
    config = resolve_config("keras-io", {"epochs": 3, "image_size": None})
    assert config.optim.epochs == 3 and config.model.image_size == 128
    assert config.optim.batch_size == 32
    assert config.model.encoder_handle.startswith("https://tfhub.dev/")
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("nope")


def test_unwritable_output_fails_before_training(demo, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(train_args(demo, blocker / "run")) != 0
    assert "mmentail-train: cannot write to output dir" in capsys.readouterr().err


def test_misspelled_monitor_is_refused_before_training(demo, tmp_path, capsys):
    """A --monitor no epoch logs would never pick a best epoch (nor stop early)."""
    output = tmp_path / "run"
    assert _exit_code(train_args(demo, output, "--monitor", "val_macro_f2")) == 2
    err = capsys.readouterr().err
    assert "monitor" in err and "val_macro_f2" in err
    assert not output.exists()
    # The same from a recorded config.json, which no flag parser checks.
    recorded = ExperimentConfig().to_json()
    recorded["optim"]["monitor"] = "val_macro_f2"
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    assert _exit_code(["--config", str(tmp_path / "config.json"),
                       "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmentail-train: ") and "monitor" in err and "val_macro_f2" in err
    assert not output.exists()
    with pytest.raises(ConfigError, match="monitor must be one of .*got 'val_macro_f2'"):
        with_overrides(ExperimentConfig(), {"monitor": "val_macro_f2"})


@pytest.mark.slow  # needs the session's trained run
def test_a_run_fed_by_tf_data_service_trains_like_a_local_one(trained_run, demo, tmp_path,
                                                              monkeypatch):
    """The trained run again, its pairs read, decoded and tokenized by an in-process
    tf.data service worker, and tokenized in the graph as a split too large for token
    constants would be (the limit lowered to nothing): the same model."""
    from mmentail.train import run

    monkeypatch.setattr("mmentail.pipeline.dataset.MAX_TOKEN_CONSTANT_BYTES", 0)
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    worker = service.WorkerServer(service.WorkerConfig(
        dispatcher_address=dispatcher.target.split("://")[1]))
    sent = []  # the service each split's rows were sent through
    distribute = service.distribute
    monkeypatch.setattr(service, "distribute",
                        lambda *args, **kwargs: sent.append(args[1]) or distribute(*args,
                                                                                   **kwargs))
    served = run(with_overrides(trained_run.config, {
        "output": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
        "data_service": dispatcher.target}), export=False)
    # Every split's rows (train, val, test: one encoding pass) went through this
    # service, once; the test split's features were then read from the feature cache.
    assert sent == [dispatcher.target] * 3
    worker.stop()
    dispatcher.stop()
    assert served.config.data.data_service == dispatcher.target
    for mine, theirs in zip(served.model.weights, trained_run.model.weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    assert served.metrics["confusion_matrix"] == trained_run.metrics["confusion_matrix"]


@pytest.mark.slow
def test_mirrored_strategy_with_two_cpu_replicas(demo, tmp_path):
    script = f"""
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
from mmentail.train import main
sys.exit(main({train_args(demo, tmp_path / 'run', '--strategy', 'mirrored')!r}))
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


@pytest.mark.slow
def test_text_only_run_reads_no_image(demo, tmp_path, capsys):
    csv_path = tmp_path / "data" / "pairs.csv"  # no images/ beside it
    csv_path.parent.mkdir()
    csv_path.write_bytes(demo.csv_path.read_bytes())
    args = train_args(demo, tmp_path / "run", "--modality", "text", epochs=1)
    args[args.index("--data-csv") + 1] = str(csv_path)
    args[args.index("--image-dir") + 1] = str(tmp_path / "missing")
    assert main(args) == 0
    # mmentail-train prints the test figures and where the run and its export are.
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and str(tmp_path / "run" / "export") in printed
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["majority_baseline"]["label"] == "NoEntailment"
    result = _serve_one(tmp_path / "run" / "export", b"not an image: never decoded")
    assert result["label"].numpy()[0].decode() in ("Contradictory", "Implies", "NoEntailment")


@pytest.mark.slow
def test_image_only_run_loads_no_text_model(demo, tmp_path):
    args = train_args(demo, tmp_path / "run", "--modality", "image", epochs=1)
    for flag in ("--preprocess-handle", "--encoder-handle"):
        args[args.index(flag) + 1] = str(tmp_path / "no-such-text-model")
    assert main(args) == 0
    image = next(demo.image_dir.iterdir()).read_bytes()
    assert _serve_one(tmp_path / "run" / "export", image)["probabilities"].shape == (1, 3)


@pytest.mark.slow
def test_training_options_are_wired(demo, tmp_path, capsys):
    """Focal loss, AdamW with warmup and cosine decay, clipping, smoothing, modality
    dropout, cross-attention and early stopping run together on the feature cache."""
    output = tmp_path / "run"
    assert main(train_args(
        demo, output, "--loss", "focal", "--focal-alpha", "balanced",
        "--optimizer", "adamw", "--lr-schedule", "cosine", "--warmup-epochs", "1",
        "--clipnorm", "1.0", "--label-smoothing", "0.1", "--modality-dropout", "0.2",
        "--fusion", "cross_attention", "--early-stopping", "1", epochs=6)) == 0
    config = json.loads((output / "config.json").read_text())
    assert config["optim"]["loss"] == "focal" and config["model"]["fusion"] == "cross_attention"
    assert len(pd.read_csv(output / "history.csv")) < 6  # stopped early
    for name in ("confusion_matrix.png", "per_class.png", "training_curves.png"):
        assert (output / name).is_file()
    assert "majority baseline" in capsys.readouterr().out


@pytest.mark.slow
def test_fine_tuning_the_top_image_block_trains_end_to_end_and_exports(demo, tmp_path):
    output = tmp_path / "run"
    assert main(train_args(
        demo, output, "--train-image-encoder", "--image-trainable-blocks", "1",
        "--encoder-learning-rate", "1e-4", epochs=1)) == 0
    config = json.loads((output / "config.json").read_text())
    # The feature cache is on, but not usable with a trained encoder.
    assert config["model"]["train_image_encoder"] and config["runtime"]["feature_cache"]
    image = next(demo.image_dir.iterdir()).read_bytes()
    assert _serve_one(output / "export", image)["probabilities"].shape == (1, 3)
