"""docs/architecture.md names only modules, files and commands that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_every_path_named_exists():
    paths = set(re.findall(r"`([\w./-]+\.(?:py|mar|md))`", DOC))
    assert len(paths) > 15
    missing = [p for p in paths if not p.endswith(".mar") and not (ROOT / p).exists()]
    assert not missing, missing


def test_every_command_named_runs_an_existing_module():
    commands = re.findall(r"`python -m ([\w.]+)", DOC)
    assert len(commands) >= 5
    for module in commands:
        parts = module.split(".")
        as_file = ROOT.joinpath(*parts).with_suffix(".py")
        as_package = ROOT.joinpath(*parts) / "__main__.py"
        assert as_file.is_file() or as_package.is_file(), module


def test_every_class_and_function_named_exists_in_its_module():
    named = re.findall(r"`([\w/]+\.py)` \(`(\w+)`", DOC) + re.findall(r"`([\w/]+\.py)`: `(\w+)`", DOC)
    named += re.findall(r"`([\w/]+\.py)` `(\w+)`", DOC)
    assert len(named) >= 4
    for path, name in named:
        text = (ROOT / path).read_text()
        assert re.search(rf"^\s*(class|def|async def) {name}\b", text, re.M), (path, name)
