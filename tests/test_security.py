"""Security audits of the shipped configuration and of the code that request data reaches."""

import ast
import re
from pathlib import Path

import pytest

from edge_router.torchserve import Ports, instance, render_config

ROOT = Path(__file__).resolve().parent.parent
# every module a request's bytes or parameters pass through (router, handlers, the torch-free core)
REQUEST_PATH = [
    *(ROOT / "handlers").glob("*.py"),
    *(ROOT / "core").glob("*.py"),
    ROOT / "edge_router" / "app.py",
    ROOT / "edge_router" / "decisions.py",
    ROOT / "edge_router" / "discovery.py",
    ROOT / "edge_router" / "metrics.py",
    ROOT / "cloud_kserve" / "predictor.py",
]


def properties(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


@pytest.mark.parametrize("source", ["shipped", "edge", "cloud"])
def test_configuration_is_secure_by_default(source, tmp_path):
    if source == "shipped":
        text = (ROOT / "config.properties").read_text()
    else:
        text = render_config(instance(source, run_dir=tmp_path, ports=Ports(1, 2, 3, 4, 5)), tmp_path)
    p = properties(text)
    assert p["disable_token_authorization"] == "false"
    for key in ("inference_address", "management_address", "metrics_address"):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", p[key]), (key, p[key])
    assert int(p["max_request_size"]) <= 16 * 2**20 and int(p["max_response_size"]) <= 16 * 2**20
    # registration: the allowed_urls patterns must match no URL at all (model store only)
    patterns = [re.compile(x, re.IGNORECASE) for x in p["allowed_urls"].split(",")]
    for url in (
        "https://example.com/x.mar",
        "http://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
        "file:///work/model_store/edge_pristine.mar",
        "s3://bucket/x.mar",
        "edge_pristine.mar",
    ):
        assert not any(pt.fullmatch(url) for pt in patterns), url
    assert p.get("enable_model_api") == "true"  # needed for registration, hence the line above
    assert p.get("metrics_mode") == "prometheus"


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def name_of(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return f"{name_of(func.value)}.{func.attr}"
    return ""


@pytest.mark.parametrize("path", REQUEST_PATH, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pickle_eval_or_shell_on_the_request_path(path):
    tree = ast.parse(path.read_text())
    imported = {
        a.name.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module or "")])
    }
    assert not imported & {"pickle", "marshal", "shelve", "dill", "cloudpickle", "subprocess", "torch"}, (
        imported
    )
    for call in calls(tree):
        name = name_of(call.func)
        assert name not in ("eval", "exec", "os.system", "os.popen", "np.load", "numpy.load"), name
        assert not any(k.arg == "allow_pickle" for k in call.keywords), name


def test_every_subprocess_and_torch_load_in_the_repo_is_safe():
    for path in ROOT.rglob("*.py"):
        if any(part.startswith(".venv") for part in path.parts) or "tests" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for call in calls(tree):
            name = name_of(call.func)
            if name.startswith("subprocess."):
                assert not any(k.arg == "shell" for k in call.keywords), f"{path}: shell=True"
            if name == "torch.load":
                kw = {k.arg: k.value for k in call.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value, path
