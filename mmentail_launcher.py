"""The console commands' entry points: TensorFlow's start-up chatter hidden, then the command.

Importing TensorFlow prints a screen of C++ notes (no CUDA drivers, CPU
features, a failed `cuInit`) before any command's own line, some of them before
TensorFlow's logging starts, where `TF_CPP_MIN_LOG_LEVEL` cannot reach them.
So each command starts here, outside the `mmentail` package (whose import loads
TensorFlow, and must keep doing so for library users): with neither
`TF_CPP_MIN_LOG_LEVEL` set by the user nor `--verbose` given, it sets the level
to 2 and imports TensorFlow and probes its devices with the C-level stderr
captured, then writes back every captured line that is not known chatter, so a
real error is never lost. Only the commands do this; `import mmentail` changes
nothing in its process.

Example:
    >>> is_chatter(b"I0000 00:00:1795754253.241210 1591 cudart_stub.cc:31] Could not find ...")
    True
    >>> is_chatter(b"Traceback (most recent call last):")
    False
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import re
import sys
import tempfile
from typing import Iterator, Sequence

QUIET_LOG_LEVEL = "2"
_GLOG_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]]*\] ?(.*)$")
# Errors TensorFlow logs on every machine without a usable GPU: harmless, and not ours.
_KNOWN_ERRORS = re.compile(rb"failed call to cuInit|Unable to register cu\w+ factory|"
                           rb"computation placer already registered")
_CHATTER_LINES = (b"WARNING: All log messages before absl::InitializeLog() is called",
                  b"To enable the following instructions:")


def is_chatter(line: bytes) -> bool:
    """Whether a line of stderr is TensorFlow start-up chatter rather than a real problem."""
    line = line.rstrip(b"\r\n")
    if line.startswith(_CHATTER_LINES):
        return True
    glog = _GLOG_LINE.match(line)
    if glog is None:
        return False
    severity, message = glog.groups()
    return severity in (b"I", b"W") or (severity == b"E" and bool(_KNOWN_ERRORS.search(message)))


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Captures file descriptor 2 and, on exit, writes back all but the chatter lines.

    A temporary file rather than a pipe, so a long burst of output cannot block.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True)
                    if not is_chatter(line)]
            if kept:
                os.write(2, b"".join(kept))


def wants_quiet(argv: Sequence[str], environ: dict[str, str] | os._Environ) -> bool:
    """Quiet unless the user set `TF_CPP_MIN_LOG_LEVEL` or asked for `--verbose`."""
    options = argv[:argv.index("--")] if "--" in argv else argv
    return "TF_CPP_MIN_LOG_LEVEL" not in environ and "--verbose" not in options


def launch(module: str) -> int:
    """Runs `module.main()` on `sys.argv`, with TensorFlow's start-up quiet if wanted.

    Once the command is done, every object left is frozen out of the garbage
    collector: the interpreter's exit then skips a last full collection over the
    objects TensorFlow and Keras made, which took ~2 s after a training run and
    frees nothing the process's end does not. Exit handlers still run.
    """
    if wants_quiet(sys.argv[1:], os.environ):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = QUIET_LOG_LEVEL
        with filtered_stderr():
            import tensorflow as tf

            import mmentail  # noqa: F401  (tensorflow-text and its libraries, loaded here)

            tf.config.list_physical_devices()  # the CUDA probe, and its complaint
    code = importlib.import_module(module).main()
    gc.freeze()
    return code


def train() -> int:
    """`mmentail-train`."""
    return launch("mmentail.train")


def evaluate() -> int:
    """`mmentail-evaluate`."""
    return launch("mmentail.evaluation.rerun")


def write_tfrecords() -> int:
    """`mmentail-write-tfrecords`."""
    return launch("mmentail.data.tfrecord")


def convert_bert() -> int:
    """`mmentail-convert-bert`."""
    return launch("mmentail.text.convert")


def serve() -> int:
    """`mmentail-serve`."""
    return launch("mmentail.serving.server")


def predict() -> int:
    """`mmentail-predict`."""
    return launch("mmentail.serving.predict")


def explain() -> int:
    """`mmentail-explain`."""
    return launch("mmentail.serving.explain")
