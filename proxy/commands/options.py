"""Flags every review command spells the same way."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def add_format_argument(
    parser: argparse.ArgumentParser, choices: Sequence[str], default: str | None, help: str = ""
) -> None:
    """``--format {choices}``, and ``--json`` as its alias for ``--format json``."""
    parser.add_argument(
        "--format",
        choices=tuple(choices),
        default=default,
        help=help or f"output format (default: {default})",
    )
    if "json" in choices:
        parser.add_argument(
            "--json",
            dest="format",
            action="store_const",
            const="json",
            default=argparse.SUPPRESS,
            help="the same as --format json",
        )
