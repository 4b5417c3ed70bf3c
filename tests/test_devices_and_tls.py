"""Device keys (`edge_router.devices`), the TLS settings (`edge_router.tls`), the certificate helper
(`edge_router.pki`) and the router's security flags, without servers (tests/test_tls_live.py runs
them live)."""

import asyncio
import asyncio.sslproto
import datetime as dt
import json
import ssl

import pytest
from cryptography import x509

from core.errors import UserInputError
from edge_router import __main__ as router_main
from edge_router import devices, pki, tls


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "devices.json"
    key, entry = devices.new_key("cam-1")
    devices.write_file(path, {"keys": {"cam-1": entry}})
    return path, key


def test_the_file_holds_hashes_only_and_the_key_checks_out(keys_file):
    path, key = keys_file
    text = path.read_text()
    assert key.split(".", 1)[1] not in text and devices.digest(key.split(".", 1)[1]) in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert devices.DeviceKeys(path).check(f"Bearer {key}") == "cam-1"


@pytest.mark.parametrize(
    "header, reason",
    [
        (None, "required"),
        ("", "required"),
        ("Basic abc", "must be 'Bearer <key>'"),
        ("Bearer ", "must be 'Bearer <key>'"),
        ("Bearer cam-1", "wrong device key"),  # no secret part
        ("Bearer cam-1.not-the-secret", "wrong device key"),
        ("Bearer other.whatever", "wrong device key"),
        ("Bearer ../x.y", "wrong device key"),
    ],
)
def test_bad_keys_are_refused_with_a_one_line_reason(keys_file, header, reason):
    with pytest.raises(devices.DeviceAuthError, match=reason) as exc:
        devices.DeviceKeys(keys_file[0]).check(header)
    assert "\n" not in str(exc.value) and "not-the-secret" not in str(exc.value)


def test_changes_are_picked_up_without_a_restart(keys_file):
    path, key = keys_file
    now = [0.0]
    store = devices.DeviceKeys(path, clock=lambda: now[0])
    second, entry = devices.new_key("cam-2")
    data = devices.read_file(path)
    data["keys"]["cam-2"] = entry
    data["keys"]["cam-1"]["revoked"] = "2026-12-07T00:00:00+00:00"
    devices.write_file(path, data)
    assert store.check(f"Bearer {key}") == "cam-1"  # checked at most once a second
    now[0] += 1.5
    assert store.check(f"Bearer {second}") == "cam-2"
    with pytest.raises(devices.DeviceAuthError):
        store.check(f"Bearer {key}")
    path.write_text("{torn")  # a half-written file keeps the keys we have
    now[0] += 1.5
    assert store.check(f"Bearer {second}") == "cam-2"


def test_the_commands_add_rotate_revoke_and_list(tmp_path, capsys):
    path = str(tmp_path / "d.json")
    run = lambda *a: devices.main(devices.get_args_parser().parse_args([*a, "--keys", path]))  # noqa: E731
    run("add", "cam-9")
    first = capsys.readouterr().out.strip()
    with pytest.raises(UserInputError, match="exists"):
        run("add", "cam-9")
    run("rotate", "cam-9")
    second = capsys.readouterr().out.strip()
    store = devices.DeviceKeys(path)
    assert first != second and store.check(f"Bearer {second}") == "cam-9"
    with pytest.raises(devices.DeviceAuthError):
        store.check(f"Bearer {first}")
    run("revoke", "cam-9")
    run("list")
    assert "cam-9\trevoked" in capsys.readouterr().out
    with pytest.raises(UserInputError, match="key id"):
        run("add", "bad id!")
    with pytest.raises(UserInputError, match="no key"):
        run("revoke", "nobody")


def test_the_middleware_answers_401_and_lets_healthz_and_good_keys_through(keys_file):
    path, key = keys_file
    seen, calls = [], []

    async def app(scope, receive, send):
        calls.append((scope["path"], scope.get("state", {}).get("device")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = devices.DeviceAuth(app, devices.DeviceKeys(path), on_request=lambda k, r: seen.append((k, r)))

    def call(path_, auth=None):
        sent = []
        headers = [(b"authorization", auth.encode())] if auth else []
        scope = {"type": "http", "method": "GET", "path": path_, "headers": headers}

        async def send(m):
            sent.append(m)

        asyncio.run(guard(scope, None, send))
        return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])

    status, headers, body = call("/v1/experts")
    assert status == 401 and headers[b"www-authenticate"].startswith(b"Bearer")
    assert json.loads(body)["error"].startswith("a device key is required")
    assert call("/v1/experts", "Bearer cam-1.wrong")[0] == 401
    assert call("/healthz")[0] == 200
    assert call("/v1/experts", f"Bearer {key}")[0] == 200
    assert calls == [("/healthz", None), ("/v1/experts", "cam-1")]
    assert seen == [(None, "missing"), (None, "invalid"), ("cam-1", None)]


