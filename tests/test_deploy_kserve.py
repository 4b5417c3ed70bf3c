"""deploy/kserve: the InferenceService and the Containerfile are what KServe and a builder need.

Not applied to a cluster here: the test checks the fields KServe requires of a custom predictor,
that the container's command is one `python -m cloud_kserve` accepts, and that everything the
Containerfile copies exists in the repository.
"""

import shlex
from pathlib import Path

import yaml

from cloud_kserve.__main__ import get_args_parser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kserve"


def test_inferenceservice_has_what_kserve_requires():
    docs = list(yaml.safe_load_all((DEPLOY / "inferenceservice.yaml").read_text()))
    assert len(docs) == 1
    isvc = docs[0]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    name = isvc["metadata"]["name"]
    assert name and name == name.lower() and len(name) <= 45  # a DNS label with room for suffixes
    predictor = isvc["spec"]["predictor"]
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] in ("concurrency", "rps", "cpu", "memory")
    assert isinstance(predictor["scaleTarget"], int) and predictor["scaleTarget"] > 0
    assert predictor["containerConcurrency"] >= predictor["scaleTarget"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container" and container["image"]
    (port,) = container["ports"]  # KServe routes to one port
    args = get_args_parser().parse_args(container["args"])
    assert port["containerPort"] == args.port and args.host == "0.0.0.0"
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": args.port}
    assert container["securityContext"]["runAsNonRoot"] is True


def test_containerfile_copies_what_exists_and_runs_the_predictor():
    lines = [
        ln.strip()
        for ln in (DEPLOY / "Containerfile").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert lines[0].startswith("FROM python:3.11")
    copies = [shlex.split(ln)[1:] for ln in lines if ln.startswith("COPY")]
    for *sources, _dest in copies:
        for src in sources:
            assert (ROOT / src).exists(), src
    assert any("requirements-kserve.txt" in ln for ln in lines if ln.startswith("RUN pip install"))
    entry = next(ln for ln in lines if ln.startswith("ENTRYPOINT"))
    assert '"-m", "cloud_kserve"' in entry
    cmd = yaml.safe_load(next(ln for ln in lines if ln.startswith("CMD"))[len("CMD") :])
    args = get_args_parser().parse_args(cmd)
    assert args.exported == "/models" and any(c[-1] == "/models/" for c in copies)
    assert sorted((ROOT / "models" / "onnx").glob("cloud_*.json")), "no shipped cloud segments to copy"
    assert any(ln.startswith("USER") and "root" not in ln and not ln.endswith(" 0") for ln in lines)
