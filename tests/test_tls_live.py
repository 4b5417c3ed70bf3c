"""Every hop that leaves the box, encrypted and authenticated, live: a cloud TorchServe on HTTPS with
a certificate from a throwaway CA, the router on HTTPS with device keys (`LiveSystem(security=)`),
and routers started beside it with a wrong CA, a plain-HTTP cloud, an expired certificate, or
mutual TLS. Real processes on loopback ports of their own (18400-18499)."""

import datetime as dt
import http.server
import json
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from benchmarks.lib.live import ROOT, LiveSystem
from benchmarks.lib.live_parts import router_base_argv, wait_until_ready
from core.imaging import encode_image
from edge_router import pki
from edge_router.tls import verified_session
from edge_router.torchserve import Ports
from tests.conftest import wait_for
from tests.test_serving import images

pytestmark = pytest.mark.integration
PORTS = {"edge": Ports(18480, 18481, 18482, 17480, 17481), "cloud": Ports(18490, 18491, 18492, 17490, 17491)}
ROUTER_PORT = 18400
EXPERTS = ("pristine", "gaussian_blur", "gaussian_noise")


@pytest.fixture(scope="module")
def system(model_store, tmp_path_factory):
    live = LiveSystem(
        model_store,
        tmp_path_factory.mktemp("run"),
        # the types test_serving.images draws; a frame the tiny classifier calls motion-blurred is
        # answered by its fallback (Gaussian blur), so no 503 either
        edge_models=[f"edge_{e}" for e in EXPERTS],
        cloud_models=[f"cloud_{e}" for e in EXPERTS],
        ports=PORTS,
        router_port=ROUTER_PORT,
        router_options=["--deadline-ms", "10000", "--refresh-s", "0.5"],
        security="tls",
    )
    with live:
        yield live


def classify(url: str, **options) -> requests.Response:
    return requests.post(
        f"{url}/v1/classify",
        data=encode_image(images(1)[0], "png"),
        params={"threshold": 1.0, "expert": "pristine"},  # p_tar 1: the answer comes from the cloud
        timeout=60,
        **options,
    )


@pytest.fixture
def router(system, tmp_path):
    """Starts routers beside the system's, on the same edge, with the cloud flags a test gives."""
    started = []

    def start(port: int, *flags: str, scheme: str = "http", cert: tuple | None = None) -> str:
        argv = router_base_argv("127.0.0.1", port, system.run_dir, system.store, "WARNING")
        edge = system.insts["edge"]
        argv += ["--edge-url", edge.inference_url, "--edge-management-url", edge.management_url, *flags]
        argv += ["--drain-s", "2"]  # a refused TLS client's connection must not hold the teardown
        log = (tmp_path / f"router{port}.log").open("wb")
        proc = subprocess.Popen(argv, cwd=ROOT, env=system.env, stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        url = f"{scheme}://127.0.0.1:{port}"
        if cert is None:
            wait_until_ready(f"{url}/healthz", proc=proc, timeout=60, verify=system.secured.ca)
        else:  # mutual TLS: the probe is a device with a certificate
            assert wait_for(lambda: healthy(url, verify=system.secured.ca, cert=cert), timeout=60), url
        return url

    yield start
    for proc in started:
        proc.terminate()  # drains: up to --drain-s (30 s) for connections still open
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def healthy(url: str, **options) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=2, **options).status_code == 200
    except requests.RequestException:
        return False


def cloud_spec(system, scheme: str = "https", ca: str | None = None) -> str:
    cloud = system.insts["cloud"]
    urls = [u.replace("https://", f"{scheme}://") for u in (cloud.inference_url, cloud.management_url)]
    return f"torchserve={urls[0]},{urls[1]},{cloud.key_file}" + (f",ca={ca}" if ca else "")


def degraded_reason(url: str, **options) -> str:
    r = classify(url, **options)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["degraded"] and answer["exit"] < 3, answer  # an edge branch answered, marked
    return answer["degraded_reason"]


def test_offloads_over_verified_https_succeed(system):
    clouds = requests.get(f"{system.url}/v1/experts", timeout=10, **system.client_options()).json()["clouds"]
    assert [c["url"][:8] for c in clouds.values()] == ["https://"]
    for _ in range(3):
        r = classify(system.url, **system.client_options())
        assert r.status_code == 200, r.text
        assert r.json()["offloaded"] and not r.json()["degraded"], r.json().get("degraded_reason")


def test_a_device_without_a_key_or_with_a_wrong_or_revoked_one_gets_401(system):
    options = system.client_options()
    no_key = classify(system.url, verify=options["verify"])
    assert no_key.status_code == 401 and no_key.headers["WWW-Authenticate"].startswith("Bearer")
    assert "device key is required" in no_key.json()["error"] and "\n" not in no_key.text
    wrong = classify(system.url, verify=options["verify"], headers={"Authorization": "Bearer device-1.nope"})
    assert wrong.status_code == 401 and "wrong device key" in wrong.json()["error"]
    assert requests.get(f"{system.url}/healthz", verify=options["verify"], timeout=10).status_code == 200

    keys = system.secured.file("devices.json")
    cli = [sys.executable, "-m", "edge_router.devices"]
    made = subprocess.run(
        [*cli, "add", "camera-2", "--keys", keys], capture_output=True, text=True, check=True
    )
    key = made.stdout.strip()
    mine = {"verify": options["verify"], "headers": {"Authorization": f"Bearer {key}"}}
    assert wait_for(
        lambda: classify(system.url, **mine).status_code == 200, timeout=10
    )  # reloaded, no restart
    metrics = requests.get(f"{system.url}/metrics", timeout=10, **mine).text
    assert 'key_id="camera-2"' in metrics and key.split(".", 1)[1] not in metrics
    subprocess.run([*cli, "revoke", "camera-2", "--keys", keys], capture_output=True, check=True)
    assert wait_for(lambda: classify(system.url, **mine).status_code == 401, timeout=10)
    assert classify(system.url, **options).status_code == 200  # the others go on


