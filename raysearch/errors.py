"""One kind of error for bad input, and the entry-point wrapper that prints it as one line.

Every component raises `UserError` for things a user can fix (a malformed file, an unknown field,
a budget larger than the data). Entry points wrap their `main` in `cli_main`, which prints
`error: <message>` on one line and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Bad input that the user can fix; its message names the field or file and what was expected."""


def fail(message: str) -> NoReturn:
    raise UserError(message)


def cli_main(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap an entry point so a `UserError` becomes one line on stderr and exit status 2."""

    def run(argv: list[str] | None = None) -> int:
        try:
            return int(main(argv) or 0)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return run
