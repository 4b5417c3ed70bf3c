"""The documentation names only commands, make targets and files that exist.

For README.md, SECURITY.md, CONTRIBUTING.md and every docs/*.md page (not the result files under
docs/results/): every `python -m <module>` must name an importable module (found by
`importlib.util.find_spec`, which imports parent packages only, never the module itself), every
`make <target>` in inline code or a code block must be a target of the Makefile, and every
relative markdown link must point at a file or folder of the repository. README.md stays a page a
newcomer reads in ten minutes: at most 250 lines, and it links every docs page.

Fast: reads files, starts nothing.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250
PAGES = sorted(
    [ROOT / "README.md", ROOT / "SECURITY.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")],
    key=str,
)

PYTHON_M = re.compile(r"python3?\s+-m\s+([A-Za-z_][\w.]*)")
FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
# `make` as a command: at the start of a line or of an inline span, or after a shell separator,
# optionally behind VAR=value assignments (`DEMO_SECURITY=tls make demo`)
MAKE = re.compile(r"(?:^|[;&|(]\s*|&&\s*)(?:[A-Z_][A-Z0-9_]*=\S*\s+)*make\s+([A-Za-z0-9][\w.-]*)", re.M)
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
MAKE_TARGET = re.compile(r"^([A-Za-z0-9][\w.-]*(?:\s+[A-Za-z0-9][\w.-]*)*)\s*:(?!=)", re.M)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def without_code(text: str) -> str:
    """The text with fenced code blocks blanked (links inside code are not links)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def code_spans(text: str) -> list[str]:
    """Every fenced code block's body and every inline code span."""
    blocks = [m.group(2) for m in FENCE.finditer(text)]
    return blocks + INLINE.findall(without_code(text))


def makefile_targets() -> set[str]:
    targets: set[str] = set()
    for names in MAKE_TARGET.findall((ROOT / "Makefile").read_text()):
        targets.update(names.split())
    return targets


def page_id(path: Path) -> str:
    return rel(path)


def test_pages_found():
    names = {rel(p) for p in PAGES}
    assert {"README.md", "SECURITY.md", "CONTRIBUTING.md"} <= names, f"missing top-level pages: {names}"
    assert any(n.startswith("docs/") for n in names), "no docs/*.md page found"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_python_m_modules_exist(page: Path):
    missing = []
    for module in sorted(set(PYTHON_M.findall(page.read_text()))):
        module = module.rstrip(".")
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(module)
    assert not missing, f"{rel(page)} names `python -m` modules that do not exist: {', '.join(missing)}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_make_targets_exist(page: Path):
    targets = makefile_targets()
    named = {t for span in code_spans(page.read_text()) for t in MAKE.findall(span)}
    missing = sorted(named - targets)
    assert not missing, f"{rel(page)} names make targets the Makefile does not define: {', '.join(missing)}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page: Path):
    broken = []
    for target in LINK.findall(without_code(page.read_text())):
        if target.startswith(("#", "http://", "https://", "mailto:")):
            continue
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{rel(page)} links to files that do not exist: {', '.join(broken)}"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, more than {README_MAX_LINES}"


def test_readme_links_every_docs_page():
    text = without_code((ROOT / "README.md").read_text())
    linked = {t.split("#", 1)[0] for t in LINK.findall(text)}
    missing = sorted(
        rel(p) for p in (ROOT / "docs").glob("*.md") if rel(p) not in linked and f"./{rel(p)}" not in linked
    )
    assert not missing, f"README.md does not link these docs pages: {', '.join(missing)}"


def test_the_checks_catch_what_they_should():
    """The patterns themselves: a missing module, target and link are found; prose is not a target."""
    sample = (
        "Run `make test` or `DEMO_SECURITY=tls make demo`, then `python -m no_such_module.sub`.\n"
        "We make it small; make sure of it.\n"
        "```sh\nmake kserve && make no-such-target   # comment: make them\n```\n"
        "[a](docs/nowhere.md) [b](https://example.org) [c](#anchor)\n"
    )
    named = {t for span in code_spans(sample) for t in MAKE.findall(span)}
    assert named == {"test", "demo", "kserve", "no-such-target"}
    assert PYTHON_M.findall(sample) == ["no_such_module.sub"]
    assert LINK.findall(without_code(sample)) == ["docs/nowhere.md", "https://example.org", "#anchor"]
    assert {"test", "demo", "kserve", "mutation", "reproduce"} <= makefile_targets()