def test_a_wrong_ca_fails_closed_with_the_reason(system, router, tmp_path):
    other = pki.make_ca(tmp_path / "other")
    url = router(18410, "--cloud", cloud_spec(system), "--cloud-ca", str(other.cert))
    assert "certificate verify failed" in degraded_reason(url)


def test_a_plain_http_cloud_when_tls_is_required_fails_closed(system, router):
    url = router(18411, "--cloud", cloud_spec(system, "http", ca=system.secured.ca))
    assert "plain HTTP" in degraded_reason(url)


def test_an_expired_certificate_fails_closed(system, router, tmp_path):
    ca = Path(system.secured.ca).parent
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    expired = pki.issue(ca, "expired", tmp_path, valid_from=long_ago, days=1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(expired.cert, expired.key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        url = router(18412, "--cloud", f"oip=https://127.0.0.1:{port}", "--cloud-ca", system.secured.ca)
        assert "certificate has expired" in degraded_reason(url)
    finally:
        server.shutdown()


def test_mutual_tls_refuses_a_client_without_a_certificate(system, router):
    s = system.secured
    device = (s.file("device.pem"), s.file("device.key"))
    url = router(
        18413,
        "--cloud",
        cloud_spec(system, ca=s.ca),
        "--tls-cert",
        s.file("router.pem"),
        "--tls-key",
        s.file("router.key"),
        "--tls-client-ca",
        s.ca,
        scheme="https",
        cert=device,
    )
    # TLS 1.3: the server checks the client's certificate after the client's half of the handshake,
    # so the refusal arrives as an alert or a closed connection (SSLError is a ConnectionError)
    for _ in range(3):
        with pytest.raises(requests.exceptions.ConnectionError):
            classify(url, verify=s.ca)
    r = classify(url, verify=s.ca, cert=device)
    assert r.status_code == 200 and r.json()["offloaded"] and not r.json()["degraded"], r.text
    assert json.loads(r.text)["expert"] == "pristine"


def test_the_front_door_holds_over_tls_slowloris_included(system):
    """The connection-abuse scenarios in miniature against the HTTPS router with device keys: every
    abuser handshakes first (the slowloris trickles its headers inside TLS), the controls are
    devices with their key, and the router closes the abusers and answers the controls."""
    from benchmarks import abuse
    from benchmarks.reliability.connection_abuse import control_image, device_of

    t = abuse.Target(
        "127.0.0.1", ROUTER_PORT, system.router.pid, control_image(), max_in_flight=16, **device_of(system)
    )
    names = ["slowloris", "idle_keepalive", "partial_uploads", "overload_burst"]
    results = {
        r["scenario"]: r
        for r in abuse.run_all(t, seconds=7, scale=0.05, names=names, progress=lambda s: None)
    }
    for name, r in results.items():
        assert r["without_answer"] == 0 and r["control"]["answered"] == r["control"]["sent"], (name, r)
        assert r["control_after"]["status"] == 200, (name, r["control_after"])
    slow = results["slowloris"]
    assert slow["connected"] == slow["sockets"] and slow["dropped_by_server"] == slow["sockets"], slow
    assert set(results["overload_burst"]["status_counts"]) <= {"200", "503"}


def test_hostile_inputs_over_tls_get_4xx_never_5xx(system):
    """The reliability fuzz's router inputs (random and mutated images, lying headers, odd content
    types and queries), sent as a device over TLS."""
    import random

    from benchmarks.reliability.fuzz import fuzz_router_case

    rng = random.Random(5)
    seeds = [encode_image(im, rng.choice(["png", "jpeg"])) for im in images(6)]
    options = system.client_options()
    statuses = {}
    with verified_session(options["verify"], options.get("cert"), options["headers"]) as s:
        for _ in range(150):
            body, params, headers = fuzz_router_case(rng, seeds)
            r = s.post(f"{system.url}/v1/classify", data=body, params=params, headers=headers, timeout=30)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    assert all(code < 500 for code in statuses), statuses
    assert statuses.get(200, 0) > 0 and sum(v for k, v in statuses.items() if 400 <= k < 500) > 50, statuses


def test_offloads_to_kserve_over_verified_https(system, router, tmp_path):
    """The KServe predictor serves HTTPS itself (`python -m cloud_kserve --tls-cert --tls-key`);
    a router with the run's CA offloads to it, verified."""
    from benchmarks.lib.live_parts import KSERVE_PYTHON, kserve_argv

    s = system.secured
    log = (tmp_path / "kserve.log").open("wb")
    argv = [
        *kserve_argv(system.store, "127.0.0.1", "18495"),
        "--tls-cert",
        s.file("cloud.pem"),
        "--tls-key",
        s.file("cloud.key"),
    ]
    assert argv[0] == str(KSERVE_PYTHON)
    proc = subprocess.Popen(argv, cwd=ROOT, env=system.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready("https://127.0.0.1:18495/v2/health/ready", proc=proc, timeout=90, verify=s.ca)
        url = router(18414, "--cloud", "oip=https://127.0.0.1:18495", "--cloud-ca", s.ca)
        r = classify(url)
        assert r.status_code == 200 and r.json()["offloaded"] and not r.json()["degraded"], r.text
        with pytest.raises(requests.exceptions.SSLError):  # and nobody reaches it without the CA
            requests.get("https://127.0.0.1:18495/v2/health/ready", timeout=10, verify=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
