"""Run a CLI's `main(args)` so that user errors end with one line and a non-zero exit.

Every command of the project goes through `run_cli`: a missing dataset, an unknown distortion type
or a broken checkpoint prints `error: <reason>` on stderr and exits 2 instead of a traceback.
Programming errors still raise, so bugs stay visible.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from core.errors import UserInputError


def run_cli(
    main: Callable[[object], object], parser_factory: Callable[[], object], argv: Sequence[str] | None = None
) -> int:
    """Parse `argv` with the parser from `parser_factory` and run `main`; returns the exit code."""
    parser = parser_factory()
    args = parser.parse_args(argv)
    try:
        main(args)
    except UserInputError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # missing, unreadable or unwritable files, full disk
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or _one_line(str(exc))}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(message: str) -> str:
    """The reason itself, on one line.

    An error raised inside a DataLoader worker comes back with the worker's traceback in its
    message; its last line is the original `module.ErrorType: reason`.
    """
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return message.strip()
    last = lines[-1].strip()
    head, sep, reason = last.partition(": ")
    return reason if sep and head.rsplit(".", 1)[-1].endswith("Error") else last


def command_line() -> str:
    """The command that is running, as a user would type it again (recorded in every result)."""
    module = sys.modules["__main__"].__spec__
    if module is None:
        head = f"python {sys.argv[0]}"
    else:
        head = f"python -m {module.name.removesuffix('.__main__')}"
    return " ".join([head, *sys.argv[1:]])


def progress(iterable: Iterable, *, desc: str | None = None, quiet: bool = False, **kwargs) -> Iterable:
    """A tqdm progress bar on stderr when stderr is a terminal; silent in logs or with `quiet`."""
    from tqdm import tqdm  # imported lazily: the serving side never needs it

    return tqdm(
        iterable,
        desc=desc,
        disable=True if quiet else None,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
        **kwargs,
    )


def write_json(path: str | Path, data) -> None:
    """A result file: indented JSON with a final newline, its folder created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_result(path: str | Path | None, data) -> None:
    """A CLI's `--json` option: write the result file when a path is given, and say where."""
    if path:
        write_json(path, data)
        print(f"wrote {path}", file=sys.stderr)


def parse_wires(texts: list[str], flag: str = "--wires") -> list:
    """Distinct `core.imaging.ImageWire`s from the command line, or a UserInputError naming `flag`."""
    try:
        from core.imaging import ImageWire  # numpy + OpenCV: only for the CLIs that take wires

        wires = [ImageWire.parse(t) for t in texts]
    except ValueError as exc:
        raise UserInputError(f"{flag}: {exc}") from None
    if len({str(w) for w in wires}) != len(wires):
        raise UserInputError(f"{flag}: a wire is named twice")
    return wires
