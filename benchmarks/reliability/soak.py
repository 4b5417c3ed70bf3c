"""The soak part: the faults' labelled load (`faults.fault_load`), steady and without a fault, for
`--soak-minutes`: errors, p99 per minute and the RSS growth of every process after warm-up."""

from __future__ import annotations

import json
import time

import numpy as np
import psutil

from benchmarks.reliability.faults import fate_table, fault_load, labelled_bodies
from benchmarks.reliability.system import NOT_SAMPLED_RSS, ExistingSystem, sampling_router


def run_soak(system, args) -> dict:
    bodies = labelled_bodies(60, seed=4)
    rss: dict[str, list[float]] = {}
    minutes: list[dict] = []
    warmup_s = 60.0 * getattr(args, "soak_warmup_minutes", 1.0)
    with (
        sampling_router(system) as sampler,
        fault_load(system.url, bodies, args.deadline_ms, clients=4) as load,
    ):
        started = time.time()
        end = started + 60 * args.soak_minutes
        next_minute, seen = started + 60, 0
        while time.time() < end:
            time.sleep(min(5, max(0.0, end - time.time())))
            for name, proc in system.processes().items():
                try:
                    rss.setdefault(name, []).append((time.time() - started, proc.memory_info().rss / 2**20))
                except psutil.Error:
                    pass
            if time.time() >= next_minute or time.time() >= end:
                recs = load.records[seen:]
                seen += len(recs)
                lat = [r.seconds * 1000 for r in recs if r.status == 200]
                minutes.append(
                    {
                        "minute": len(minutes) + 1,
                        "requests": len(recs),
                        "errors": sum(1 for r in recs if r.status != 200),
                        "p50_ms": round(float(np.median(lat)), 2) if lat else None,
                        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat else None,
                    }
                )
                print(json.dumps(minutes[-1]), flush=True)
                next_minute += 60
    table = fate_table("soak", load.records, args.deadline_ms)
    growth = {}
    for name, samples in rss.items():
        after = [v for t, v in samples if t >= warmup_s]
        if len(after) >= 2:
            growth[name] = {
                "after_warmup_mb": round(after[0], 1),
                "end_mb": round(after[-1], 1),
                "growth": round(after[-1] / after[0] - 1, 4),
            }
    p99s = [m["p99_ms"] for m in minutes if m["p99_ms"] is not None]
    note = {}
    if isinstance(system, ExistingSystem):
        note["rss_note"] = NOT_SAMPLED_RSS
    elif not growth:
        note["rss_note"] = f"growth not measured: the soak is shorter than its {warmup_s:.0f}-s warm-up"
    return {
        **note,
        "minutes": args.soak_minutes,
        "clients": 4,
        "requests": table["sent"],
        "errors": table["errors"] + table["lost"],
        "degraded": table["degraded"],
        "per_minute": minutes,
        "rss": growth,
        "rss_growth_from_s": warmup_s,
        "rss_growth_max": max((g["growth"] for g in growth.values()), default=None),
        "p99_first_last_ms": [p99s[0], p99s[-1]] if p99s else None,
        **sampler.summary(),
    }
