"""The README's plain-TorchServe block, run exactly as written, against the shipped models.

The block (between the `plain-torchserve` markers in README.md) builds the archives, starts the
edge and cloud instances with the stock `torchserve` command, makes an inference with curl,
starts the router, registers an expert's two halves through the management APIs, checks that the
router picks it up without a restart, removes it and stops everything. The test runs it in a
scratch folder laid out like the repository (links to `models/` and the configuration files), so
the docs cannot drift from what works, and a stray instance is stopped even when the block fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from core.distortions import DISTORTION_CLASSES

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- plain-torchserve:begin -->\s*```sh\n(.*?)```\s*<!-- plain-torchserve:end -->", re.S)
PHOTO = Path("/usr/share/doc/opencv-doc/examples/data/baboon.jpg")


def readme_block() -> str:
    found = BLOCK.findall((ROOT / "docs" / "operating.md").read_text())
    assert len(found) == 1, "docs/operating.md must hold exactly one plain-torchserve block"
    return found[0]


def json_documents(text: str) -> list[dict]:
    """Every JSON object printed in `text` (curl prints bodies back to back, without newlines)."""
    decoder, docs, i = json.JSONDecoder(), [], text.find("{")
    while i != -1:
        try:
            doc, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(doc, dict):
            docs.append(doc)
        i = text.find("{", end)
    return docs


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop_instances(folder: Path, env: dict) -> None:
    for role in ("edge", "cloud"):
        work = folder / "run" / role
        if work.is_dir():
            subprocess.run(
                ["torchserve", "--stop"],
                cwd=work,
                env={**env, "TMPDIR": str(work / "tmp")},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
                check=False,
            )


@pytest.mark.skipif(
    shutil.which("curl") is None or not PHOTO.is_file(),
    reason="needs curl and opencv-doc's sample photo (make deps installs both)",
)
def test_readme_plain_torchserve_block_runs_as_written(tmp_path):
    busy = [port for port in (8000, 8080, 8081, 8090, 8091) if _listening(port)]
    if busy:
        pytest.skip(f"ports {busy} are in use here; the README block uses the default ports")
    for name in ("models", "config.properties", "config.cloud.properties"):
        (tmp_path / name).symlink_to(ROOT / name)
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    script = "set -euo pipefail\n" + readme_block()
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the README block did not finish in 420 s:\n{out[-3000:]}")
    finally:
        _stop_instances(tmp_path, env)
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the router, if the block died before stopping it
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, out[-3000:]

    # every answer the block printed is the real thing, not just an exit status
    docs = json_documents(out)
    classified = [d for d in docs if "distortion" in d and "probabilities" in d]
    assert classified and set(classified[0]["probabilities"]) == set(DISTORTION_CLASSES)  # the shipped four
    answers = [d for d in docs if "exit" in d and "expert" in d]
    assert len(answers) == 2, out[-3000:]
    assert answers[1]["expert"] == "gaussian_blur" and not answers[1]["degraded"]
    assert any("registered" in d.get("status", "") for d in docs)
    experts = [d for d in docs if "experts" in d]
    assert experts and "gaussian_blur" in experts[-1]["experts"]
    assert "Unregistered" in out or "unregistered" in out
    assert "no token: 400" in out and "Token Authorization failed" in out  # TorchServe 0.12's answer
    assert "does not match any allowed URL" in out
    refused = re.search(r"remote archive: (\d+)", out)
    assert refused and 400 <= int(refused.group(1)) < 500, out[-3000:]
