"""A run directory's life: which run it holds, whether it may be resumed, who may write it.

Running `mmentail-train` again with the same `--output` continues the run
that is there (:func:`open_run_dir`): a `config.json` of a different
configuration is refused, unless the caller asks to start over (`overwrite`,
the old run is moved aside) or to resume anyway (`resume`, only
:data:`RESUMABLE_KEYS` may differ). A lock keeps a second process out;
`state.json` says whether the run finished. The Keras side of resuming
(backup, best checkpoint, history) is :mod:`mmentail.training.callbacks`.

A finished run keeps its backup and best checkpoint: running it again trains
no further, and evaluates and exports its best weights again; `resume` with a
larger `epochs` trains it on.

Example:
    run_dir = open_run_dir(Path("runs/demo"), resolved_config.to_json(), mode="auto")
    run_dir.status
    run_dir.mark_finished()
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from mmentail.config.experiment import VERSION_KEY, ExperimentConfig, flat_settings
from mmentail.errors import ConfigError, RunDirError
from mmentail.io_utils import atomic_write_json

log = logging.getLogger("mmentail")

MODES = ("auto", "resume", "overwrite")
# May differ between a run and its resumption under mode="resume".
RESUMABLE_KEYS = ("optim.epochs", "runtime.strategy")
# Where a run is, and which mmentail recorded it, not what it is.
IGNORED_KEYS = ("output", "data.cache_dir", "data.data_service", VERSION_KEY)
STATE_FILE = "state.json"
_LOCK_FILE = ".lock"
_TEMP_MARK = ".tmp-"


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """{section.key: (stored value, current value)} for every setting whose values differ.

    A `stored` config of the flat layout older runs wrote is read in today's
    sections first. Keys in :data:`IGNORED_KEYS` are not compared; a key
    missing on one side counts as a difference (value `None`). Values are
    compared as JSON.
    """
    try:
        stored = ExperimentConfig.from_json(stored).to_json()
    except ConfigError:
        pass  # a setting this version lacks: shown below as a difference
    stored, current = (flat_settings(json.loads(json.dumps(c))) for c in (stored, current))
    return {key: (stored.get(key), current.get(key))
            for key in sorted(set(stored) | set(current))
            if key not in IGNORED_KEYS and stored.get(key) != current.get(key)}


def _describe(differences: dict[str, tuple]) -> str:
    return "; ".join(f"{key}: {old!r} in the stored run, {new!r} now"
                     for key, (old, new) in differences.items())


@dataclasses.dataclass
class RunDir:
    """An open run directory; holds its lock until the process ends.

    Attributes:
        path: the run directory.
        status: "new", "interrupted" (a previous process stopped before the
            end; it resumes) or "finished" (it is evaluated and exported again).
        moved_to: where `overwrite` moved the previous run, if anywhere.
    """

    path: Path
    status: str
    moved_to: Path | None = None
    _lock: Any = dataclasses.field(default=None, repr=False)

    def set_status(self, status: str) -> None:
        atomic_write_json(self.path / STATE_FILE,
                          {"status": status, "pid": os.getpid(),
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def mark_finished(self) -> None:
        self.set_status("finished")

    def close(self) -> None:
        """Releases the directory's lock (the end of the process does too)."""
        self._lock.close()


