"""edge_router.tokens: the router keeps TorchServe's expiring tokens valid (no server here)."""

import asyncio
import json
import os
import time
import types

import pytest

from core.errors import UserInputError
from edge_router import tokens
from edge_router.tokens import KeyFile, parse_key_file

T0 = 1_800_000_000.0  # the fake clock's start, epoch seconds


def iso(epoch: float) -> str:
    from datetime import UTC, datetime

    # as Java's Instant prints it: nine fractional digits and a Z
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def write(path, inference="inf-1", management="mgmt-1", expires=T0 + 3600, api="api-key"):
    path.write_text(
        json.dumps(
            {
                "management": {"key": management, "expiration time": iso(expires)},
                "inference": {"key": inference, "expiration time": iso(expires)},
                "API": {"key": api},
            }
        )
    )
    stamp = os.stat(path).st_mtime_ns + 1_000_000  # a distinct mtime even on a coarse clock
    os.utime(path, ns=(stamp, stamp))


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


class FakeTorchServe:
    """The token API as TorchServe 0.12 answers it: a new key written into the key file."""

    def __init__(self, path, clock, fail=False):
        self.path, self.clock, self.fail, self.calls = path, clock, fail, []

    def get(self, url, params, headers, timeout):
        import requests

        self.calls.append((url, params["type"], headers["Authorization"]))
        if self.fail:
            raise requests.ConnectionError("down")
        data = json.loads(self.path.read_text())
        data[params["type"]] = {
            "key": f"{params['type']}-{len(self.calls) + 1}",
            "expiration time": iso(self.clock() + 3600),
        }
        self.path.write_text(json.dumps(data))
        stamp = os.stat(self.path).st_mtime_ns + 1_000_000
        os.utime(self.path, ns=(stamp, stamp))

        class Ok:
            def raise_for_status(self):
                return None

        return Ok()


def test_parse_reads_keys_and_java_instants(tmp_path):
    path = tmp_path / "key_file.json"
    write(path)
    keys = parse_key_file(path)
    assert keys["inference"][0] == "inf-1" and keys["API"] == ("api-key", None)
    assert abs(keys["management"][1] - (T0 + 3600)) < 1e-3
    path.write_text("{}")
    with pytest.raises(UserInputError, match="not a TorchServe key file"):
        parse_key_file(path)
    with pytest.raises(UserInputError, match="is the instance started"):
        parse_key_file(tmp_path / "missing.json")


def test_a_changed_file_is_read_again_and_a_missing_one_keeps_the_keys(tmp_path):
    path, clock = tmp_path / "key_file.json", Clock()
    write(path)
    keys = KeyFile(path, "http://mgmt", clock=clock)
    assert keys.token("inference") == "inf-1"
    write(path, inference="inf-after-restart")
    assert keys.token("inference") == "inf-1"  # not looked at again within a second
    clock.now += tokens.STAT_EVERY_S
    assert keys.token("inference") == "inf-after-restart"
    path.unlink()  # TorchServe deletes it on shutdown
    clock.now += tokens.STAT_EVERY_S
    assert keys.token("inference") == "inf-after-restart"
    path.write_text('{"inference": ')  # torn write
    clock.now += tokens.STAT_EVERY_S
    assert keys.token("management") == "mgmt-1"


def test_keys_are_renewed_before_they_expire_and_not_before(tmp_path):
    path, clock = tmp_path / "key_file.json", Clock()
    write(path)
    keys = KeyFile(path, "http://mgmt:8081/", clock=clock)
    server = FakeTorchServe(path, clock)
    assert keys.renew_due(server) == [] and server.calls == []  # an hour left
    clock.now = T0 + 3600 - tokens.RENEW_BEFORE_S + 1
    assert keys.renew_due(server) == ["inference", "management"]
    assert [(u, k) for u, k, _ in server.calls] == [
        ("http://mgmt:8081/token", "inference"),
        ("http://mgmt:8081/token", "management"),
    ]
    assert all(auth == "Bearer api-key" for _, _, auth in server.calls)  # the API key asks
    assert keys.token("inference") == "inference-2" and keys.expires_in("inference") > 3000
    assert keys.renew_due(server) == []  # fresh again


def test_a_failed_renewal_is_retried_but_not_in_a_loop(tmp_path):
    path, clock = tmp_path / "key_file.json", Clock()
    write(path, expires=T0 + 60)
    keys = KeyFile(path, "http://mgmt", clock=clock)
    server = FakeTorchServe(path, clock, fail=True)
    assert keys.renew_due(server) == [] and len(server.calls) == 2
    assert keys.renew_due(server) == [] and len(server.calls) == 2  # not again at once
    clock.now += tokens.RENEW_AT_MOST_EVERY_S
    server.fail = False
    assert keys.renew_due(server) == ["inference", "management"]
    assert keys.token("inference") == "inference-4"


def test_no_api_key_or_no_management_url_renews_nothing(tmp_path):
    path, clock = tmp_path / "key_file.json", Clock()
    write(path, expires=T0 + 1)
    server = FakeTorchServe(path, clock)
    assert KeyFile(path, "", clock=clock).renew_due(server) == [] and server.calls == []


# -- a request caught by a renewal ------------------------------------------------------------------
class Sent:
    """A TorchServe stand-in: accepts only `valid`'s current key; records the keys it was sent."""

    def __init__(self, valid: list[str]):
        self.valid, self.keys = valid, []

    async def __call__(self, auth):
        key = auth["Authorization"].removeprefix("Bearer ")
        self.keys.append(key)
        if key == self.valid[0]:
            return types.SimpleNamespace(status=200, content=b"{}")
        return types.SimpleNamespace(
            status=400, content=b'{"message": "Token Authorization failed. Token ..."}'
        )


def endpoint(path):
    keys = KeyFile(path)
    return types.SimpleNamespace(keys=keys, auth=lambda kind: {"Authorization": f"Bearer {keys.token(kind)}"})


def test_a_request_refused_for_a_renewed_key_is_sent_again_with_the_new_one(tmp_path):
    path = tmp_path / "key_file.json"
    write(path, inference="old")
    ep = endpoint(path)
    server = Sent(["new"])  # TorchServe has swapped the key in; the file follows 50 ms later

    async def scenario():
        async def renew():
            await asyncio.sleep(0.05)
            write(path, inference="new")

        task = asyncio.create_task(renew())
        reply = await tokens.with_fresh_token(ep, server)
        await task
        return reply

    assert asyncio.run(scenario()).status == 200 and server.keys == ["old", "new"]


def test_a_wrong_key_is_refused_once_and_other_answers_pass_through(tmp_path):
    path = tmp_path / "key_file.json"
    write(path, inference="wrong")
    server = Sent(["right"])
    started = time.monotonic()
    reply = asyncio.run(tokens.with_fresh_token(endpoint(path), server))
    assert reply.status == 400 and server.keys == ["wrong"]  # no new key appeared: not sent again
    assert tokens.RENEWAL_WAIT_S <= time.monotonic() - started < 2
    ok = Sent(["wrong"])
    assert asyncio.run(tokens.with_fresh_token(endpoint(path), ok)).status == 200 and ok.keys == ["wrong"]
    no_keys = types.SimpleNamespace(keys=None, auth=lambda kind: {"Authorization": "Bearer x"})
    refusing = Sent(["y"])
    assert asyncio.run(tokens.with_fresh_token(no_keys, refusing)).status == 400 and refusing.keys == ["x"]
    assert not tokens.token_refused(400, b'{"message": "bad image"}')
    assert not tokens.token_refused(200, tokens.TOKEN_REFUSED)
