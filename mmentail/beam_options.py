"""What the commands that run as Apache Beam pipelines share: `--runner`, Beam's own
options, and the pipeline's counters.

`mmentail-predict` and `mmentail-write-tfrecords` run in one process by default;
given `--runner` (DirectRunner, DataflowRunner, PortableRunner, FlinkRunner,
SparkRunner), they build a Beam pipeline instead, and every flag the command
does not know is handed to Beam as a pipeline option (`--direct_num_workers 2`,
`--project`, `--temp_location`, `--job_endpoint`, ...). Beam is an optional
extra: `pip install -e ".[beam]"`.

Example:
    options = pipeline_options("DirectRunner", ["--direct_num_workers", "2"])
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Sequence

from mmentail.errors import MissingPackageError

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.runner import PipelineResult


def add_runner_flag(parser: argparse.ArgumentParser) -> None:
    """Adds `--runner`; the command then passes the flags it does not know to Beam."""
    parser.add_argument("--runner", help="run as an Apache Beam pipeline on this runner "
                        "(DirectRunner, DataflowRunner, PortableRunner, FlinkRunner, "
                        "SparkRunner); flags this command does not know go to Beam "
                        "(--direct_num_workers 2, --project, --temp_location, ...); "
                        "default: in this process, without Beam")


def parse_with_pipeline_args(parser: argparse.ArgumentParser,
                             argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser`'s arguments, with the flags it does not know as `pipeline_args`: allowed
    only with `--runner`, otherwise an error as usual."""
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.runner is None:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (Beam pipeline "
                     "options need --runner)")
    args.pipeline_args = unknown
    return args


def pipeline_options(runner: str, pipeline_args: Sequence[str] = (), *,
                     verbose: bool = False) -> PipelineOptions:
    """Beam's options for `runner` and the command line's other Beam flags.

    Unless `verbose`, Beam's INFO lines (a few dozen per worker and stage) are
    hidden, here and on the workers (`--default_sdk_harness_log_level WARNING`
    unless the flags set it).

    Raises:
        MissingPackageError: Apache Beam is not installed.
    """
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise MissingPackageError("--runner needs Apache Beam: pip install -e \".[beam]\"") \
            from None
    quiet = []
    if not verbose:
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        if not any(arg.startswith("--default_sdk_harness_log_level") for arg in pipeline_args):
            quiet = ["--default_sdk_harness_log_level", "WARNING"]
    return PipelineOptions(["--runner", runner, *quiet, *pipeline_args])


def counter(result: PipelineResult, namespace: str, name: str) -> int:
    """A finished pipeline's counter `namespace:name`, summed over its steps (0 if never
    incremented)."""
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_namespace(namespace).with_name(name))
    return sum(item.committed or 0 for item in found["counters"])
