"""Where and how training runs: the tf.distribute strategy, worker roles, numeric precision.

One process per machine runs the same program; with `multi_worker`, the
machines find each other through the `TF_CONFIG` environment variable (see
tf.distribute's MultiWorkerMirroredStrategy). Every worker trains and saves,
since saving a distributed model takes all workers, but only the chief
writes to the run directory: the others write to a temporary directory that
is removed at the end.

Example:
    strategy = make_strategy("multi_worker")    # TF_CONFIG set on each machine
    with worker_output(strategy, "runs/big") as output:
        train_and_export(output)
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import tensorflow as tf
import tf_keras

from mmentail.config.experiment import STRATEGIES


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy for `name` (see :data:`STRATEGIES`).

    Create it first thing in a program: `multi_worker` and `tpu` must be set
    up before any other TensorFlow op runs. `mirrored` over a single device
    (one GPU, or the CPU) is the default strategy: replicating to one device
    computes the same, but builds a multi-device iterator for every pass over
    a dataset, about 0.4 s per epoch and per validation on 2 CPU cores.
    """
    if name == "mirrored":
        mirrored = tf.distribute.MirroredStrategy()
        return mirrored if mirrored.num_replicas_in_sync > 1 else tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")


def _is_default(strategy: tf.distribute.Strategy) -> bool:
    """True for TensorFlow's default strategy (asked outside any strategy scope)."""
    return strategy is tf.distribute.get_strategy()


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The strategy's class name, "default (one device)" for the default strategy."""
    return "default (one device)" if _is_default(strategy) else type(strategy).__name__


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    return bool(strategy.extended.should_checkpoint)


@contextlib.contextmanager
def worker_output(strategy: tf.distribute.Strategy, output: str | Path) -> Iterator[Path]:
    """Yields the directory this worker writes its run outputs to.

    The chief gets `output`; any other worker a temporary directory, removed
    on exit, so workers never overwrite each other's files.
    """
    if is_chief(strategy):
        yield Path(output)
        return
    scratch = Path(tempfile.mkdtemp(prefix="mmentail-worker-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def share_chief_weights(model: tf_keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Sets every worker's copy of `model`'s weights to the chief's.

    Only the chief keeps files (see :func:`worker_output`), so weights loaded
    from a checkpoint after training, such as the best epoch's, reach the
    other workers through this collective instead. Every worker must call it
    at the same point; without several workers it does nothing.

    Example:
        if is_chief(strategy):
            model.load_weights("runs/big/checkpoints/best")
        share_chief_weights(model, strategy)
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    weights = model.weights

    @tf.function
    def chief_values() -> list[tf.Tensor]:
        context = tf.distribute.get_replica_context()
        # Global replica 0 runs on the chief: a sum of its values and zeros.
        first = context.replica_id_in_sync_group == 0
        return context.all_reduce(tf.distribute.ReduceOp.SUM,
                                  [tf.where(first, w, tf.zeros_like(w)) for w in weights])

    for weight, value in zip(weights, strategy.run(chief_values)):
        weight.assign(strategy.experimental_local_results(value)[0])


def mixed_precision_policy(strategy: tf.distribute.Strategy) -> str:
    """`mixed_float16` when training on GPUs, else `mixed_bfloat16` (CPU and TPU)."""
    if _is_default(strategy):  # one device, which has no worker_devices to list
        on_gpu = bool(tf.config.list_logical_devices("GPU"))
    else:
        on_gpu = any(d.device_type == "GPU" for d in map(tf.DeviceSpec.from_string,
                                                            strategy.extended.worker_devices))
    return "mixed_float16" if on_gpu else "mixed_bfloat16"


@contextlib.contextmanager
def precision(policy: str) -> Iterator[None]:
    """Sets the global tf_keras dtype policy for models built inside, then restores it.

    Layers that must stay float32 (the softmax) say so with `dtype="float32"`.
    """
    previous = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)
