"""Failures a user can cause and fix: each ends a command with its message alone.

Every error a command expects (bad data, a bad configuration, a run directory
in another run's way, a failed download or conversion) derives from
:class:`MmentailError`. The command-line entry points print its message and
exit with :attr:`MmentailError.exit_code`; anything else is a bug and keeps its
traceback.
"""


class MmentailError(Exception):
    """An expected failure, explained by its message."""

    exit_code = 1


class ConfigError(MmentailError, ValueError):
    """A configuration value, flag or preset that cannot be used, and why."""

    exit_code = 2


class RunDirError(MmentailError):
    """The run directory holds another run, cannot be written, or is in use."""


class MissingPackageError(MmentailError, ModuleNotFoundError):
    """An optional package a setting needs is not installed; says how to install it."""


class MissingFileError(MmentailError, FileNotFoundError):
    """A file or folder a setting names is not there (or is not what it should hold)."""
