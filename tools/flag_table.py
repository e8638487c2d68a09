"""The table of every `mmentail-train` flag in docs/training.md, rendered from the flags.

    python tools/flag_table.py           # rewrite the table between the markers
    python tools/flag_table.py --check   # exit 1 when the table is not what the flags give

The table lies between `<!-- flag-table:begin -->` and `<!-- flag-table:end -->`
and is :func:`mmentail.config.flags.flag_table` of `mmentail-train`'s parser
(with the flags every command has): a flag, the value each preset gives it and
its help. A new configuration field is a new flag; run this to document it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from mmentail.cli import add_common_flags
from mmentail.config.flags import flag_table
from mmentail.io_utils import atomic_write_text
from mmentail.train import build_parser

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "training.md"
BEGIN, END = "<!-- flag-table:begin -->", "<!-- flag-table:end -->"


def rendered_table() -> str:
    """The flag table of `mmentail-train` as the flags are now."""
    parser = build_parser()
    add_common_flags(parser)
    return flag_table(parser)


def documented_table(guide: Path = GUIDE) -> str:
    """The table between the markers of `guide`."""
    text = guide.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{guide}: no {BEGIN} ... {END} markers around the flag table")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def write_table(guide: Path = GUIDE) -> None:
    """Replaces the table between the markers of `guide` with :func:`rendered_table`."""
    documented_table(guide)  # the markers are there
    text = guide.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    atomic_write_text(guide, f"{head}{BEGIN}\n{rendered_table()}{END}{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare; exit 1 when the documented table is out of date")
    args = parser.parse_args(argv)
    if args.check:
        if documented_table() != rendered_table():
            print(f"{GUIDE}: the flag table is out of date; run python tools/flag_table.py",
                  file=sys.stderr)
            return 1
        return 0
    write_table()
    print(f"wrote the flag table of {GUIDE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
