"""`mmentail-train`: data -> split -> pipeline -> model -> fit -> evaluate -> export.

Examples:
    mmentail-train --preset demo                 # offline, generated data
    mmentail-train --preset keras-io             # real data, TF Hub, ImageNet (internet)
    mmentail-train --preset minilm-offline --data-csv pairs.csv --modality text  # no internet
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
from mmentail.data import ReadReport, label_counts, read_pairs, split_pairs
from mmentail.evaluate import evaluate, summary, write_report
from mmentail.distribute import (STRATEGIES, is_chief, make_strategy, mixed_precision_policy,
                                 precision, share_chief_weights, worker_output)
from mmentail.finetune import TwoRateModel
from mmentail.fusion import FUSIONS
from mmentail.io_utils import atomic_write_json, atomic_write_text
from mmentail.losses import LOSSES, class_weights, focal_alpha, make_loss
from mmentail.model import ModelConfig, build_model
from mmentail.optim import OPTIMIZERS, SCHEDULES, make_optimizer
from mmentail.pipeline import cache_setting, load_preprocessor, make_dataset
from mmentail.run_state import (GracefulStop, TrainingInterrupted, monitor_mode, open_run_dir,
                                resume_hint)

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

        demo = prepare_demo(Path(config.cache_dir) / "demo", num_pairs=config.demo_pairs,
                            vague_fraction=config.demo_vague_posts)
        if csv_path is None:
            csv_path, image_dir = demo.csv_path, demo.image_dir
        preprocess = preprocess or str(demo.preprocess_dir)
        encoder = encoder or str(demo.encoder_dir)
    if config.preset == "minilm-offline" and (preprocess is None or encoder is None):
        from mmentail.convert import minilm_modules

        minilm = minilm_modules(config.cache_dir)
        preprocess = preprocess or str(minilm.preprocess_dir)
        encoder = encoder or str(minilm.encoder_dir)
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


def run(config: TrainConfig, existing: str = "auto", *, export: bool = True) -> dict[str, Any]:
    """Trains, evaluates and (unless `export` is False) exports one run.

    `existing` says what to do with a run already in the output dir: "auto",
    "resume" or "overwrite" (see :func:`mmentail.run_state.open_run_dir`).
    Returns its test metrics (see :func:`mmentail.evaluate.evaluate`), the
    export directory (None without export) and the wall time. The strategy
    comes first (multi-worker and TPU set-up must precede any other op);
    non-chief workers write their outputs to a temporary directory.
    """
    strategy = make_strategy(config.strategy)
    policy = mixed_precision_policy(strategy) if config.mixed_precision else "float32"
    with worker_output(strategy, config.output) as output, precision(policy):
        return _run(config, strategy, output, existing, export)


def _run(config: TrainConfig, strategy: tf.distribute.Strategy, output: Path, existing: str,
         export: bool) -> dict[str, Any]:
    from mmentail.export import export_savedmodel

    started = time.time()
    _check_writable(output)

    data = resolve_data(config)
    resolved = {**config.to_json(), "preprocess_handle": data.preprocess_handle,
                "encoder_handle": data.encoder_handle, "data_csv": str(data.csv_path),
                "image_dir": str(data.image_dir) if data.image_dir else None}
    run_dir = open_run_dir(output, resolved, existing)
    log.info("reading %s", config.data_tfrecords or data.csv_path)
    read_report = ReadReport()
    sources: dict[str, list[str]] = {}
    if config.data_tfrecords:
        from mmentail.tfrecord import read_splits

        splits = read_splits(config.data_tfrecords)
        (train, sources["train"]), (val, sources["val"]), (test, sources["test"]) = (
            splits[name] for name in ("train", "val", "test"))
        pairs = pd.concat([train, val, test])
    else:
        pairs = read_pairs(data.csv_path, data.image_dir, skip_bad_rows=config.skip_bad_rows,
                           report=read_report)
        train, val, test = split_pairs(pairs, seed=config.seed)
    # Written once the data is good, so a run that failed on its data claims no directory.
    atomic_write_json(output / "config.json", resolved)
    atomic_write_json(output / "data_report.json", dataclasses.asdict(read_report))
    if read_report.skipped:
        log.warning("skipped %d of %d rows (%d problems, listed in %s)",
                    read_report.rows_read - read_report.rows_kept, read_report.rows_read,
                    len(read_report.skipped), output / "data_report.json")
    log.info("%d pairs %s -> train %d, val %d, test %d", len(pairs), label_counts(pairs),
             len(train), len(val), len(test))
    for name, part in (("train", train), ("val", val), ("test", test)):
        columns = [c for c in part.columns if c not in ("label_idx", "image_1_path",
                                                        "image_2_path")]
        atomic_write_text(output / "splits" / f"{name}.csv", part[columns].to_csv(index=False))

    # An image-only run loads no text model at all.
    preprocessor = (load_preprocessor(data.preprocess_handle) if config.modality != "image"
                    else None)
    image_size = (config.image_size, config.image_size)
    common = dict(image_size=image_size, seq_length=config.seq_length,
                  batch_size=config.batch_size, seed=config.seed, modality=config.modality,
                  deterministic=config.deterministic)

    def split_dataset(name: str, part: pd.DataFrame, training: bool, cache: bool = True,
                      shuffle_step: tf.Variable | None = None) -> tf.data.Dataset:
        cache = cache and cache_setting(
            config.pipeline_cache, part, name, sources=sources.get(name, ()),
            image_size=image_size, seq_length=config.seq_length, modality=config.modality,
            preprocess=data.preprocess_handle)
        return make_dataset(part, preprocessor, training=training, cache=cache,
                            shuffle_step=shuffle_step, tfrecord_files=sources.get(name),
                            **common)

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
        modality=config.modality, text_pooling=config.text_pooling,
        image_trainable_blocks=config.image_trainable_blocks,
        modality_dropout=config.modality_dropout, fusion=config.fusion)
    fine_tune = config.train_text_encoder or config.train_image_encoder
    use_feature_cache = config.feature_cache and not fine_tune
    train_labels = train["label_idx"].to_numpy()
    steps_per_epoch = -(-len(train) // config.batch_size)

    def optimizer(learning_rate: float) -> tf_keras.optimizers.Optimizer:
        return make_optimizer(config.optimizer, learning_rate,
                              total_steps=steps_per_epoch * config.epochs,
                              warmup_steps=round(config.warmup_epochs * steps_per_epoch),
                              schedule=config.lr_schedule, weight_decay=config.weight_decay,
                              clipnorm=config.clipnorm)

    # Seeded here, not earlier: the initial weights must not depend on what drew
    # random numbers before (generating the demo seeds and draws for its encoder).
    tf_keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_model(model_config)
        if fine_tune:
            # Pretrained encoders train at their own, smaller rate.
            model = TwoRateModel.wrap(model, optimizer(config.encoder_learning_rate))
        # With frozen encoders only the head trains, on features computed once.
        trainee = model.get_layer("head") if use_feature_cache else model
        trainee.compile(
            optimizer=optimizer(config.learning_rate),
            loss=make_loss(config.loss, label_smoothing=config.label_smoothing,
                           gamma=config.focal_gamma,
                           alpha=focal_alpha(config.focal_alpha, train_labels)),
            # float32 metrics whatever the policy: mixed-precision metric
            # variables cannot be read across replicas.
            metrics=[tf_keras.metrics.CategoricalAccuracy(name="accuracy", dtype="float32"),
                     tf_keras.metrics.F1Score(average="macro", name="macro_f1",
                                              dtype="float32")],
            jit_compile=config.jit_compile, steps_per_execution=config.steps_per_execution)

    if use_feature_cache:
        from mmentail.feature_cache import cached_features, feature_dataset, feature_key
        from mmentail.fingerprint import weights_digest

        random_image_weights = (
            weights_digest(model.get_layer("encoders").get_layer("image_encoder").weights)
            if model_config.image_weights is None and config.modality != "text" else None)

        fit_train, fit_val = (
            feature_dataset(*cached_features(
                model.get_layer("encoders"), split_dataset(name, part, False, cache=False),
                strategy=strategy, directory=Path(config.cache_dir) / "features",
                key=feature_key(part, model_config, preprocess_handle=data.preprocess_handle,
                                random_image_weights=random_image_weights,
                                sources=sources.get(name, ())),
                persist=is_chief(strategy)),
                batch_size=config.batch_size, training=training, seed=config.seed,
                shuffle_step=trainee.optimizer.iterations)
            for name, part, training in (("train", train, True), ("val", val, False)))
    else:
        fit_train = split_dataset("train", train, True,
                                  shuffle_step=trainee.optimizer.iterations)
        fit_val = split_dataset("val", val, False)

    checkpoint = run_dir.best_checkpoint(config.monitor)
    best_weights = Path(checkpoint.filepath)
    best_weights.parent.mkdir(parents=True, exist_ok=True)
    callbacks = [checkpoint, run_dir.journal(checkpoint),
                 tf_keras.callbacks.CSVLogger(str(output / "history.csv"), append=True),
                 run_dir.backup()]
    if config.early_stopping:
        callbacks.append(tf_keras.callbacks.EarlyStopping(
            monitor=config.monitor, mode=monitor_mode(config.monitor),
            patience=config.early_stopping))
    log.info("training %d epochs (trainable weights: %d)", config.epochs,
             sum(int(np.prod(w.shape)) for w in trainee.trainable_weights))
    with GracefulStop() as stop:
        trainee.fit(fit_train, validation_data=fit_val, epochs=config.epochs,
                    callbacks=[stop, *callbacks],
                    class_weight=class_weights(train_labels) if config.class_weights else None,
                    verbose=2 if not sys.stdout.isatty() else 1)
    if best_weights.with_suffix(".index").exists():
        trainee.load_weights(str(best_weights))
    # Other workers' checkpoints are temporary: they take the chief's best weights.
    share_chief_weights(trainee, strategy)

    metrics = evaluate(model, test_ds, test["label_idx"].to_numpy(), train_labels)
    write_report(output, metrics)
    export_dir = export_savedmodel(
        model, preprocessor, output / "export", image_size=image_size,
        seq_length=config.seq_length, modality=config.modality,
        metadata={"config": resolved}) if export else None
    run_dir.mark_finished()
    metrics["export_dir"] = str(export_dir) if export_dir else None
    metrics["wall_seconds"] = round(time.time() - started, 1)
    return metrics


def _parse_args(argv: Sequence[str] | None) -> tuple[str, str, dict[str, Any]]:
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
    arg("--demo-vague-posts", type=float,
        help="share of demo posts whose text does not name their topic (default 0)")
    arg("--train-text-encoder", action=argparse.BooleanOptionalAction, default=None)
    arg("--train-image-encoder", action=argparse.BooleanOptionalAction, default=None)
    arg("--class-weights", action=argparse.BooleanOptionalAction, default=None)
    arg("--feature-cache", action=argparse.BooleanOptionalAction, default=None,
        help="train the head on features computed once when both encoders are frozen")
    arg("--skip-bad-rows", action="store_true", default=None,
        help="drop invalid rows and images (counted in data_report.json) instead of stopping")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", dest="existing", action="store_const", const="resume",
                          help="continue the run in --output; epochs and strategy may change")
    existing.add_argument("--overwrite", dest="existing", action="store_const",
                          const="overwrite",
                          help="move any run in --output aside and start a new one")
    arg("--monitor", help="metric that picks the best epoch, the latest of tied ones "
        "(default val_macro_f1)")
    arg("--early-stopping", type=int, metavar="EPOCHS",
        help="stop after this many epochs without a better --monitor; 0: never")
    arg("--loss", choices=LOSSES)
    arg("--focal-gamma", type=float, help="focal loss focusing exponent")
    arg("--focal-alpha", help="focal loss class weights: balanced, none or 3 floats a,b,c")
    arg("--label-smoothing", type=float)
    arg("--optimizer", choices=OPTIMIZERS)
    arg("--weight-decay", type=float, help="AdamW decoupled weight decay")
    arg("--lr-schedule", choices=SCHEDULES)
    arg("--warmup-epochs", type=float, help="linear learning-rate warmup")
    arg("--clipnorm", type=float, help="clip the gradients' global norm")
    arg("--encoder-learning-rate", type=float, help="learning rate of fine-tuned encoders")
    arg("--image-trainable-blocks", type=int,
        help="with --train-image-encoder, fine-tune only the top N ResNet blocks (0: all)")
    arg("--modality-dropout", type=float,
        help="per-example probability of dropping text or images before fusion")
    arg("--fusion", choices=FUSIONS)
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
    return args.pop("preset"), args.pop("existing") or "auto", args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    preset, existing, overrides = _parse_args(argv)
    config = resolve_config(preset, overrides)
    try:
        result = run(config, existing)
    except TrainingInterrupted as stop:
        print(resume_hint(stop, config.output, sys.argv[1:] if argv is None else argv))
        return 128 + stop.signum
    print("\n" + summary(result))
    print(f"run directory: {config.output}\nexport: {result['export_dir']}\n"
          f"wall time: {result['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
