"""Command-line flags generated from the configuration's fields: never written twice.

Each field of :class:`~mmentail.config.experiment.ExperimentConfig` and its
sections becomes `--field-name` with the field's help, type and choices; a
boolean gets `--name` / `--no-name`. Flags left out keep the starting
configuration's value: a preset's (`--preset`), or a recorded run's
(`--config run/config.json`).

Example:
    >>> parser = argparse.ArgumentParser()
    >>> add_config_flags(parser)
    >>> config = config_from_args(parser.parse_args(["--preset", "demo", "--epochs", "3"]))
    >>> config.optim.epochs, config.preset
    (3, 'demo')
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from mmentail.config.experiment import SECTIONS, ExperimentConfig, field_sections, load_config
from mmentail.config.presets import PRESETS, resolve_config
from mmentail.errors import ConfigError

_TOP_LEVEL_FLAGS = ("output", "seed")


def _flag_type(annotation: Any) -> Any:
    """int / float / str / bool of an annotation such as `float | None`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _add_fields(group: argparse._ArgumentGroup, section_cls: type,
                names: tuple[str, ...] | None = None) -> None:
    hints = typing.get_type_hints(section_cls)
    for field in dataclasses.fields(section_cls):
        if names is not None and field.name not in names:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = _flag_type(hints[field.name])
        help_text = f"{field.metadata['help']} (default: {field.default})"
        if kind is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            group.add_argument(flag, dest=field.name, type=kind, default=None,
                               choices=field.metadata.get("choices"), help=help_text,
                               metavar=None if field.metadata.get("choices") else
                               field.name.upper())


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Adds `--preset`, `--config` and one flag per configuration field to `parser`."""
    start = parser.add_argument_group("starting configuration")
    start.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="named starting configuration (default: demo); "
                            + "; ".join(f"{name}: {p['doc']}" for name, p in PRESETS.items()))
    start.add_argument("--config", metavar="CONFIG_JSON",
                       help="start from a recorded run's config.json instead of a preset "
                            "(reruns it; any flag still overrides)")
    _add_fields(parser.add_argument_group("run"), ExperimentConfig, _TOP_LEVEL_FLAGS)
    for name, section_cls in SECTIONS.items():
        _add_fields(parser.add_argument_group(f"{name}: {section_cls.__doc__.splitlines()[0]}"),
                    section_cls)


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The configuration `add_config_flags`' flags describe."""
    if args.config and args.preset:
        raise ConfigError("give --preset or --config, not both")
    base: str | ExperimentConfig = load_config(args.config) if args.config else (
        args.preset or "demo")
    # `--preset` names the base; every other field is a flag of its own name.
    overrides = {name: getattr(args, name) for name in field_sections() if name != "preset"}
    return resolve_config(base, overrides)
