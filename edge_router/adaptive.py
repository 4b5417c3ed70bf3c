"""Offload when it pays: an accuracy target and the network in view (no HTTP here).

The paper's rule offloads every sample no side branch is sure of, whatever the link. This module
holds the two refinements the router applies per request (`edge_router.decisions`):

- **An accuracy target** (`min_accuracy`): from the expert's operating-point table (measured at
  export on the validation split, `core.operating_points`), the cheapest plan that meets it: the
  edge alone when its best branch is accurate enough, else the lowest threshold that meets it with
  offloads.
- **The network** (`offload=adaptive`): a live estimate of each cloud endpoint's offload time
  (`LinkEstimate`: offloads as they finish, and a light probe when none ran for a while). An offload
  that cannot finish before the deadline is not started: the best branch answers at once, marked
  `degraded_reason: "predicted_deadline"`. One that can is made only when the accuracy it is
  expected to add (the table's offload accuracy minus the best branch's, on the samples the edge was
  not sure of) is worth its expected time, at `min_gain_per_second` accuracy points per second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from core.operating_points import Plan, plan, row_at

POLICIES = ("fixed", "adaptive")
REASONS = (
    "fixed",  # the paper's rule: no branch reached the threshold
    "worth_it",  # the expected gain pays for the expected time
    "unknown_link",  # no estimate yet: offload and learn (the deadline still bounds it)
    "edge_meets_target",  # the plan for the accuracy target needs no offload
    "edge_is_best",  # the target is out of reach, and the edge alone comes closest
    "no_gain",  # offloading is not expected to be more accurate here
    "not_worth_it",  # the gain is too small for the time the link costs
    "predicted_deadline",  # it could not finish before the deadline
)
ALPHA = 0.25  # weight of a new observation in the moving averages
STALE_S = 2.0  # an offload estimate older than this gives way to a newer probe


@dataclass
class LinkEstimate:
    """One cloud endpoint's offload time: moving average and mean deviation (as TCP's RTO does),
    from offloads and probes. An offload = the link's round trip (what a probe sees) + transfer +
    the cloud's compute (`overhead_s`, learnt where both are known)."""

    offload_s: float | None = None
    deviation_s: float = 0.0
    offload_at: float = float("-inf")
    probe_s: float | None = None
    probe_at: float = float("-inf")
    overhead_s: float = 0.0
    overhead_known: bool = False

    def observe_offload(self, seconds: float, now: float, *, censored: bool = False) -> None:
        """An offload that took `seconds`; `censored`: it was cut off then (it would have taken longer)."""
        if censored and self.offload_s is not None and seconds <= self.offload_s:
            self.offload_at = now  # cut off before the estimate: it says nothing new about the link
            return
        if self.offload_s is None or seconds > 2 * self.offload_s + 0.005:  # much slower: believed at once
            self.offload_s, self.deviation_s = seconds, seconds / 4
        else:
            self.deviation_s += ALPHA * (abs(seconds - self.offload_s) - self.deviation_s)
            self.offload_s += ALPHA * (seconds - self.offload_s)
        if self.probe_s is not None and now - self.probe_at < STALE_S and not censored:
            overhead = max(0.0, seconds - self.probe_s)
            if self.overhead_known:
                self.overhead_s += ALPHA * (overhead - self.overhead_s)
            else:  # the first one is taken as it is: an estimate from probes must not start low
                self.overhead_s, self.overhead_known = overhead, True
        self.offload_at = now

    def observe_probe(self, seconds: float, now: float) -> None:
        if self.probe_s is None or seconds > 2 * self.probe_s + 0.005:
            self.probe_s = seconds  # a link that got much slower is believed at once: deadlines
        else:
            self.probe_s += ALPHA * (seconds - self.probe_s)
        self.probe_at = now

    def expected_s(self, now: float) -> float | None:
        """The time an offload is expected to take now, with a margin of two deviations."""
        if self.offload_s is not None and (
            now - self.offload_at < STALE_S or self.probe_at <= self.offload_at
        ):
            return self.offload_s + 2 * self.deviation_s
        if self.probe_s is not None:  # the link changed since the last offload, or none ran yet
            return self.probe_s + self.overhead_s + 2 * self.deviation_s
        return None

    def describe(self, now: float) -> dict:
        expected = self.expected_s(now)
        return {
            "expected_offload_ms": None if expected is None else round(1000 * expected, 2),
            "offload_ms": None if self.offload_s is None else round(1000 * self.offload_s, 2),
            "probe_ms": None if self.probe_s is None else round(1000 * self.probe_s, 2),
        }


@dataclass(frozen=True)
class OffloadDecision:
    offload: bool
    reason: str
    expected_gain: float | None = None  # accuracy points (0-1) on the samples the edge was unsure of
    expected_ms: float | None = None
    time_left_ms: float | None = None

    def describe(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def target_plan(points: dict, min_accuracy: float | None) -> Plan | None:
    """The plan for an accuracy target, or None without a target or without a table."""
    if min_accuracy is None or not points:
        return None
    return plan(points["table"], min_accuracy)


def decide_offload(
    *,
    policy: str,
    points: dict,
    threshold: float,
    target: Plan | None,
    expected_s: float | None,
    time_left_s: float,
    min_gain_per_second: float,
) -> OffloadDecision:
    """Offload or not, for a sample no side branch was sure of at `threshold`."""
    left_ms = round(1000 * time_left_s, 2)
    expected_ms = None if expected_s is None else round(1000 * expected_s, 2)
    if target is not None and not target.offload:
        return OffloadDecision(
            False, "edge_meets_target" if target.met else "edge_is_best", time_left_ms=left_ms
        )
    if policy == "fixed":
        return OffloadDecision(True, "fixed")
    gain = None
    if points:
        row = row_at(points["table"], threshold)
        if row["offload_accuracy"] is not None and row["stay_accuracy"] is not None:
            gain = round(row["offload_accuracy"] - row["stay_accuracy"], 5)
    if expected_s is not None and expected_s >= time_left_s:
        return OffloadDecision(False, "predicted_deadline", gain, expected_ms, left_ms)
    if gain is not None and gain <= 0 and target is None:
        return OffloadDecision(False, "no_gain", gain, expected_ms, left_ms)
    if expected_s is None:
        return OffloadDecision(True, "unknown_link", gain, None, left_ms)
    if gain is not None and target is None and 100 * gain < min_gain_per_second * expected_s:
        return OffloadDecision(False, "not_worth_it", gain, expected_ms, left_ms)
    return OffloadDecision(True, "worth_it", gain, expected_ms, left_ms)


class LinkEstimates:
    """Estimates for every cloud endpoint, by name (the pool owns one)."""

    def __init__(self, names: list[str], clock: Callable[[], float] = time.monotonic):
        self.links = {n: LinkEstimate() for n in names}
        self.clock = clock

    def observe_offload(self, name: str, seconds: float, *, censored: bool = False) -> None:
        self.links[name].observe_offload(seconds, self.clock(), censored=censored)

    def observe_probe(self, name: str, seconds: float) -> None:
        self.links[name].observe_probe(seconds, self.clock())

    def expected_s(self, name: str) -> float | None:
        return self.links[name].expected_s(self.clock())

    def idle(self, name: str, after_s: float) -> bool:
        """No offload or probe for `after_s`: time for a probe."""
        link, now = self.links[name], self.clock()
        return now - max(link.offload_at, link.probe_at) >= after_s

    def describe(self) -> dict:
        now = self.clock()
        return {n: link.describe(now) for n, link in self.links.items()}
