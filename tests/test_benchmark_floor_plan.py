"""The floor plan of `benchmarks/` (issue 29): shared code in `benchmarks.lib`, one subpackage per
experiment, and `python -m benchmarks` listing them.

- the top level holds at most 8 files besides its subpackages, and every folder is a package;
- every experiment keeps its command (`python -m benchmarks.<name>`, as the result files record
  it): found by `importlib.util.find_spec`, with a `__main__`, `get_args_parser` and `main`, and a
  parser that names the command;
- `python -m benchmarks` prints one line per experiment (run in process);
- every `python -m benchmarks...` that the code (subprocess command lines, docstrings), the
  scripts and the result files name is a module that exists, and so is the module the readiness
  probe imports in another process;
- no file under `benchmarks/` is longer than 450 lines.

Fast: imports the experiments, starts nothing (one short subprocess checks the minimal peer's
imports).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import __main__ as listing
from core.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
MAX_TOP_LEVEL_FILES = 8
MAX_LINES = 450
# the commands the result files in docs/results (and docs/benchmarks.md) record: they stay runnable
COMMANDS = (
    "abuse",
    "adaptive",
    "edge_hop",
    "footprint",
    "frontdoor",
    "latency",
    "load",
    "netem",
    "offload_tls",
    "onnx_vs_eager",
    "overhead",
    "peers",
    "reliability",
    "scaleout",
    "spectrum_cost",
    "stream",
)
LIB = ("live", "live_parts", "live_security", "loadgen", "netem", "target", "synthetic", "peers_minimal")
PYTHON_M = re.compile(r"""python3?\s+-m\s+(benchmarks[\w.]*)|["']-m["'],\s*["'](benchmarks[\w.]*)["']""")


def exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def sources() -> list[Path]:
    return sorted(p for p in BENCH.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def test_top_level_holds_few_files_and_only_packages():
    entries = [p for p in BENCH.iterdir() if p.name != "__pycache__"]
    files = sorted(p.name for p in entries if not p.is_dir())
    assert {"__init__.py", "__main__.py"} <= set(files)
    assert len(files) <= MAX_TOP_LEVEL_FILES, f"benchmarks/ holds {len(files)} files: {files}"
    loose = sorted(p.name for p in entries if p.is_dir() and not (p / "__init__.py").is_file())
    assert not loose, f"folders of benchmarks/ that are not packages: {loose}"


def test_shared_code_is_in_lib():
    missing = [m for m in LIB if not exists(f"benchmarks.lib.{m}")]
    assert not missing, missing
    assert "lib" not in listing.experiments()


def test_every_recorded_command_is_an_experiment():
    assert set(COMMANDS) <= set(listing.experiments())


@pytest.mark.parametrize("name", sorted(listing.experiments()))
def test_experiment_has_its_command(name: str):
    module = f"benchmarks.{name}"
    assert exists(module) and exists(f"{module}.__main__"), module
    mod = importlib.import_module(module)
    assert callable(mod.main) and callable(mod.get_args_parser), module
    parser = mod.get_args_parser()
    assert parser.prog == f"python -m {module}"
    with pytest.raises(SystemExit) as done:
        parser.parse_args(["--help"])
    assert done.value.code == 0


def test_listing_prints_a_line_per_experiment(capsys):
    assert run_cli(listing.main, listing.get_args_parser, []) == 0
    out = capsys.readouterr().out
    rows = listing.experiments()
    assert list(rows) == sorted(rows)
    for name, summary in rows.items():
        assert summary, f"benchmarks/{name}/__init__.py has no docstring"
        lines = [line for line in out.splitlines() if line.split()[:1] == [name]]
        assert len(lines) == 1 and lines[0].endswith(summary), (name, lines)
    assert "python -m benchmarks.<name> --help" in out


def test_the_listing_summary_is_the_docstrings_first_paragraph():
    assert listing.summary("One line\n  and its end.\n\nMore.") == "One line and its end."
    assert listing.summary("") == ""


def test_every_named_benchmarks_module_exists():
    texts = [p for p in sources() if p.suffix == ".py"]
    texts += [*(ROOT / "scripts").glob("*.sh"), ROOT / "Makefile"]
    texts += [p for p in (ROOT / "docs" / "results").rglob("*") if p.suffix in (".json", ".md")]
    missing = set()
    for path in texts:
        for groups in PYTHON_M.findall(path.read_text(errors="replace")):
            module = next(g for g in groups if g).rstrip(".")
            if not exists(module):
                missing.add(f"{path.relative_to(ROOT)}: {module}")
    assert not missing, sorted(missing)


def test_the_readiness_probe_imports_what_exists():
    from benchmarks.lib.live_parts import READY_PROBE

    named = re.findall(r"from (benchmarks[\w.]*) import (\w+)", READY_PROBE)
    assert named, READY_PROBE
    for module, name in named:
        assert hasattr(importlib.import_module(module), name), (module, name)


def test_the_minimal_peer_loads_no_torch():
    """`benchmarks.footprint` measures the minimal peer's memory: its process must not load torch."""
    code = "import sys, benchmarks.lib.peers_minimal; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_no_file_is_longer_than_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in sources() if (n := p.read_bytes().count(b"\n")) > MAX_LINES}
    assert not long, long
