"""The network emulator: a real two-namespace link with a short profile, torn down afterwards."""

import subprocess

import pytest

from benchmarks.lib import netem
from benchmarks.netem import tcp_rtt_ms

OK, WHY = netem.namespaces_available()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(not OK, reason=f"no network namespaces: {WHY}")]


def namespaces():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def routes():
    return subprocess.run(["ip", "route", "show", "type", "blackhole"], capture_output=True, text=True).stdout


def test_link_delays_traffic_and_cleans_up():
    profile = netem.Profile("test", rate_mbit=50.0, rtt_ms=40.0)
    with netem.Link(profile, max_seconds=120, with_device=False) as link:
        assert netem.SUBNET.split("/")[0] in routes()  # blackhole first: nothing leaves the machine
        assert "ee-edge" in namespaces() and "ee-cloud" in namespaces()
        rtt = tcp_rtt_ms(link, samples=5)
        assert 38.0 <= rtt <= 60.0, rtt
        backend = link.backend
    assert "ee-edge" not in namespaces() and "ee-cloud" not in namespaces()
    assert netem.SUBNET.split("/")[0] not in routes()
    assert backend in ("netem", "tun")


def test_link_is_torn_down_on_failure_too():
    with pytest.raises(RuntimeError, match="boom"):
        with netem.Link(netem.Profile("t", 10.0, 10.0), max_seconds=60, with_device=True):
            assert "ee-dev" in namespaces()
            raise RuntimeError("boom")
    assert "ee-" not in namespaces()


def test_bad_profiles_are_refused():
    with pytest.raises(netem.UserInputError):
        netem.Profile("bad", rate_mbit=0, rtt_ms=10).validate()
    with pytest.raises(netem.UserInputError):
        netem.Profile("bad", rate_mbit=10, rtt_ms=10, loss=1.5).validate()
