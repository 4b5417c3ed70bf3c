"""The soak part: the faults' labelled load (`faults.fault_load`), steady and without a fault, for
`--soak-minutes`, against the whole system (the own stack: router, edge TorchServe, cloud
TorchServe and two KServe replicas in the router's cloud pool).

Measured: errors and lost requests, p50/p99 and the share of offloaded answers per minute; every
process's RSS every 5 s (the growth from `--soak-warmup-minutes` to the end: `rss_growth_max`);
every process's RSS, PSS, threads and open files once a minute (`processes_per_minute`, and the
plot `soak.png` beside reliability.json); how many offloads each cloud endpoint answered (the
router's `/v1/experts`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import psutil
import requests

from benchmarks.reliability.faults import fate_table, fault_load, labelled_bodies
from benchmarks.reliability.system import NOT_SAMPLED_RSS, ExistingSystem, client_options, sampling_router

RSS_EVERY_S = 5.0
RESOURCES = ("rss_mb", "pss_mb", "threads", "open_files")


def resources(proc: psutil.Process) -> dict:
    """RSS, PSS (from smaps_rollup), threads and open file descriptors of one process."""
    with proc.oneshot():
        mem = proc.memory_full_info()
        return {
            "rss_mb": round(mem.rss / 2**20, 1),
            "pss_mb": round(mem.pss / 2**20, 1),
            "threads": proc.num_threads(),
            "open_files": proc.num_fds(),
        }


def sample_processes(system) -> dict[str, dict]:
    out = {}
    for name, proc in system.processes().items():
        try:
            out[name] = resources(proc)
        except psutil.Error:
            pass
    return out


def run_soak(system, args, out_dir: Path | None = None) -> dict:
    bodies = labelled_bodies(60, seed=4)
    rss: dict[str, list[tuple[float, float]]] = {}
    minutes: list[dict] = []
    per_minute: list[dict] = []
    warmup_s = 60.0 * getattr(args, "soak_warmup_minutes", 1.0)
    own = not isinstance(system, ExistingSystem)
    with (
        sampling_router(system) as sampler,
        fault_load(system.url, bodies, args.deadline_ms, clients=4, device=client_options(system)) as load,
    ):
        started = time.time()
        end = started + 60 * args.soak_minutes
        next_minute, seen = started + 60, 0
        if own:
            per_minute.append({"minute": 0, "processes": sample_processes(system)})
        while time.time() < end:
            time.sleep(min(RSS_EVERY_S, max(0.0, end - time.time())))
            for name, proc in system.processes().items():
                try:
                    rss.setdefault(name, []).append((time.time() - started, proc.memory_info().rss / 2**20))
                except psutil.Error:
                    pass
            if time.time() >= next_minute or time.time() >= end:
                recs = load.records[seen:]
                seen += len(recs)
                minutes.append(minute_row(len(minutes) + 1, recs))
                if own:
                    per_minute.append({"minute": len(minutes), "processes": sample_processes(system)})
                print(json.dumps(minutes[-1]), flush=True)
                next_minute += 60
        clouds = cloud_endpoints(system.url, client_options(system))
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
    if not own:
        note["rss_note"] = NOT_SAMPLED_RSS
    elif not growth:
        note["rss_note"] = f"growth not measured: the soak is shorter than its {warmup_s:.0f}-s warm-up"
    ok = [r for r in load.records if r.status == 200]
    failed = [r for r in load.records if r.status != 200]
    result = {
        **note,
        "minutes": args.soak_minutes,
        "clients": 4,
        "requests": table["sent"],
        "errors": table["errors"] + table["lost"],
        "lost": table["lost"],
        "degraded": table["degraded"],
        "error_statuses": table["error_statuses"],
        # what each failed request got, so a rare one can be traced (its minute, the router's reason)
        "error_examples": [
            {
                "minute": int((r.started - started) // 60) + 1,
                "status": r.status,
                "reason": r.reason,
                "seconds": round(r.seconds, 3),
            }
            for r in failed[:20]
        ],
        "offloaded_share": round(sum(1 for r in ok if (r.answer or {}).get("offloaded")) / len(ok), 4)
        if ok
        else None,
        "cloud_endpoints": clouds,
        "per_minute": minutes,
        "processes_per_minute": per_minute,
        "rss": growth,
        "rss_growth_from_s": warmup_s,
        "rss_growth_max": max((g["growth"] for g in growth.values()), default=None),
        "p99_first_last_ms": [p99s[0], p99s[-1]] if p99s else None,
        **sampler.summary(),
    }
    if out_dir is not None and per_minute:
        result["plot"] = plot_processes(per_minute, Path(out_dir) / "soak.png")
    return result


def minute_row(minute: int, recs) -> dict:
    lat = [r.seconds * 1000 for r in recs if r.status == 200]
    ok = [r for r in recs if r.status == 200]
    return {
        "minute": minute,
        "requests": len(recs),
        "errors": sum(1 for r in recs if r.status != 200),
        "offloaded": sum(1 for r in ok if (r.answer or {}).get("offloaded")),
        "p50_ms": round(float(np.median(lat)), 2) if lat else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat else None,
    }


def cloud_endpoints(router_url: str, options: dict) -> dict | None:
    """Per cloud endpoint: its kind and how many offloads it answered or failed (the router's pool)."""
    try:
        clouds = requests.get(f"{router_url}/v1/experts", timeout=10, **options).json().get("clouds", {})
    except (requests.RequestException, ValueError):
        return None
    return {
        name: {k: c.get(k) for k in ("kind", "url", "answered", "failed", "up")} for name, c in clouds.items()
    }


def plot_processes(per_minute: list[dict], path: Path) -> str:
    """Four panels (RSS, PSS, threads, open files) per process over the soak's minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({n for row in per_minute for n in row["processes"]})
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    titles = {"rss_mb": "RSS (MB)", "pss_mb": "PSS (MB)", "threads": "threads", "open_files": "open files"}
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(names), 2)))  # one colour per process
    for ax, key in zip(axes.flat, RESOURCES, strict=True):
        for name, color in zip(names, colors, strict=False):
            pts = [
                (row["minute"], row["processes"][name][key]) for row in per_minute if name in row["processes"]
            ]
            ax.plot([m for m, _ in pts], [v for _, v in pts], marker=".", color=color, label=name)
        ax.set_title(titles[key])
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("minute of the soak")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=6, fontsize=8)
    fig.suptitle("Soak: every process of the system, sampled once a minute")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
