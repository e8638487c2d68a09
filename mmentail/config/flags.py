"""Command-line flags generated from the configuration's fields: never written twice.

Each field of :class:`~mmentail.config.experiment.ExperimentConfig` and its
sections becomes `--field-name` with the field's help, type and choices; a
boolean gets `--name` / `--no-name`. Flags left out keep the starting
configuration's value: a preset's (`--preset`), or a recorded run's
(`--config run/config.json`). :func:`flag_table` renders a parser's flags as
the Markdown table of the documentation (`tools/flag_table.py` writes it).

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
import re
import typing
from typing import Any

from mmentail.config.experiment import SECTIONS, ExperimentConfig, field_sections, load_config
from mmentail.config.presets import PRESETS, preset_config, resolve_config
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
                            + "; ".join(f"{name}: {p['doc'].rstrip('.')}"
                                         for name, p in PRESETS.items()))
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


def _table_cell(value: Any) -> str:
    """A configuration value as the flag table shows it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "-"
    return f"`{value}`" if isinstance(value, str) else str(value)


def _table_text(text: str) -> str:
    """Help text for a Markdown table cell: Sphinx roles dropped; pipes and angle
    brackets escaped (`<output>` would be read as an HTML tag)."""
    text = re.sub(r":\w+:`~?", "`", text)
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def flag_table(parser: argparse.ArgumentParser) -> str:
    """The Markdown table of `parser`'s `--` flags, by argument group.

    One column per preset holds the value the preset gives the flag's field
    (`on`/`off` for switches, `-` for none); the last column is the field's own
    help (a flag that is no field: its argparse help), with the choices when
    the help does not name them all.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_config_flags(parser)
        >>> print(flag_table(parser).splitlines()[7])
        | `--seed` | 42 | 42 | 42 | seed of the split, shuffling and initialisation |
    """
    configs = [preset_config(name) for name in PRESETS]
    owners = field_sections()
    fields = {field.name: field for cls in (ExperimentConfig, *SECTIONS.values())
              for field in dataclasses.fields(cls)}
    lines = [_table_row(["flag", *(f"`{name}`" for name in PRESETS), "meaning"]),
             _table_row(["---"] * (len(PRESETS) + 2))]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS
                   and a.option_strings and a.option_strings[0].startswith("--")
                   and not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        name, _, about = (group.title or "").partition(": ")
        lines.append(_table_row([f"**{name}**", *[""] * len(PRESETS),
                                 _table_text(about or group.description or "")]))
        for action in actions:
            help_text = action.help or ""
            field = fields.get(action.dest)
            if field is not None and help_text.startswith(field.metadata["help"]):
                help_text = field.metadata["help"]
            if action.choices and not all(str(c) in help_text for c in action.choices):
                help_text += ": " + ", ".join(f"`{c}`" for c in action.choices)
            if action.dest in owners:
                section = owners[action.dest]
                values = [_table_cell(getattr(getattr(c, section) if section else c,
                                              action.dest)) for c in configs]
            else:
                values = ["off" if action.nargs == 0 else ""] * len(configs)
            flags = ", ".join(f"`{option}`" for option in action.option_strings)
            lines.append(_table_row([flags, *values, _table_text(help_text)]))
    return "\n".join(lines) + "\n"
