"""The handlers' metric buffer: sums per interval, never fails a request, TorchServe's noise dropped."""

import logging

import pytest

from handlers.metrics import MetricBuffer, quiet_worker_logging
from tests.test_handlers import RecordingMetrics


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_counters_sum_and_times_average_over_one_interval():
    clock, store = Clock(), RecordingMetrics()
    buf = MetricBuffer(interval_s=1.0, clock=clock)
    for branch in ("0", "0", "2"):
        buf.add("ExitsByBranch", 1, dimensions={"Branch": branch})
    buf.add("OffloadBytes", 100)
    buf.add("OffloadBytes", 50)
    buf.add("HandlerTime", 2.0, kind="time")
    buf.add("HandlerTime", 4.0, kind="time")
    clock.now = 0.5
    assert buf.flush(store) == 0 and store.lines == []  # the interval has not passed
    clock.now = 1.0
    assert buf.flush(store) == 4
    assert store.total("ExitsByBranch", Branch="0") == 2 and store.total("ExitsByBranch", Branch="2") == 1
    assert store.total("OffloadBytes") == 150
    assert [(k, v) for k, n, v, _ in store.lines if n == "HandlerTime"] == [("time", 3.0)]
    assert buf.pending() == {} and buf.flush(store, force=True) == 0  # nothing twice


def test_flush_without_a_store_keeps_counts_and_later_flush_uses_the_last_store():
    clock, store = Clock(), RecordingMetrics()
    buf = MetricBuffer(interval_s=1.0, clock=clock)
    buf.add("Offloads", 1)
    clock.now = 5
    assert buf.flush(None) == 0 and buf.pending()  # no store seen yet: kept, not lost
    buf.flush(store, force=True)
    buf.add("Offloads", 1)
    clock.now = 10
    assert buf.flush(None) == 1  # the timer's call: the store it saw last
    assert store.total("Offloads") == 2


def test_a_failing_store_never_raises_and_bad_kinds_are_refused():
    class Broken:
        def add_counter(self, *a, **k):
            raise RuntimeError("metrics backend down")

    buf = MetricBuffer(interval_s=0)
    buf.add("Offloads", 1)
    assert buf.flush(Broken(), force=True) == 0
    with pytest.raises(ValueError, match="unknown metric kind"):
        buf.add("Offloads", 1, kind="histogram")


def test_timer_flushes_a_quiet_worker():
    store = RecordingMetrics()
    buf = MetricBuffer(interval_s=0.05)
    buf.flush(store, force=True)
    buf.add("Offloads", 3)
    buf.start_timer()
    try:
        import time

        deadline = time.time() + 5
        while store.total("Offloads") < 3 and time.time() < deadline:
            time.sleep(0.02)
    finally:
        buf.stop_timer()
    assert store.total("Offloads") == 3


def test_quiet_worker_logging_drops_only_the_per_request_lines(caplog):
    quiet_worker_logging()
    quiet_worker_logging()  # idempotent: one filter
    metric_log = logging.getLogger("ts.metrics.caching_metric")
    assert len(metric_log.filters) == 1
    with caplog.at_level(logging.INFO):
        metric_log.info("[METRICS]PredictionTime.Milliseconds:1.2|#ModelName:x")
        metric_log.info("[METRICS]ExitsByBranch.Count:3|#Branch:0")
        logging.getLogger("ts.protocol.otf_message_handler").info("Backend received inference at: 1")
        logging.getLogger("ts.protocol.otf_message_handler").error("a real problem")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["[METRICS]ExitsByBranch.Count:3|#Branch:0", "a real problem"]