# -- TLS settings and certificates -------------------------------------------------------------------
def test_flags_go_in_pairs_with_one_line_errors(tmp_path):
    f = tmp_path / "x.pem"
    f.write_text("x")
    assert tls.ServerTls.from_flags(None, None) is None and tls.ClientTls.from_flags(None) is None
    for call, match in [
        (lambda: tls.ServerTls.from_flags(str(f), None), "go together"),
        (lambda: tls.ServerTls.from_flags(None, None, str(f)), "needs --tls-cert"),
        (lambda: tls.ServerTls.from_flags(str(f), str(tmp_path / "missing")), "not a file"),
        (lambda: tls.ClientTls.from_flags(None, str(f), str(f)), "needs --cloud-ca"),
        (lambda: tls.ClientTls.from_flags(str(f), str(f), None), "go together"),
    ]:
        with pytest.raises(UserInputError, match=match):
            call()
    server = tls.ServerTls.from_flags(str(f), str(f), str(f)).uvicorn_options()
    assert server["ssl_cert_reqs"] == ssl.CERT_REQUIRED and server["ssl_ca_certs"] == str(f)


def test_plain_http_is_refused_when_tls_is_required():
    t = tls.ClientTls("/ca.pem")
    assert "plain HTTP" in tls.plain_http_refused("http://10.0.0.5:8090", t)
    assert tls.plain_http_refused("https://10.0.0.5:8090", t) is None
    assert tls.plain_http_refused("http://10.0.0.5:8090", None) is None


def test_failure_reasons_keep_what_the_certificate_check_said():
    text = (
        "Cannot connect to host 1.2.3.4:443 ssl:<ssl.SSLContext> [[SSL: CERTIFICATE_VERIFY_FAILED] "
        "certificate verify failed: certificate has expired (_ssl.c:1006)]"
    )
    assert tls.reason(Exception(text)) == "TLS: certificate verify failed: certificate has expired"
    assert tls.reason(Exception("boom")) == "boom"


