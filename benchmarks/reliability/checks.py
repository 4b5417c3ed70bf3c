"""What the results must show (issue #12): each abuse scenario against its limits, the router's
largest RSS over every part, and each requirement on reliability.json (`must_show`)."""

from __future__ import annotations

from benchmarks.reliability.faults import KSERVE_SCENARIOS, LINK_SCENARIOS, LOOPBACK_SCENARIOS

MIN_FUZZ_INPUTS = 100_000
MIN_SOAK_MINUTES = 60
RSS_GROWTH_LIMIT = 0.10
CONTROL_P99_LIMIT_MS = 1000.0
ROUTER_RSS_LIMIT_MB = 300.0


def abuse_checks(s: dict) -> dict:
    """One scenario against the requirements: True, False, or None where it was not measured."""
    c = s["control"]
    rss = s.get("router_rss_mb_max")
    checks = {
        f"control_p99_under_{CONTROL_P99_LIMIT_MS:g}ms": c["p99_ms"] is not None
        and c["p99_ms"] < CONTROL_P99_LIMIT_MS,
        "none_without_answer": s["without_answer"] == 0,
        "router_measured": None
        if s.get("router_note")
        else (s.get("router_threads_max") is not None and rss is not None and not s.get("router_gone")),
        f"router_rss_under_{ROUTER_RSS_LIMIT_MB:g}mb": None if rss is None else rss < ROUTER_RSS_LIMIT_MB,
        "answers_afterwards": s["control_after"].get("status") is not None,
    }
    if s["scenario"] == "overload_burst":
        # over the in-flight limit: 200, or an immediate 503 with Retry-After, nothing else
        checks["burst_200_or_503_with_retry_after"] = (
            s["unexpected_status"] == 0 and s["without_retry_after_503"] == 0
        )
    return checks


def router_rss_overall(r: dict) -> dict:
    """The router's largest RSS over every part in `r` where it was sampled, and where."""
    sources: list[tuple[str, float | None]] = []
    if "fuzz" in r:
        sources.append(("fuzz", r["fuzz"].get("router_rss_mb_max")))
    for row in r.get("faults", []):
        if "skipped" not in row:
            sources.append((f"faults/{row['scenario']}", row.get("router_rss_mb_max")))
    if "soak" in r:
        sources.append(("soak", r["soak"].get("router_rss_mb_max")))
    for s in r.get("abuse", {}).get("scenarios", []):
        sources.append((f"abuse/{s['scenario']}", s.get("router_rss_mb_max")))
    sampled = [(k, v) for k, v in sources if v is not None]
    top = max(sampled, key=lambda kv: kv[1]) if sampled else (None, None)
    return {
        "router_rss_mb_max_all": top[1],
        "router_rss_mb_max_all_in": top[0],
        "router_rss_sampled_in": [k for k, _ in sampled],
        "router_rss_not_sampled_in": [k for k, v in sources if v is None],
    }


def must_show(r: dict) -> dict:
    """Each requirement on reliability.json: True, False, or None (its part is absent or skipped)."""
    out: dict[str, bool | None] = {}
    f = r.get("fuzz")
    out[f"fuzz_{MIN_FUZZ_INPUTS}_inputs_0_5xx_0_hung"] = (
        None if f is None else (f["inputs"] >= MIN_FUZZ_INPUTS and f["status_5xx"] == 0 and f["hung"] == 0)
    )
    if f is not None and f.get("worker_deaths") is not None:
        out["fuzz_0_worker_deaths_and_every_tier_answers_after"] = (
            f["worker_deaths"] == 0
            and f["still_correct_after"] is True
            and all(c == 200 for c in f.get("control_after", {}).values())
        )
    ran = [x for x in r.get("faults", []) if "skipped" not in x]
    out["faults_0_lost"] = all(x["lost"] == 0 for x in ran) if ran else None
    kserve = [x for x in ran if x["scenario"] in KSERVE_SCENARIOS]
    out["kserve_faults_0_lost"] = all(x["lost"] == 0 for x in kserve) if kserve else None
    names = {x["scenario"] for x in ran}
    every = set(LOOPBACK_SCENARIOS + KSERVE_SCENARIOS + LINK_SCENARIOS)
    out["faults_all_scenarios_ran"] = every <= names if ran else None
    soak = r.get("soak")
    out["soak_0_errors"] = None if soak is None else soak["errors"] == 0
    out[f"soak_{MIN_SOAK_MINUTES}_minutes"] = None if soak is None else soak["minutes"] >= MIN_SOAK_MINUTES
    growth = None if soak is None else soak.get("rss_growth_max")
    out[f"soak_every_process_rss_within_{RSS_GROWTH_LIMIT:.0%}_from_minute_5"] = (
        None if growth is None else growth <= RSS_GROWTH_LIMIT and soak.get("rss_growth_from_s", 0) <= 300
    )
    a = r.get("abuse")
    out["abuse_every_scenario_passed"] = None if a is None or "skipped" in a else a["passed"]
    top = r.get("router_rss_mb_max_all")
    out[f"router_rss_under_{ROUTER_RSS_LIMIT_MB:g}mb_throughout"] = (
        None if top is None else (top < ROUTER_RSS_LIMIT_MB and not r.get("router_rss_not_sampled_in"))
    )
    return out
