"""The package metadata (setup.cfg) against the pinned requirement files: every pin the same, every
requirement in some role's extra, the edge's role free of the training stack, the console scripts
real, the tests not packaged, the serving files installed."""

import configparser
import importlib
import re
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent
TRAINING_STACK = {"torch", "torchvision", "onnx", "onnxscript", "scikit-image", "captum"}


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.strip().lower()] = version.strip()
    return out


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def requirement_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line:
            name, _, version = line.partition("==")
            out[name.strip().lower()] = version.strip()
    return out


def roles() -> dict[str, dict[str, str]]:
    cfg = setup_cfg()
    out = {"base": requirement_lines(cfg["options"]["install_requires"])}
    for extra, text in cfg["options.extras_require"].items():
        out[extra] = requirement_lines(text)
    return out


def test_every_pin_is_the_requirement_files_pin():
    pinned = {
        **pins(ROOT / "requirements.txt"),
        **pins(ROOT / "requirements-test.txt"),
        **pins(ROOT / "requirements-kserve.txt"),
    }
    for role, reqs in roles().items():
        for name, version in reqs.items():
            assert pinned.get(name) == version, (
                f"setup.cfg {role}: {name}=={version}, files pin {pinned.get(name)}"
            )


def test_every_requirement_is_in_some_role():
    declared = set().union(*(r.keys() for r in roles().values()))
    for path in ("requirements.txt", "requirements-test.txt", "requirements-kserve.txt"):
        missing = set(pins(ROOT / path)) - declared
        assert not missing, f"{path}: {sorted(missing)} in no extra of setup.cfg"


def test_the_edge_role_carries_no_training_stack():
    r = roles()
    edge = set(r["base"]) | set(r["edge"])
    assert not edge & TRAINING_STACK, edge & TRAINING_STACK
    assert {"torchserve", "starlette", "uvicorn", "aiohttp", "cryptography"} <= edge
    assert {"torch", "onnx"} <= set(r["train"]) and "kserve" in r["kserve"]


def test_console_scripts_name_real_commands():
    scripts = setup_cfg()["options.entry_points"]["console_scripts"]
    found = re.findall(r"^\s*([\w-]+)\s*=\s*([\w.]+):(\w+)\s*$", scripts, re.M)
    assert {name for name, _, _ in found} >= {
        "edge-router",
        "edge-torchserve",
        "edge-register",
        "cloud-kserve",
    }
    for name, module, func in found:
        assert callable(getattr(importlib.import_module(module), func)), name
    wrapped = re.findall(r'_run\("([\w.]+)"\)', (ROOT / "core" / "entry_points.py").read_text())
    for module in wrapped:
        assert importlib.util.find_spec(module) is not None, module


def test_packages_exclude_the_tests_and_include_every_part():
    cfg = setup_cfg()
    exclude = [line.strip() for line in cfg["options.packages.find"]["exclude"].splitlines() if line.strip()]
    packages = set(find_packages(str(ROOT), exclude=exclude))
    assert not {p for p in packages if p.split(".")[0] in ("tests", "mutants", "run")}, packages
    assert {"core", "edge_router", "handlers", "cloud_kserve", "export", "training", "benchmarks"} <= packages
    data = cfg["options.data_files"]["share/distortion-aware-early-exit"]
    for name in re.findall(r"[\w.]+\.(?:properties|xml)", data):
        assert (ROOT / name).is_file(), name
    stub = cfg["options.package_data"]["handlers"].strip()
    assert (ROOT / "handlers" / stub).is_file(), stub
