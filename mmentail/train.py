"""`mmentail-train`: data -> split -> pipeline -> model -> fit -> evaluate -> export.

Examples:
    mmentail-train --preset demo                 # offline, generated data
    mmentail-train --preset keras-io             # real data, TF Hub, ImageNet (internet)
    mmentail-train --preset keras-io --data-csv pairs.csv --image-dir images/ --epochs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras

from mmentail.config import PRESETS, TrainConfig, resolve_config
from mmentail.data import LABELS, label_counts, read_pairs, split_pairs
from mmentail.distribute import (STRATEGIES, is_chief, make_strategy, mixed_precision_policy,
                                 precision, worker_output)
from mmentail.io_utils import atomic_write_json, atomic_write_text
from mmentail.model import ModelConfig, build_model
from mmentail.pipeline import cache_setting, load_preprocessor, make_dataset

log = logging.getLogger("mmentail")


@dataclasses.dataclass(frozen=True)
class RunData:
    """Where a run's pairs come from, and the hub modules that go with them."""

    csv_path: Path
    image_dir: Path | None
    preprocess_handle: str
    encoder_handle: str


def resolve_data(config: TrainConfig) -> RunData:
    """Finds (generating or downloading on first use) the data and hub handles."""
    preprocess, encoder = config.preprocess_handle, config.encoder_handle
    csv_path = Path(config.data_csv) if config.data_csv else None
    if config.data_tfrecords:
        csv_path = Path(config.data_tfrecords) / "manifest.json"
    image_dir = Path(config.image_dir) if config.image_dir else None
    if config.preset == "demo" and (csv_path is None or preprocess is None or encoder is None):
        from mmentail.demo_data import prepare_demo

        demo = prepare_demo(Path(config.cache_dir) / "demo", num_pairs=config.demo_pairs)
        if csv_path is None:
            csv_path, image_dir = demo.csv_path, demo.image_dir
        preprocess = preprocess or str(demo.preprocess_dir)
        encoder = encoder or str(demo.encoder_dir)
    if csv_path is None:
        from mmentail.download import download_dataset

        log.info("no --data-csv given: downloading the real data set into %s",
                 config.cache_dir)
        csv_path, image_dir = download_dataset(config.cache_dir)
    if preprocess is None or encoder is None:
        raise ValueError("--preprocess-handle and --encoder-handle are required "
                         f"for preset {config.preset!r}")
    if image_dir is None and config.modality != "text":
        image_dir = csv_path.parent / "images"
    return RunData(csv_path, image_dir if config.modality != "text" else None,
                   preprocess, encoder)


