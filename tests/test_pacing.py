"""`edge_router.pacing`: how long a connection told to retry must still wait."""

from edge_router.pacing import RetryAfterPacing


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_connection_waits_the_rest_of_its_retry_after_and_no_more():
    clock = Clock()
    pacing = RetryAfterPacing(1.0, clock=clock)
    a = ("10.0.0.1", 4000)
    assert pacing.wait_s(a) == 0.0  # never told: no wait
    pacing.told(a)
    clock.now += 0.25
    assert pacing.wait_s(a) == 0.75
    assert pacing.wait_s(["10.0.0.1", 4000]) == 0.75  # ASGI may give the pair as a list
    assert pacing.wait_s(("10.0.0.1", 4001)) == 0.0  # another connection of the same host
    clock.now += 1.0
    assert pacing.wait_s(a) == 0.0


def test_connections_without_an_address_are_not_paced_and_the_table_is_bounded():
    clock = Clock()
    pacing = RetryAfterPacing(1.0, max_tracked=3, clock=clock)
    pacing.told(None)
    assert pacing.wait_s(None) == 0.0
    for port in range(5):
        pacing.told(("h", port))
    assert [pacing.wait_s(("h", p)) for p in range(5)] == [0.0, 0.0, 1.0, 1.0, 1.0]
    pacing.told(("h", 2))  # told again: the newest, so the next eviction takes port 3
    pacing.told(("h", 9))
    assert [pacing.wait_s(("h", p)) for p in (2, 3, 4, 9)] == [1.0, 0.0, 1.0, 1.0]
