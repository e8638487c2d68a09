"""Progress of the long steps outside `fit`: a bar on a terminal, a few log lines elsewhere.

Checking every image header of a large CSV, tokenising, encoding features or
writing shards takes minutes on real data; a silent console looks hung. On a
terminal (stderr is a TTY) a `tf_keras.utils.Progbar` is drawn on stderr, so
stdout keeps only a command's results; in logs and CI, where a redrawn bar
would be hundreds of lines, a line is logged when a tenth of the work is done
and `interval` seconds have passed since the last one (a step quicker than
that logs nothing).

Example:
    >>> progress = Progress("checking images", total=40, unit="row", terminal=False,
    ...                     interval=0)
    >>> for _ in range(40):
    ...     progress.add(1)
    >>> progress.logged
    [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

log = logging.getLogger("mmentail")
# Without a bar, the fewest seconds between two log lines of one step.
LOG_INTERVAL = 10.0


class Progress:
    """Counts `total` units of one step and shows how far it is.

    Args:
        what: the step, as the log lines name it ("checking images").
        total: units of work in all; 0 or less shows nothing.
        unit: the unit's name ("row", "batch", "byte").
        terminal: draw a bar (default: when stderr is a terminal).
        interval: without a bar, the fewest seconds between two log lines
            (default :data:`LOG_INTERVAL`).
    """

    def __init__(self, what: str, total: int, unit: str = "step",
                 terminal: bool | None = None, interval: float | None = None):
        self.what, self.total, self.unit, self.done = what, total, unit, 0
        self.logged: list[int] = []
        self._interval = LOG_INTERVAL if interval is None else interval
        self._last_line = time.monotonic()
        self._bar = None
        if total > 0 and (sys.stderr.isatty() if terminal is None else terminal):
            import tf_keras

            with contextlib.redirect_stdout(sys.stderr):
                self._bar = tf_keras.utils.Progbar(total, unit_name=unit)

    def add(self, count: int) -> None:
        """Records `count` more units done."""
        if self.total <= 0:
            return
        before, self.done = self.done, min(self.total, self.done + count)
        if self._bar is not None:
            # Progbar writes to sys.stdout when it draws: send that to stderr.
            with contextlib.redirect_stdout(sys.stderr):
                self._bar.update(self.done, finalize=self.done >= self.total)
        elif (self.done * 10 // self.total > before * 10 // self.total
              and time.monotonic() - self._last_line >= self._interval):
            self._last_line = time.monotonic()
            self.logged.append(self.done)
            log.info("%s: %d/%d %ss (%d%%)", self.what, self.done, self.total, self.unit,
                     100 * self.done // self.total)