def _check_writable(output: Path) -> None:
    """Fails before any training if the run directory cannot be written."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-probe"
        probe.write_bytes(b"\0" * 1024 * 1024)
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"mmentail-train: cannot write to output dir {output}: {e}") from None


def _class_weights(train: pd.DataFrame) -> dict[int, float]:
    counts = np.bincount(train["label_idx"], minlength=len(LABELS))
    return {i: len(train) / (len(LABELS) * max(int(c), 1)) for i, c in enumerate(counts)}


def evaluate(model: tf_keras.Model, dataset: tf.data.Dataset,
             labels: np.ndarray) -> dict[str, Any]:
    """Test-set figures: accuracy, macro-F1, per-class report and confusion matrix."""
    from sklearn.metrics import classification_report, confusion_matrix

    predicted = np.argmax(model.predict(dataset, verbose=0), axis=-1)
    report = classification_report(labels, predicted, labels=list(range(len(LABELS))),
                                   target_names=list(LABELS), output_dict=True,
                                   zero_division=0)
    return {
        "accuracy": float(report["accuracy"]),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "per_class": {name: {k: float(report[name][k])
                             for k in ("precision", "recall", "f1-score", "support")}
                      for name in LABELS},
        "confusion_matrix": confusion_matrix(
            labels, predicted, labels=list(range(len(LABELS)))).tolist(),
    }


def run(config: TrainConfig) -> dict[str, Any]:
    """Trains, evaluates and exports one run; returns its test metrics and paths.

    The strategy comes first (multi-worker and TPU set-up must precede any
    other op); non-chief workers write their outputs to a temporary directory.
    """
    strategy = make_strategy(config.strategy)
    policy = mixed_precision_policy(strategy) if config.mixed_precision else "float32"
    with worker_output(strategy, config.output) as output, precision(policy):
        return _run(config, strategy, output)


def _run(config: TrainConfig, strategy: tf.distribute.Strategy, output: Path) -> dict[str, Any]:
    from mmentail.export import export_savedmodel

    started = time.time()
    _check_writable(output)
    tf_keras.utils.set_random_seed(config.seed)

    data = resolve_data(config)
    log.info("reading %s", data.csv_path)
    sources: dict[str, list[str]] = {}
    if config.data_tfrecords:
        from mmentail.tfrecord import read_splits

        splits = read_splits(config.data_tfrecords)
        (train, sources["train"]), (val, sources["val"]), (test, sources["test"]) = (
            splits[name] for name in ("train", "val", "test"))
        pairs = pd.concat([train, val, test])
    else:
        pairs = read_pairs(data.csv_path, data.image_dir)
        train, val, test = split_pairs(pairs, seed=config.seed)
    log.info("%d pairs %s -> train %d, val %d, test %d", len(pairs), label_counts(pairs),
             len(train), len(val), len(test))
    resolved = {**config.to_json(), "preprocess_handle": data.preprocess_handle,
                "encoder_handle": data.encoder_handle, "data_csv": str(data.csv_path),
                "image_dir": str(data.image_dir) if data.image_dir else None}
    atomic_write_json(output / "config.json", resolved)
    for name, part in (("train", train), ("val", val), ("test", test)):
        columns = [c for c in part.columns if c not in ("label_idx", "image_1_path",
                                                        "image_2_path")]
        atomic_write_text(output / "splits" / f"{name}.csv", part[columns].to_csv(index=False))

    preprocessor = load_preprocessor(data.preprocess_handle)
    image_size = (config.image_size, config.image_size)
    common = dict(image_size=image_size, seq_length=config.seq_length,
                  batch_size=config.batch_size, seed=config.seed, modality=config.modality,
                  deterministic=config.deterministic)

    def split_dataset(name: str, part: pd.DataFrame, training: bool,
                      cache: bool = True) -> tf.data.Dataset:
        cache = cache and cache_setting(
            config.pipeline_cache, part, name, sources=sources.get(name, ()),
            image_size=image_size, seq_length=config.seq_length, modality=config.modality,
            preprocess=data.preprocess_handle)
        return make_dataset(part, preprocessor, training=training, cache=cache,
                            tfrecord_files=sources.get(name), **common)

    test_ds = split_dataset("test", test, False)
    log.info("strategy %s over %d replica(s)", type(strategy).__name__,
             strategy.num_replicas_in_sync)
    model_config = ModelConfig(
        encoder_handle=data.encoder_handle,
        image_weights=None if config.image_weights == "none" else config.image_weights,
        image_size=image_size, seq_length=config.seq_length,
        projection_dim=config.projection_dim, dropout=config.dropout,
        train_text_encoder=config.train_text_encoder,
        train_image_encoder=config.train_image_encoder,
        modality=config.modality, text_pooling=config.text_pooling)
    use_feature_cache = config.feature_cache and not (
        config.train_text_encoder or config.train_image_encoder)
    with strategy.scope():
        model = build_model(model_config)
        # With frozen encoders only the head trains, on features computed once.
        trainee = model.get_layer("head") if use_feature_cache else model
        trainee.compile(
            optimizer=tf_keras.optimizers.Adam(config.learning_rate),
            loss=tf_keras.losses.CategoricalCrossentropy(),
            # float32 metrics whatever the policy: mixed-precision metric
            # variables cannot be read across replicas.
            metrics=[tf_keras.metrics.CategoricalAccuracy(name="accuracy", dtype="float32"),
                     tf_keras.metrics.F1Score(average="macro", name="macro_f1",
                                              dtype="float32")],
            jit_compile=config.jit_compile, steps_per_execution=config.steps_per_execution)

    if use_feature_cache:
        from mmentail.feature_cache import cached_features, feature_dataset, feature_key

        fit_train, fit_val = (
            feature_dataset(*cached_features(
                model.get_layer("encoders"), split_dataset(name, part, False, cache=False),
                strategy=strategy, directory=Path(config.cache_dir) / "features",
                key=feature_key(part, model_config, preprocess_handle=data.preprocess_handle,
                                seed=config.seed, sources=sources.get(name, ())),
                persist=is_chief(strategy)),
                batch_size=config.batch_size, training=training, seed=config.seed)
            for name, part, training in (("train", train, True), ("val", val, False)))
    else:
        fit_train = split_dataset("train", train, True)
        fit_val = split_dataset("val", val, False)

    # TF checkpoint format (not HDF5): it keys weights by object, which hub
    # layers and distributed variables need.
    best_weights = output / "checkpoints" / "best"
    best_weights.parent.mkdir(parents=True, exist_ok=True)
    mode = "min" if config.monitor.endswith("loss") else "max"
    callbacks = [
        tf_keras.callbacks.ModelCheckpoint(str(best_weights), monitor=config.monitor,
                                           mode=mode, save_best_only=True,
                                           save_weights_only=True),
        tf_keras.callbacks.CSVLogger(str(output / "history.csv")),
    ]
    log.info("training %d epochs (trainable weights: %d)", config.epochs,
             sum(int(np.prod(w.shape)) for w in trainee.trainable_weights))
    trainee.fit(fit_train, validation_data=fit_val, epochs=config.epochs, callbacks=callbacks,
                class_weight=_class_weights(train) if config.class_weights else None,
                verbose=2 if not sys.stdout.isatty() else 1)
    if best_weights.with_suffix(".index").exists():
        trainee.load_weights(str(best_weights))

    metrics = evaluate(model, test_ds, test["label_idx"].to_numpy())
    atomic_write_json(output / "metrics.json", metrics)
    export_dir = export_savedmodel(
        model, preprocessor, output / "export", image_size=image_size,
        seq_length=config.seq_length, modality=config.modality,
        metadata={"config": resolved})
    metrics["export_dir"] = str(export_dir)
    metrics["wall_seconds"] = round(time.time() - started, 1)
    return metrics


def _parse_args(argv: Sequence[str] | None) -> tuple[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="mmentail-train",
        description="Train, evaluate and export a multimodal entailment model.")
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                        help="starting configuration (default: demo)")
    arg = parser.add_argument
    arg("--output", help="run directory")
    arg("--data-csv", help="pairs CSV (id_1,text_1,image_1,id_2,text_2,image_2,label)")
    arg("--image-dir", help="folder of <id>.<ext> images (default: images/ beside the CSV)")
    arg("--cache-dir", help="where demo assets and downloads are kept")
    arg("--preprocess-handle", help="TF Hub BERT preprocessing model: URL or path")
    arg("--encoder-handle", help="TF Hub BERT encoder: URL or path")
    arg("--image-weights", help="ResNet50V2 weights: imagenet, none or a weights file")
    arg("--image-size", type=int, help="square image side in pixels")
    arg("--seq-length", type=int, help="BERT sequence length of the text pair")
    arg("--batch-size", type=int, help="global batch size")
    arg("--epochs", type=int)
    arg("--learning-rate", type=float)
    arg("--strategy", choices=STRATEGIES)
    arg("--seed", type=int)
    arg("--modality", choices=("both", "text", "image"))
    arg("--demo-pairs", type=int, help="rows of generated demo data (demo preset)")
    arg("--train-text-encoder", action=argparse.BooleanOptionalAction, default=None)
    arg("--train-image-encoder", action=argparse.BooleanOptionalAction, default=None)
    arg("--class-weights", action=argparse.BooleanOptionalAction, default=None)
    arg("--feature-cache", action=argparse.BooleanOptionalAction, default=None,
        help="train the head on features computed once when both encoders are frozen")
    arg("--data-tfrecords", help="directory written by mmentail-write-tfrecords (replaces "
                                 "--data-csv)")
    arg("--pipeline-cache", help="cache decoded inputs in 'memory', 'none' or a directory")
    arg("--deterministic", action=argparse.BooleanOptionalAction, default=None,
        help="keep the input order under parallel reads")
    arg("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
        help="mixed_float16 on GPU, mixed_bfloat16 on CPU/TPU")
    arg("--jit-compile", action=argparse.BooleanOptionalAction, default=None,
        help="compile the training step with XLA")
    arg("--steps-per-execution", type=int, help="batches per compiled step call")
    args = vars(parser.parse_args(argv))
    return args.pop("preset"), args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    preset, overrides = _parse_args(argv)
    config = resolve_config(preset, overrides)
    result = run(config)
    print(f"\ntest accuracy {result['accuracy']:.3f}  macro-F1 {result['macro_f1']:.3f}")
    for name, figures in result["per_class"].items():
        print(f"  {name:<14} precision {figures['precision']:.3f}  recall "
              f"{figures['recall']:.3f}  f1 {figures['f1-score']:.3f}  "
              f"support {int(figures['support'])}")
    print(f"run directory: {config.output}\nexport: {result['export_dir']}\n"
          f"wall time: {result['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
