"""Run a CLI's `main(args)` so that user errors end with one line and a non-zero exit.

Every command of the project goes through `run_cli`: a missing dataset, an unknown distortion type
or a broken checkpoint prints `error: <reason>` on stderr and exits 2 instead of a traceback.
Programming errors still raise, so bugs stay visible.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from core.errors import UserInputError


def run_cli(main: Callable[[object], object], parser_factory: Callable[[], object],
            argv: Sequence[str] | None = None) -> int:
    """Parse `argv` with the parser from `parser_factory` and run `main`; returns the exit code."""
    parser = parser_factory()
    args = parser.parse_args(argv)
    try:
        main(args)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def progress(iterable, *, desc: str | None = None, quiet: bool = False, **kwargs):
    """A tqdm progress bar on stderr when stderr is a terminal; silent in logs or with `quiet`."""
    from tqdm import tqdm  # imported lazily: the serving side never needs it

    return tqdm(iterable, desc=desc, disable=True if quiet else None, leave=False,
                file=sys.stderr, dynamic_ncols=True, **kwargs)
