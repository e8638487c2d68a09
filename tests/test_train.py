from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tf_keras

from helpers import TINY_IMAGE, drawn_pixels, png_pixels, run_config, train_args
from mmentail import train
from mmentail.config.experiment import ExperimentConfig, with_overrides
from mmentail.config.flags import config_from_args
from mmentail.config.presets import resolve_config
from mmentail.errors import ConfigError
from mmentail.evaluation.calibration import reliability_figure
from mmentail.evaluation.decision import DecisionRule, predict_labels
from mmentail.evaluation.report import PLOTS, confusion_figure, curves_figure, per_class_figure
from mmentail.schema import LABELS
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


@pytest.fixture
def fitted(monkeypatch) -> list[tuple]:
    """(trainee, its weights' values when fitting began, by weight) for each model a run
    fits: what `mmentail.train.run` passes to its fit stage."""
    fits = []

    def fit_recording_the_start(config, trainee, *args):
        fits.append((trainee, {w.ref(): w.numpy() for w in trainee.model.weights}))
        return train_fit(config, trainee, *args)

    train_fit = train.fit
    monkeypatch.setattr(train, "fit", fit_recording_the_start)
    return fits


@pytest.mark.slow  # needs the session's trained run
def test_run_records_the_run_and_exports(trained_run, demo):
    """What a run leaves in its directory (read from the shared 3-epoch run; the CLI
    printing is checked by the runs of `main` below)."""
    output = trained_run.output
    config = json.loads((output / "config.json").read_text())
    assert config == trained_run.config.to_record()  # the settings and mmentail_version
    assert config["optim"]["epochs"] == 3 and config["model"]["image_size"] == TINY_IMAGE
    assert config["model"]["encoder_handle"] == str(demo.encoder_dir)
    assert ExperimentConfig.from_json(config).to_record() == config  # nested, complete
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
    # The plots draw the test figures and every epoch of the history.
    for name, figure in zip(PLOTS, (confusion_figure(metrics), per_class_figure(metrics),
                                    curves_figure(history),
                                    reliability_figure(metrics["calibration"])), strict=True):
        np.testing.assert_array_equal(png_pixels((output / name).read_bytes()),
                                      drawn_pixels(figure), err_msg=name)
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
    calibration_tags = {f"test_{name}_{when}_calibration" for name in ("ece", "classwise_ece",
                                                                        "nll")
                        for when in ("before", "after")}
    assert set(tags["test"]) == {"test_macro_f1", "test_accuracy", "test_confusion_matrix",
                                 "test_reliability", *calibration_tags}
    # The calibration: fitted on the validation split and the cross-fitted training pairs,
    # its figures before and after, its reliability diagrams, the raw logits kept.
    calibration = metrics["calibration"]
    assert calibration["method"] == "vector" == trained_run.calibration.method
    assert calibration["fitted_on"] == len(splits["train"]) + len(splits["val"])
    assert "cross-fitted by 2 heads of" in calibration["data"]
    for when in ("before", "after"):
        low, high = calibration[when]["ece_interval"]
        assert 0 <= low <= high <= 1 and calibration[when]["nll"] > 0
        assert sum(calibration[when]["bins"]["count"]) == len(splits["test"])
    assert (output / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    np.testing.assert_allclose(
        trained_run.calibration.apply(predictions.filter(like="logit_").to_numpy()),
        predictions.filter(like="p_").to_numpy(), atol=1e-5)
    # The labels are the decision rule's on the model's logits, not on the calibrated
    # probabilities.
    rule = DecisionRule.from_json(metrics["decision_rule"])
    logits = predictions.filter(like="logit_").to_numpy()
    assert (np.asarray(LABELS)[predict_labels(np.exp(logits), rule.offsets)]
            == predictions["predicted"].to_numpy()).all()
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


# argv: the run's config.json, where to save its weights. Two CPU replicas: the
# logical devices must be configured before TensorFlow initialises, hence a process.
_TWO_REPLICAS = """
import logging
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

from mmentail.config.experiment import load_config
from mmentail.train import run

logging.basicConfig(level=logging.INFO, format="%(message)s")
result = run(load_config(sys.argv[1]))
np.savez(sys.argv[2], *result.model.get_weights())
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_cpu_replicas_trains_as_one_device_does(trained_run,
                                                                            tmp_path):
    """The session's run (one device) again over two CPU replicas, each encoding and
    training on half of every batch: the same weights and test predictions, up to float
    rounding (the replicas' gradients are summed in another order)."""
    from mmentail.training.fit import build_trainee

    config = with_overrides(trained_run.config, {
        "output": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")})  # own features
    assert config.runtime.strategy == "mirrored" and config.model.dropout == 0
    (tmp_path / "config.json").write_text(json.dumps(config.to_json()))
    proc = subprocess.run([sys.executable, "-c", _TWO_REPLICAS, str(tmp_path / "config.json"),
                           str(tmp_path / "weights.npz")], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "strategy MirroredStrategy over 2 replica(s)" in proc.stderr
    assert list((tmp_path / "cache" / "features").iterdir())  # encoded on two replicas

    saved = np.load(tmp_path / "weights.npz")
    two_replicas = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    one_device = trained_run.model.get_weights()
    # The initial weights come from the config's seed (the labels only count the steps).
    initial = build_trainee(trained_run.config, tf.distribute.get_strategy(),
                            np.zeros(1, int)).model.get_weights()
    assert len(two_replicas) == len(one_device) == len(initial)
    moved = max(np.abs(one - start).max() for one, start in zip(one_device, initial))
    apart = max(np.abs(two - one).max() for two, one in zip(two_replicas, one_device))
    print(f"largest change in training {moved:.3g}, largest gap between the runs {apart:.3g}")
    # Measured: training moves a weight by up to 1.5e-2 (Adam steps of 1e-3), and the two
    # runs differ by 1.2e-7 at most (float32 rounding). The bound, a thousandth of the
    # training's change, leaves ~100x for rounding, and is ~100x below what one step
    # lost, repeated or taken on other pairs would make.
    assert apart < 1e-3 * moved
    columns = ["p_Contradictory", "p_Implies", "p_NoEntailment"]
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    np.testing.assert_allclose(predictions[columns], trained_run.predictions[columns],
                               atol=1e-5)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())[
        "confusion_matrix"] == trained_run.metrics["confusion_matrix"]
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
def test_image_only_run_builds_no_text_model_and_serves_from_the_images_alone(demo, tmp_path,
                                                                              fitted):
    args = train_args(demo, tmp_path / "run", "--modality", "image", epochs=1)
    for flag in ("--preprocess-handle", "--encoder-handle"):  # loading either would fail
        args[args.index(flag) + 1] = str(tmp_path / "no-such-text-model")
    assert main(args) == 0
    (trainee, _), = fitted
    assert sorted(trainee.model.input_names) == ["image_1", "image_2"]
    assert sorted(layer.name for layer in trainee.model.get_layer("encoders").layers) == [
        "image_1", "image_2", "image_encoder"]
    assert "text_projection" not in [layer.name for layer in trainee.fitted.layers]
    # The export reads the images and ignores the texts.
    images = [path.read_bytes() for path in sorted(demo.image_dir.iterdir())[:4]]
    serve = tf.saved_model.load(str(tmp_path / "run" / "export")).signatures["serving_default"]

    def probabilities(texts: list[str], first: list[bytes], second: list[bytes]):
        return serve(text_1=tf.constant(texts), image_1=tf.constant(first),
                     text_2=tf.constant(texts[::-1]), image_2=tf.constant(second))[
            "probabilities"].numpy()

    texts = ["Breaking: the river floods", "Update"]
    served = probabilities(texts, images[:2], images[2:])
    np.testing.assert_array_equal(
        probabilities(["", "Something else entirely, and longer"], images[:2], images[2:]),
        served)
    # Either post's images change the answer.
    for other in (probabilities(texts, images[2:], images[2:]),
                  probabilities(texts, images[:2], images[:2])):
        assert np.abs(other - served).max() > 1e-4


@pytest.mark.slow
def test_training_flags_reach_the_compiled_loss_and_optimizers(demo, tmp_path):
    """Focal loss (gamma, balanced alpha, smoothing), AdamW (decay, clipping) with warmup
    and cosine decay, modality dropout and cross-attention, from mmentail-train's flags to
    the compiled head; with a fine-tuned encoder, to its optimizer too (at its own rate)."""
    from mmentail.model.fusion import CrossAttentionFusion
    from mmentail.training.fit import build_trainee
    from mmentail.training.losses import focal_alpha

    config = config_from_args(train.build_parser().parse_args(train_args(
        demo, tmp_path / "run", "--loss", "focal", "--focal-gamma", "3", "--focal-alpha",
        "balanced", "--label-smoothing", "0.1", "--optimizer", "adamw", "--weight-decay",
        "0.02", "--clipnorm", "0.5", "--learning-rate", "0.002", "--lr-schedule", "cosine",
        "--warmup-epochs", "1", "--modality-dropout", "0.2", "--fusion", "cross_attention",
        epochs=6)))
    labels = np.array([0] * 4 + [1] * 12 + [2] * 32)  # 48 pairs: 3 batches of 16 an epoch
    strategy = tf.distribute.get_strategy()
    trainee = build_trainee(config, strategy, labels)
    head = trainee.model.get_layer("head")
    assert trainee.fitted is head  # frozen encoders: the head is fitted, on their features
    assert head.get_layer("modality_dropout").rate == 0.2
    assert isinstance(head.get_layer("fusion"), CrossAttentionFusion)
    _assert_focal_loss(head.loss, gamma=3.0, alpha=focal_alpha("balanced", labels),
                       label_smoothing=0.1)
    _assert_adamw_warmup_cosine(head.optimizer, peak=0.002, weight_decay=0.02, clipnorm=0.5,
                                warmup_steps=3, total_steps=18)

    fine_tuned = build_trainee(with_overrides(config, {
        "train_image_encoder": True, "encoder_learning_rate": 1e-4}), strategy, labels)
    assert fine_tuned.fitted is fine_tuned.model  # the whole model, encoders included
    _assert_focal_loss(fine_tuned.model.loss, gamma=3.0,
                       alpha=focal_alpha("balanced", labels), label_smoothing=0.1)
    _assert_adamw_warmup_cosine(fine_tuned.model.optimizer, peak=0.002, weight_decay=0.02,
                                clipnorm=0.5, warmup_steps=3, total_steps=18)
    _assert_adamw_warmup_cosine(fine_tuned.model.encoder_optimizer, peak=1e-4,
                                weight_decay=0.02, clipnorm=0.5, warmup_steps=3,
                                total_steps=18)


def _assert_focal_loss(loss, *, gamma: float, alpha: list[float], label_smoothing: float):
    assert type(loss) is tf_keras.losses.CategoricalFocalCrossentropy
    settings = loss.get_config()
    assert (settings["gamma"], settings["label_smoothing"]) == (gamma, label_smoothing)
    assert settings["alpha"] == pytest.approx(alpha)


def _assert_adamw_warmup_cosine(optimizer, *, peak: float, weight_decay: float,
                                clipnorm: float, warmup_steps: int, total_steps: int):
    assert type(optimizer) is tf_keras.optimizers.AdamW
    assert (optimizer.weight_decay, optimizer.global_clipnorm) == (weight_decay, clipnorm)
    schedule = tf_keras.optimizers.schedules.deserialize(
        optimizer.get_config()["learning_rate"])
    # Linear warmup from 0 to the peak, then half a cosine down to 0 at the last step.
    middle = (warmup_steps + total_steps) / 2
    steps = [0, warmup_steps / 2, warmup_steps, middle, total_steps]
    assert [float(schedule(step)) for step in steps] == pytest.approx(
        [0, peak / 2, peak, peak / 2, 0], abs=peak * 1e-6)


@pytest.mark.slow
def test_fit_minimises_the_class_weighted_loss_and_stops_early(demo, trained_run, tmp_path):
    """With --class-weights, the loss fit minimises weights each pair's loss by its
    label's weight: the first epoch's loss (one batch: the initial model's) is the
    class-weighted mean, not the plain one; early stopping ends the run at the first
    epoch whose validation macro-F1 does not beat the best before it (patience 1)."""
    from mmentail.data.prepare import read_and_split
    from mmentail.pipeline.preprocess import load_preprocessor
    from mmentail.training.fit import build_trainee, fit, training_datasets
    from mmentail.training.losses import class_weights

    config = run_config(demo, tmp_path / "run", class_weights=True, loss="focal",
                        label_smoothing=0.1, optimizer="adamw", lr_schedule="cosine",
                        clipnorm=1.0, fusion="cross_attention", dropout=0.0, early_stopping=1,
                        epochs=6, batch_size=128,
                        cache_dir=trained_run.config.data.cache_dir)  # its features
    splits = read_and_split(config)
    labels = splits.labels("train")
    assert len(labels) <= config.optim.batch_size  # one batch an epoch
    strategy = tf.distribute.get_strategy()
    trainee = build_trainee(config, strategy, labels)
    train_set, val_set = training_datasets(config, splits, trainee, strategy,
                                           load_preprocessor(config.model.preprocess_handle))
    (features, one_hot), = list(train_set)
    # No dropout: the initial model's loss at inference is its loss in the first step.
    per_pair = trainee.fitted.loss.call(one_hot, trainee.fitted(features)).numpy()
    weights = class_weights(labels)
    weighted = np.mean(per_pair * [weights[i] for i in one_hot.numpy().argmax(axis=-1)])
    assert abs(weighted - per_pair.mean()) > 0.1 * per_pair.mean()  # they are told apart

    (tmp_path / "run").mkdir()
    fit(config, trainee, train_set, val_set, tmp_path / "run", strategy, labels)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["loss"][0] == pytest.approx(weighted, rel=1e-4)
    f1 = history["val_macro_f1"].tolist()
    stop = next((epoch for epoch in range(1, len(f1)) if f1[epoch] <= max(f1[:epoch])), None)
    assert stop is not None and len(history) == stop + 1 < config.optim.epochs


@pytest.mark.slow
def test_fine_tuning_the_top_image_block_moves_it_alone_and_exports(demo, tmp_path, fitted):
    """With the top block unfrozen, its weights and statistics (and the final batch norm's)
    move in training and the head's weights do; the lower blocks, their frozen batch norms'
    statistics and the text encoder stay as they were."""
    output = tmp_path / "run"
    assert main(train_args(
        demo, output, "--train-image-encoder", "--image-trainable-blocks", "1",
        "--encoder-learning-rate", "1e-4", epochs=1)) == 0
    config = json.loads((output / "config.json").read_text())
    # The feature cache is on, but not usable with a trained encoder.
    assert config["model"]["train_image_encoder"] and config["runtime"]["feature_cache"]
    (trainee, start), = fitted
    assert trainee.fitted is trainee.model

    def moved(weights) -> list[bool]:
        return [not np.array_equal(w.numpy(), start[w.ref()]) for w in weights]

    encoders = trainee.model.get_layer("encoders")
    backbone = encoders.get_layer("image_encoder").get_layer("resnet_tiny")
    for layer in backbone.layers:
        top = layer.name.startswith("conv4_block1_") or layer.name == "post_bn"
        assert moved(layer.weights) == [top] * len(layer.weights), layer.name
    assert not any(moved(encoders.get_layer("text_encoder").weights))
    assert all(moved(trainee.model.get_layer("head").trainable_weights))
    image = next(demo.image_dir.iterdir()).read_bytes()
    assert _serve_one(output / "export", image)["probabilities"].shape == (1, 3)
