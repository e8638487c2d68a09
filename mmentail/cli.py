"""What every mmentail command shares: logging, and expected failures as one-line messages.

Example:
    >>> parser = argparse.ArgumentParser(prog="mmentail-evaluate")
    >>> _ = parser.add_argument("run_dir")
    >>> run_command(parser, lambda args: 0, ["runs/demo"])
    0
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from mmentail import __version__
from mmentail.errors import MmentailError


def quiet_tensorflow_logger(verbose: bool = False) -> None:
    """TensorFlow's Python loggers through the command's handler alone (its own handler
    printed each line a second time), warnings only unless `verbose`: "absl" is the
    one TensorFlow's checkpoint saver writes to ("Sharding callback duration", twice
    an epoch)."""
    tf_logger = logging.getLogger("tensorflow")
    for handler in list(tf_logger.handlers):
        tf_logger.removeHandler(handler)
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Adds `--version`, `--debug` and `--verbose`, the flags every command has, to `parser`."""
    messages = parser.add_argument_group(
        "messages", "every mmentail command has these: how much it shows beyond its own messages")
    messages.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                          help="print the command's name and mmentail's version, and exit")
    messages.add_argument("--debug", action="store_true",
                          help="show the Python traceback of an expected failure")
    messages.add_argument("--verbose", action="store_true",
                          help="show TensorFlow's start-up messages, which the console "
                               "commands hide unless TF_CPP_MIN_LOG_LEVEL is set")


def run_command(parser: argparse.ArgumentParser,
                body: Callable[[argparse.Namespace], int],
                argv: Sequence[str] | None = None, *,
                parse: Callable[[argparse.ArgumentParser, Sequence[str] | None],
                                argparse.Namespace] | None = None) -> int:
    """Parses `argv`, runs `body(args)` and returns its exit code.

    An expected failure (:class:`~mmentail.errors.MmentailError`: bad data, a
    bad setting, a run directory in the way, a failed download) ends with its
    message alone on stderr and the error's exit code; `--debug` shows its
    traceback instead. `--verbose` is read before TensorFlow loads, by the
    console commands' launcher (`mmentail_launcher`); here it also lets
    TensorFlow's own INFO lines ("Assets written to ...") through. `--version`
    prints the command's name and mmentail's version, and exits. `parse` replaces
    `parser.parse_args` (e.g. to pass unknown flags on to Apache Beam).
    """
    add_common_flags(parser)
    args = parser.parse_args(argv) if parse is None else parse(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    quiet_tensorflow_logger(verbose=args.verbose)
    try:
        return body(args)
    except MmentailError as error:
        if args.debug:
            raise
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return error.exit_code
