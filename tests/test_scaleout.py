"""The cloud tier scaled out: two KServe replicas behind the router, the edge TorchServe, real HTTP.

Offloads (threshold 1.0) must give the reference pipeline's answers, spread over both replicas; a
replica killed mid-stream must cost nothing: every request answered, none degraded, the other
replica finishing the offloads (the router retries a failed offload on the next replica).
"""

import re
import threading
import time
import urllib.request

import pytest
import requests

from benchmarks.lib.live import LiveSystem
from benchmarks.lib.loadgen import LoadClient
from core.imaging import encode_image
from export.pipeline import Pipeline
from tests.test_serving import MODELS, images

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(model_store, tmp_path_factory):
    live = LiveSystem(
        model_store,
        tmp_path_factory.mktemp("run"),
        edge_models=MODELS["edge"],
        cloud_engine="kserve",
        cloud_replicas=2,
        router_options=["--deadline-ms", "10000", "--refresh-s", "0.5"],
    )
    with live:
        yield live


def predictions_served(url: str) -> float:
    """Inference requests a KServe replica answered, from its Prometheus text."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    counts = re.findall(r"^request_predict_seconds_count\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return sum(float(c) for c in counts)


def test_offloads_over_two_replicas_equal_the_reference(system, model_store):
    experts = requests.get(f"{system.url}/v1/experts", timeout=10).json()
    assert set(experts["experts"]) == {"pristine", "gaussian_blur", "gaussian_noise", "motion_blur"}
    assert all(len(e["clouds"]) == 2 for e in experts["experts"].values())
    reference = Pipeline(model_store)
    ims = images(12)
    for im, ref in zip(ims, reference.infer(ims, 1.0), strict=True):
        r = requests.post(
            f"{system.url}/v1/classify",
            data=encode_image(im, "png"),
            params={"threshold": 1.0, "compression": "fp16"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["offloaded"] and not got["degraded"], got
        assert (got["expert"], got["exit"], got["class"]) == (ref["expert"], ref["exit"], ref["class"])
    served = [predictions_served(u) for u in system.kserve_urls]
    assert all(n > 0 for n in served), served  # least outstanding, round robin on ties


def test_a_replica_killed_mid_stream_loses_nothing(system):
    bodies = [encode_image(im, "png") for im in images(9)]
    load = LoadClient(system.url, bodies, clients=4, params={"threshold": 1.0}, timeout_s=30)
    killer = threading.Timer(1.5, system.kill_cloud_replica, args=(0,))
    killer.start()
    try:
        summary = load.run(seconds=5.0, max_requests=2000)
    finally:
        killer.cancel()
    answers = [r.answer for r in load.records if r.answer is not None]
    assert summary["lost"] == summary["errors"] == summary["shed"] == 0, summary
    assert len(answers) == summary["requests"] > 20
    assert all(a["offloaded"] and not a["degraded"] for a in answers), [
        a.get("degraded_reason") for a in answers if a["degraded"]
    ][:3]
    time.sleep(1.0)
    clouds = requests.get(f"{system.url}/v1/experts", timeout=10).json()["clouds"]
    assert [c["up"] for c in clouds.values()] == [False, True]
    r = requests.post(f"{system.url}/v1/classify", data=bodies[0], params={"threshold": 1.0}, timeout=30)
    assert r.status_code == 200 and not r.json()["degraded"]
