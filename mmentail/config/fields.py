"""Configuration fields that document and check themselves.

A field declared with :func:`option` carries its help text (the command-line
flag's, see :mod:`mmentail.config.flags`) and its allowed values; a section
deriving from :class:`CheckedSection` refuses a bad value when it is built, with
a :class:`~mmentail.errors.ConfigError` naming the setting.

Example:
    >>> @dataclasses.dataclass(frozen=True)
    ... class Section(CheckedSection):
    ...     epochs: int = option(10, "passes over the data", minimum=1)
    >>> Section(epochs=0)
    Traceback (most recent call last):
    ...
    mmentail.errors.ConfigError: epochs must be at least 1; got 0
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mmentail.errors import ConfigError
from mmentail.schema import LABELS


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
           minimum: float | None = None) -> Any:
    """A config field with its documentation (the flag's help) and its allowed values."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices,
                                                         "minimum": minimum})


class CheckedSection:
    """Checks choices and minimums declared with :func:`option`."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            choices, minimum = field.metadata.get("choices"), field.metadata.get("minimum")
            if choices and value not in choices:
                raise ConfigError(f"{field.name} must be one of {', '.join(choices)}; "
                                  f"got {value!r}")
            if minimum is not None and value is not None and value < minimum:
                raise ConfigError(f"{field.name} must be at least {minimum}; got {value!r}")


def class_alphas(spec: str) -> list[float]:
    """The per-label floats of a `focal_alpha` setting such as "0.4,0.4,0.2".

    Raises:
        ConfigError: not one non-negative float per label.
    """
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        values = []
    if len(values) != len(LABELS) or min(values) < 0:
        raise ConfigError(f"focal_alpha must be 'none', 'balanced' or {len(LABELS)} "
                          f"non-negative comma-separated floats ({', '.join(LABELS)}), "
                          f"got {spec!r}")
    return values