def open_run_dir(output: Path, config: dict[str, Any], mode: str = "auto") -> RunDir:
    """Checks that `output` can hold the run of `config`, locks it and marks it running.

    Args:
        output: run directory (created if missing).
        config: the resolved configuration, as written to `config.json`.
        mode: "auto": resume a run of the same configuration, refuse any
            other; "resume": as auto, and :data:`RESUMABLE_KEYS` may differ
            (e.g. more epochs), but there must be a run; "overwrite": move any
            run found to `<output>.replaced-<time>` and start afresh.

    Raises:
        RunDirError: with a message saying what differs and what to do, when
            the directory holds another run, is not a run directory, or is in
            use by another `mmentail-train`.

    Example:
        open_run_dir(Path("runs/demo"), config.to_json()).status
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    output.mkdir(parents=True, exist_ok=True)
    lock = _lock(output)
    try:
        status, moved_to = _check(output, config, mode)
    except BaseException:
        lock.close()
        raise
    if moved_to is not None:
        lock.close()
        output.mkdir()
        lock = _lock(output)
    _remove_stale_temporaries(output)
    run_dir = RunDir(output, status, moved_to, lock)
    if status == "finished":
        log.info("%s holds a finished run: evaluating and exporting its best weights "
                 "again (use --overwrite to train a new one)", output)
    elif status == "interrupted":
        log.info("%s holds an unfinished run of this configuration: resuming it", output)
    run_dir.set_status("running")
    return run_dir


def _check(output: Path, config: dict[str, Any], mode: str) -> tuple[str, Path | None]:
    """The status of the run in `output`, and where `overwrite` moved it."""
    stored_config = output / "config.json"
    if not stored_config.exists():
        leftovers = [p.name for p in output.iterdir()
                     if p.name not in (_LOCK_FILE, STATE_FILE) and _TEMP_MARK not in p.name]
        if leftovers:
            raise RunDirError(f"{output} is not empty and holds no run "
                             f"(no config.json; found {', '.join(sorted(leftovers)[:5])}); "
                             "choose a new or empty --output")
        if mode == "resume":
            raise RunDirError(f"--resume: {output} holds no run to resume")
        return "new", None
    if mode == "overwrite":
        moved_to = output.with_name(f"{output.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        os.rename(output, moved_to)
        log.info("--overwrite: moved the previous run to %s", moved_to)
        return "new", moved_to
    differences = config_differences(json.loads(stored_config.read_text()), config)
    blocking = {k: v for k, v in differences.items()
                if mode != "resume" or k not in RESUMABLE_KEYS}
    if blocking:
        hint = (f"only {', '.join(RESUMABLE_KEYS)} may change when resuming"
                if mode == "resume" else
                f"--resume continues it if only {', '.join(RESUMABLE_KEYS)} differ")
        raise RunDirError(
            f"{output} holds a run with a different configuration "
            f"({_describe(blocking)}). Use --overwrite to start a new run there (the "
            f"old one is moved aside), another --output, or the same flags; {hint}.")
    if differences:
        log.info("--resume with changed settings: %s", _describe(differences))
    state = output / STATE_FILE
    finished = state.exists() and json.loads(state.read_text())["status"] == "finished"
    return ("finished" if finished else "interrupted"), None


def is_finished(output: Path, config: dict[str, Any]) -> bool:
    """True when `output` holds a finished run of `config` (where it is aside, see
    :data:`IGNORED_KEYS`): running it again would train nothing. Reads only, locks nothing.

    Example:
        is_finished(Path("runs/cv/fold-1"), fold_config.to_json())
    """
    stored, state = output / "config.json", output / STATE_FILE
    if not (stored.is_file() and state.is_file()):
        return False
    return (json.loads(state.read_text()).get("status") == "finished"
            and not config_differences(json.loads(stored.read_text()), config))


def _lock(output: Path) -> Any:
    """An exclusive lock on `output`, released when the process ends (even killed)."""
    handle = open(output / _LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunDirError(f"{output} is in use by another mmentail-train "
                         "process") from None
    return handle


def _remove_stale_temporaries(output: Path) -> None:
    """Removes the hidden temporaries of atomic writes a killed process left behind."""
    for path in output.rglob(f".*{_TEMP_MARK}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)




def check_writable(output: Path) -> None:
    """Fails before any work if the run directory cannot be written (read-only, full disk)."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-probe"
        probe.write_bytes(b"\0" * 1024 * 1024)
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to output dir {output}: {e}") from None
