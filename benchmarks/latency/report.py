"""Summary, plots and Markdown of a latency run (`python -m benchmarks.latency.report DIR`)."""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from core import distortions
from core.cli import write_json

SYSTEM_ORDER = ("cloud_only", "conventional", "edge_only", "expert")
COLORS = {
    "cloud_only": "tab:gray",
    "conventional": "tab:red",
    "edge_only": "tab:orange",
    "expert": "tab:green",
}
PAPER_SPLIT_BYTES_FP32 = 160 * 10 * 10 * 4  # the paper's 160x10x10 tensor at 300 px


def load(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("records_*.csv")):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    for r in rows:
        r["latency_ms"] = float(r["latency_ms"])
        r["level"] = float(r["level"])
        r["ok"] = r["status"] == "200"
        r["correct"] = r["correct"] == "1"
        r["offloaded"] = r["offloaded"] == "1"
        r["degraded"] = r["degraded"] == "1"
        r["offloaded_bytes"] = int(r["offloaded_bytes"] or 0)
    return rows


def stats(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["ok"]]
    lat = [r["latency_ms"] for r in ok]
    off = [r for r in ok if r["offloaded"]]
    return {
        "n": len(rows),
        "errors": len(rows) - len(ok),
        "accuracy": float(np.mean([r["correct"] for r in ok])) if ok else None,
        "mean_ms": float(np.mean(lat)) if lat else None,
        "p50_ms": float(np.median(lat)) if lat else None,
        "p95_ms": float(np.percentile(lat, 95)) if lat else None,
        "offload_rate": len(off) / len(ok) if ok else None,
        "offloaded_bytes_mean": float(np.mean([r["offloaded_bytes"] for r in off])) if off else 0.0,
        "degraded": sum(r["degraded"] for r in ok),
    }


def key(r: dict) -> tuple:
    return (r["profile"], r["system"], r["p_tar"], r["compression"])