def test_issued_certificates_name_their_host_and_verify_against_the_ca(tmp_path):
    ca = pki.make_ca(tmp_path)
    server = pki.issue(tmp_path, "cloud", tmp_path, ips=["10.0.0.5"], dns=["cloud.example"])
    cert = x509.load_pem_x509_certificates(server.cert.read_bytes())
    assert len(cert) == 2 and cert[1].subject == cert[0].issuer  # the chain a server presents
    alt = cert[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in alt.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert alt.get_values_for_type(x509.DNSName) == ["cloud.example"]
    assert oct(server.key.stat().st_mode & 0o777) == "0o600"
    ctx = tls.ClientTls(str(ca.cert)).context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    old = pki.issue(tmp_path, "old", tmp_path, valid_from=dt.datetime(2020, 1, 1, tzinfo=dt.UTC), days=1)
    assert x509.load_pem_x509_certificate(old.cert.read_bytes()).not_valid_after_utc.year == 2020
    with pytest.raises(UserInputError, match="no CA"):
        pki.issue(tmp_path / "nowhere", "x", tmp_path)


# -- the router's flags -------------------------------------------------------------------------------
def parse(*argv):
    return router_main.get_args_parser().parse_args(list(argv))


def test_cloud_entries_take_their_own_ca(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    args = parse("--cloud", f"oip=https://10.0.0.5:8443,ca={ca}", "--cloud", "oip=http://127.0.0.1:8095")
    first, second = router_main.cloud_endpoints(args)
    assert first.tls.ca_file == str(ca) and second.tls is None
    with pytest.raises(UserInputError, match="one option"):
        router_main.cloud_endpoints(parse("--cloud", "oip=https://h:1,verify=no"))
    args = parse("--cloud-ca", str(ca), "--cloud", "oip=http://10.0.0.5:8080")
    (ep,) = router_main.cloud_endpoints(args)
    assert "plain HTTP" in ep.refusal()  # refused before anything is sent


def test_the_router_warns_when_it_is_exposed_without_tls_or_keys():
    clouds = router_main.cloud_endpoints(parse("--cloud", "oip=http://10.0.0.5:8080"))
    warnings = router_main.exposure_warnings(parse("--host", "0.0.0.0"), clouds)
    assert len(warnings) == 3 and any("without TLS" in w for w in warnings)
    assert any("device authentication" in w for w in warnings) and any("cloud0" in w for w in warnings)
    loopback = router_main.cloud_endpoints(parse("--cloud", "oip=http://127.0.0.1:8095"))
    assert router_main.exposure_warnings(parse(), loopback) == []


# -- memory per TLS connection on the front door ---------------------------------------------------
def stalled_tls_buffers(tmp_path, *, bounded: bool) -> int:
    """Bytes a TLS server connection holds decrypted-but-unread after its client sent 1 MB to an
    application that stopped reading (a stalled upload), with or without the router's bounds."""
    ca = pki.make_ca(tmp_path)
    server = pki.issue(tmp_path, "router", tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(server.cert), str(server.key))
    client_ctx = tls.ClientTls(str(ca.cert)).context()
    held: list[asyncio.Transport] = []

    class StalledApp(asyncio.Protocol):
        def connection_made(self, transport):
            if bounded:
                tls.bound_tls_incoming(transport)
            transport.pause_reading()  # the application reads nothing more
            held.append(transport)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(StalledApp, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"
        )
        writer.write(b"x" * 2**20)
        await asyncio.sleep(0.5)
        size = held[0].get_read_buffer_size()
        writer.transport.abort()
        srv.close()
        return size

    return asyncio.run(main())


def test_a_stalled_tls_upload_holds_one_record_and_the_high_water_mark(tmp_path, monkeypatch):
    unbounded = stalled_tls_buffers(tmp_path / "a", bounded=False)
    monkeypatch.setattr(asyncio.sslproto.SSLProtocol, "max_size", asyncio.sslproto.SSLProtocol.max_size)
    tls.bound_tls_read_buffers()
    assert asyncio.sslproto.SSLProtocol.max_size == tls.TLS_READ_CHUNK_BYTES
    bounded = stalled_tls_buffers(tmp_path / "b", bounded=True)
    # asyncio's default lets 256 KiB pile up per connection; the router's stops at 64 KiB (+ a read)
    assert unbounded >= 200 * 1024
    assert bounded <= tls.TLS_READ_HIGH_WATER_BYTES + tls.TLS_READ_CHUNK_BYTES


def test_the_router_serves_https_on_asyncios_loop_with_small_ssl_buffers(tmp_path, monkeypatch):
    from edge_router.app import Router, RouterConfig, make_server
    from edge_router.discovery import Discovery, Endpoint

    monkeypatch.setattr(asyncio.sslproto.SSLProtocol, "max_size", asyncio.sslproto.SSLProtocol.max_size)
    pki.make_ca(tmp_path)
    server = pki.issue(tmp_path, "router", tmp_path)
    nowhere = "http://127.0.0.1:9"
    router = Router(Discovery(Endpoint("edge", nowhere), Endpoint("cloud", nowhere)), None, RouterConfig())
    assert make_server(router).config.loop == "uvloop"  # plain HTTP keeps the faster loop
    https = make_server(router, tls=tls.ServerTls(str(server.cert), str(server.key)))
    assert https.config.loop == "asyncio" and https.config.ssl_certfile == str(server.cert)
    assert asyncio.sslproto.SSLProtocol.max_size == tls.TLS_READ_CHUNK_BYTES


def test_a_session_with_its_own_ca_ignores_requests_ca_bundle(monkeypatch, tmp_path):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/elsewhere/bundle.pem")
    url = "https://cloud.example/ping"

    def verify_of(session):
        return session.merge_environment_settings(url, {}, None, None, None)["verify"]

    own = tls.verified_session(str(tmp_path / "ca.pem"), ("c.pem", "c.key"), {"X-Key": "k"})
    assert verify_of(own) == str(tmp_path / "ca.pem")  # a plain session would take the variable's
    assert own.cert == ("c.pem", "c.key") and own.headers["X-Key"] == "k"
    assert verify_of(tls.verified_session()) == "/elsewhere/bundle.pem"  # the system's trust, as set
    client = tls.ClientTls(str(tmp_path / "ca.pem"))
    assert verify_of(client.session()) == str(tmp_path / "ca.pem")