def write_report(folder: str | Path) -> dict:
    folder = Path(folder)
    rows = load(folder)
    if not rows:
        raise SystemExit(f"no records_*.csv in {folder}")
    profiles = list(dict.fromkeys(r["profile"] for r in rows))
    meta_path = folder / "run.json"
    if meta_path.is_file():  # the run's own order (lan, sao_paulo, fremont, paris), not alphabetical
        order = list(json.loads(meta_path.read_text()).get("profiles", {}))
        profiles.sort(key=lambda p: order.index(p) if p in order else len(order))
    cells = defaultdict(list)
    for r in rows:
        cells[(*key(r), r["distortion"], r["level"])].append(r)
    with open(folder / "summary.csv", "w", newline="") as f:
        fields = [
            "profile",
            "system",
            "p_tar",
            "compression",
            "distortion",
            "level",
            "n",
            "errors",
            "accuracy",
            "mean_ms",
            "p50_ms",
            "p95_ms",
            "offload_rate",
            "offloaded_bytes_mean",
            "degraded",
        ]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for k, rs in sorted(cells.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
            w.writerow(dict(zip(fields, (*k, *stats(rs).values()), strict=True)))

    distorted = defaultdict(list)
    for r in rows:
        if r["distortion"] != "pristine":
            distorted[key(r)].append(r)
    agg = {k: stats(v) for k, v in distorted.items()}
    checks = {"front": {}, "expert_below_cloud_only": {}, "compression": {}}
    for p in profiles:
        exp = [(k, s) for k, s in agg.items() if k[0] == p and k[1] == "expert" and k[3] == "fp32"]
        conv = [(k, s) for k, s in agg.items() if k[0] == p and k[1] == "conventional"]
        dominated = [
            f"expert p_tar {k[2]}"
            for k, s in exp
            if any(c["accuracy"] > s["accuracy"] and c["mean_ms"] < s["mean_ms"] for _, c in conv)
        ]
        checks["front"][p] = {"holds": not dominated, "dominated": dominated}
        e = agg.get((p, "expert", "0.8", "fp32"))
        c = agg.get((p, "cloud_only", "", "image"))
        if e and c:
            checks["expert_below_cloud_only"][p] = {
                "expert_mean_ms": round(e["mean_ms"], 2),
                "cloud_only_mean_ms": round(c["mean_ms"], 2),
                "holds": e["mean_ms"] < c["mean_ms"],
            }
        allcells = {
            comp: stats(
                [
                    r
                    for r in rows
                    if r["profile"] == p
                    and r["system"] == "expert"
                    and r["p_tar"] == "0.8"
                    and r["compression"] == comp
                ]
            )
            for comp in ("fp32", "fp16", "int8")
        }
        if all(s["n"] for s in allcells.values()):
            b32 = allcells["fp32"]["offloaded_bytes_mean"] or 1
            checks["compression"][p] = {
                comp: {
                    "bytes": round(s["offloaded_bytes_mean"], 1),
                    "bytes_ratio_vs_fp32": round(s["offloaded_bytes_mean"] / b32, 3),
                    "accuracy": s["accuracy"],
                    "accuracy_delta_points": round(100 * (s["accuracy"] - allcells["fp32"]["accuracy"]), 2),
                }
                for comp, s in allcells.items()
            }
    write_json(folder / "checks.json", checks)
    plots(rows, agg, profiles, folder)
    markdown(rows, agg, checks, profiles, folder)
    return checks


def plots(rows, agg, profiles, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a panel per distortion type the records hold, in registry order
    present = {r["distortion"] for r in rows}
    kinds = [name for name in distortions.REGISTRY if name != "pristine" and name in present]
    fig, axes = plt.subplots(
        len(profiles), len(kinds), figsize=(5.5 * len(kinds), 3.2 * len(profiles)), squeeze=False
    )
    for i, p in enumerate(profiles):
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            for system in SYSTEM_ORDER:
                pts = []
                for level in sorted({r["level"] for r in rows if r["distortion"] in (kind, "pristine")}):
                    rs = [
                        r
                        for r in rows
                        if r["profile"] == p
                        and r["system"] == system
                        and r["ok"]
                        and r["p_tar"] in ("0.8", "")
                        and r["compression"] in ("fp32", "image")
                        and (
                            (r["distortion"] == kind and r["level"] == level)
                            or (level == 0 and r["distortion"] == "pristine")
                        )
                    ]
                    if rs:
                        pts.append((level, np.mean([r["latency_ms"] for r in rs])))
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=system, color=COLORS[system])
            ax.set_title(f"{p}: {kind.replace('_', ' ')}")
            ax.set_xlabel(f"{distortions.get(kind).unit} (0 = pristine)")
            ax.set_ylabel("mean latency (ms)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "latency_vs_level.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(profiles), figsize=(4 * len(profiles), 3.6), squeeze=False)
    for i, p in enumerate(profiles):
        ax = axes[0][i]
        for (prof, system, p_tar, comp), s in sorted(agg.items()):
            if prof != p or comp not in ("fp32", "image"):
                continue
            ax.scatter(s["mean_ms"], 100 * s["accuracy"], color=COLORS[system], label=system)
            ax.annotate(p_tar or "", (s["mean_ms"], 100 * s["accuracy"]), fontsize=7)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles, strict=True))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7)
        ax.set_title(f"{p}: distorted inputs")
        ax.set_xlabel("mean latency (ms)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "accuracy_latency_plane.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(profiles), figsize=(4 * len(profiles), 3.4), squeeze=False)
    for i, p in enumerate(profiles):
        ax = axes[0][i]
        for system in SYSTEM_ORDER:
            lat = sorted(
                r["latency_ms"]
                for r in rows
                if r["profile"] == p
                and r["system"] == system
                and r["ok"]
                and r["p_tar"] in ("0.8", "")
                and r["compression"] in ("fp32", "image")
            )
            if lat:
                ax.plot(lat, np.linspace(0, 1, len(lat)), label=system, color=COLORS[system])
        ax.set_xscale("log")
        ax.set_title(p)
        ax.set_xlabel("latency (ms)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("CDF")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "latency_cdf.png", dpi=110)
    plt.close(fig)


def provenance_lines(meta: dict, profiles: list[str]) -> list[str]:
    """Which invocation produced each profile's records (run.json), as Markdown lines."""
    from benchmarks.lib.target import describe

    if "invocations" not in meta:  # a run.json written before per-profile provenance
        return [
            f"Command of the last invocation: `{meta.get('command', '')}`; per cell "
            f"{meta.get('per_cell')} images; its wall time {meta.get('wall_time_s')} s (profiles "
            "resumed from earlier invocations are not told apart).",
            "",
        ]
    lines = ["Records per profile, and the invocation that produced them:", ""]
    for p in profiles:
        by = meta.get("profiles", {}).get(p, {}).get("produced_by")
        extra = (
            f"; per cell {by.get('per_cell')} images; {by.get('wall_time_s')} s for this profile, "
            f"{by.get('invocation_wall_time_s')} s for the whole invocation"
            if by
            else ""
        )
        lines.append(f"- {p}: {describe(by)}{extra}")
    lines += ["", f"Invocations that wrote this folder: {len(meta['invocations'])} (listed in run.json).", ""]
    return lines


def markdown(rows, agg, checks, profiles, folder: Path) -> None:
    meta = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    lines = ["# Latency over emulated WAN links (live decisions)", ""]
    if meta:
        lines += provenance_lines(meta, profiles)
    lines += [
        "Distorted inputs (every distortion level pooled; p_tar 0.8 unless stated):",
        "",
        "| profile | system | p_tar | mean ms | p50 ms | p95 ms | accuracy % | offload % | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (p, system, p_tar, comp), s in sorted(
        agg.items(),
        key=lambda kv: (profiles.index(kv[0][0]), SYSTEM_ORDER.index(kv[0][1]), kv[0][2], kv[0][3]),
    ):
        if comp not in ("fp32", "image"):
            continue
        lines.append(
            f"| {p} | {system} | {p_tar or '-'} | {s['mean_ms']:.1f} | {s['p50_ms']:.1f} | "
            f"{s['p95_ms']:.1f} | {100 * s['accuracy']:.1f} | {100 * s['offload_rate']:.0f} | "
            f"{s['errors']} |"
        )
    lines += ["", "## Checks", ""]
    for p in profiles:
        f = checks["front"].get(p, {})
        lines.append(
            f"- {p}: expert on or beyond the conventional accuracy-latency front: "
            f"**{'yes' if f.get('holds') else 'no'}**"
            + (f" (dominated: {', '.join(f['dominated'])})" if f.get("dominated") else "")
        )
        c = checks["expert_below_cloud_only"].get(p)
        if c:
            lines.append(
                f"- {p}: expert mean latency {c['expert_mean_ms']} ms vs cloud-only "
                f"{c['cloud_only_mean_ms']} ms: **{'below' if c['holds'] else 'not below'}**"
            )
    lines += [
        "",
        "## Offload compression (expert, p_tar 0.8, all cells)",
        "",
        "| profile | compression | mean offloaded bytes | vs fp32 | accuracy % | delta vs fp32 (pts) |",
        "|---|---|---|---|---|---|",
    ]
    for p, comps in checks["compression"].items():
        for comp, c in comps.items():
            lines.append(
                f"| {p} | {comp} | {c['bytes']:.0f} | {c['bytes_ratio_vs_fp32']:.3f} | "
                f"{100 * c['accuracy']:.1f} | {c['accuracy_delta_points']:+.2f} |"
            )
    lines += [
        "",
        f"The paper offloaded a 160x10x10 tensor at 300 px ({PAPER_SPLIT_BYTES_FP32:,} bytes as "
        "FP32, about 386 KB as its JSON list); at 64 px ours is 160x2x2 (2,560 bytes FP32), and "
        "at 224 px it would be 160x7x7 (31,360 bytes FP32).",
        "",
        "![latency vs level](latency_vs_level.png)",
        "![accuracy-latency plane](accuracy_latency_plane.png)",
        "![latency CDF](latency_cdf.png)",
        "",
    ]
    (folder / "summary.md").write_text("\n".join(lines))


if __name__ == "__main__":
    write_report(sys.argv[1] if len(sys.argv) > 1 else "docs/results/latency")
