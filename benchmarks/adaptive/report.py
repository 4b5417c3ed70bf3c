"""`python -m benchmarks.adaptive.report --out docs/results/adaptive`: the tables, checks and plots of
`benchmarks.adaptive`'s records (run by it at the end; rerun alone to redraw)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from core.cli import run_cli, write_json
from core.errors import UserInputError

FAMILIES = ("pristine", "gaussian_blur", "gaussian_noise")
TARGETS = (0.85, 0.90)  # the issue's; benchmarks.adaptive also runs 0.92, reported in the tables
ACCURACY_SLACK = 0.005  # the target may be missed by half a point (sampling noise of the test set)
DEADLINE_MS, DEADLINE_SLACK_MS = 150.0, 10.0
SWITCH_WINDOW, SWITCH_BAND, SWITCH_LIMIT = 20, 0.1, 50


def load(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("records_*.csv")):
        with path.open() as f:
            rows += list(csv.DictReader(f))
    if not rows:
        raise UserInputError(f"no records_*.csv in {out}: run python -m benchmarks.adaptive")
    return rows


def stats(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "200"]
    lat = np.array([float(r["latency_ms"]) for r in ok]) if ok else np.zeros(0)
    return {
        "n": len(rows),
        "errors": len(rows) - len(ok),
        "accuracy": round(float(np.mean([int(r["correct"]) for r in ok])), 4) if ok else None,
        "offload_rate": round(float(np.mean([int(r["offloaded"]) for r in ok])), 4) if ok else None,
        "degraded_rate": round(float(np.mean([int(r["degraded"]) for r in ok])), 4) if ok else None,
        "mean_ms": round(float(lat.mean()), 2) if lat.size else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 2) if lat.size else None,
        "max_ms": round(float(lat.max()), 2) if lat.size else None,
    }


def summarise(rows: list[dict]) -> dict:
    """profile -> config -> family (and "all") -> stats."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["profile"], {}).setdefault(r["config"], {}).setdefault(r["family"], []).append(r)
    return {
        p: {
            c: {
                "all": stats([r for rs in fams.values() for r in rs]),
                **{f: stats(rs) for f, rs in fams.items()},
            }
            for c, fams in configs.items()
        }
        for p, configs in out.items()
    }


def target_checks(summary: dict) -> list[dict]:
    """Targets 0.85/0.90: where the fixed system (its lan curve) reaches the target at all, the
    accuracy reached is at least the target minus half a point, offloading no more than the fixed
    system needs for that accuracy."""
    curve = {c: v for c, v in summary.get("lan", {}).items() if c.startswith("fixed@") and "/" not in c}
    checks = []
    for profile, configs in summary.items():
        for a in TARGETS:
            for mode in (f"target@{a:g}", f"target@{a:g}+net"):
                if mode not in configs:
                    continue
                for family in FAMILIES:
                    got = configs[mode].get(family)
                    if got is not None and got["accuracy"] is None:  # no answer at all: a miss
                        checks.append(
                            {
                                "profile": profile,
                                "mode": mode,
                                "family": family,
                                "target": a,
                                "accuracy": None,
                                "offload_rate": None,
                                "fixed_offload_at_that_accuracy": None,
                                "ok": False,
                            }
                        )
                        continue
                    fixed = [
                        v[family] for v in curve.values() if family in v and v[family]["accuracy"] is not None
                    ]
                    if got is None or not fixed or max(f["accuracy"] for f in fixed) < a:
                        continue  # the fixed rule cannot reach the target in this family
                    as_good = [f["offload_rate"] for f in fixed if f["accuracy"] >= got["accuracy"]]
                    fixed_offload = min(as_good) if as_good else None
                    checks.append(
                        {
                            "profile": profile,
                            "mode": mode,
                            "family": family,
                            "target": a,
                            "accuracy": got["accuracy"],
                            "offload_rate": got["offload_rate"],
                            "fixed_offload_at_that_accuracy": fixed_offload,
                            "ok": got["accuracy"] >= a - ACCURACY_SLACK
                            and (fixed_offload is None or got["offload_rate"] <= fixed_offload),
                        }
                    )
    return checks


def deadline_check(summary: dict) -> dict | None:
    paris = summary.get("paris", {})
    net, fixed = paris.get("net@0.8/150ms", {}).get("all"), paris.get("fixed@0.8/150ms", {}).get("all")
    if not net or not fixed:
        return None
    if net["mean_ms"] is None or fixed["mean_ms"] is None:
        return {"net": net, "fixed": fixed, "ok": False, "note": "a configuration got no answer"}
    return {
        "net": net,
        "fixed": fixed,
        "max_ms_limit": DEADLINE_MS + DEADLINE_SLACK_MS,
        "mean_ratio": round(net["mean_ms"] / fixed["mean_ms"], 3),
        "accuracy_difference": round(net["accuracy"] - fixed["accuracy"], 4),
        "ok": net["errors"] == 0
        and net["max_ms"] <= DEADLINE_MS + DEADLINE_SLACK_MS
        and net["mean_ms"] <= 0.5 * fixed["mean_ms"]
        and abs(net["accuracy"] - fixed["accuracy"]) <= ACCURACY_SLACK,
    }


def switch_check(out: Path) -> dict | None:
    path, meta = out / "switch.csv", out / "switch_meta.json"
    if not path.is_file() or not meta.is_file():
        return None
    at = json.loads(meta.read_text())["switch_at"]
    if at is None:
        return {"ok": False, "note": "the link never switched (the client ended first)"}
    with path.open() as f:
        off = np.array([int(r["offloaded"]) for r in csv.DictReader(f)])
    if len(off) <= at + SWITCH_WINDOW:
        return None
    before, after = off[:at], off[at:]
    level = float(after[len(after) // 2 :].mean())  # the new link's steady level
    rate = np.convolve(off, np.ones(SWITCH_WINDOW) / SWITCH_WINDOW, mode="valid")  # rate[i]: i..i+W-1
    settled = next(
        (j for j in range(at, len(rate)) if np.all(np.abs(rate[j:] - level) <= SWITCH_BAND)),
        len(off),
    )
    settle = max(0, settled + SWITCH_WINDOW - at)  # the window ending at the settled request
    return {
        "switch_at": at,
        "offload_rate_before": round(float(before.mean()), 4),
        "offload_rate_after": round(level, 4),
        "settled_within_requests": settle,
        "limit": SWITCH_LIMIT,
        "ok": settle <= SWITCH_LIMIT,
    }


def plots(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FAMILIES), figsize=(13, 3.8))
    for ax, family in zip(axes, FAMILIES, strict=True):
        lan = summary.get("lan", {})
        fixed = sorted(
            (v[family]["offload_rate"], v[family]["accuracy"], c)
            for c, v in lan.items()
            if c.startswith("fixed@") and "/" not in c and family in v and v[family]["accuracy"] is not None
        )
        ax.plot(
            [100 * f[0] for f in fixed],
            [100 * f[1] for f in fixed],
            "o-",
            color="gray",
            label="fixed p_tar (lan)",
        )
        for profile, configs in summary.items():
            for c, v in configs.items():
                if c.startswith("target@") and family in v and v[family]["accuracy"] is not None:
                    ax.scatter(100 * v[family]["offload_rate"], 100 * v[family]["accuracy"], marker="x")
                    ax.annotate(
                        f"{c} {profile}",
                        (100 * v[family]["offload_rate"], 100 * v[family]["accuracy"]),
                        fontsize=6,
                    )
        for a in TARGETS:
            ax.axhline(100 * a, ls=":", color="k", lw=0.8)
        ax.set_title(family)
        ax.set_xlabel("offload rate (%)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_offload.png", dpi=110)
    plt.close(fig)

    path = out / "switch.csv"
    if path.is_file() and json.loads((out / "switch_meta.json").read_text()).get("switch_at") is not None:
        with path.open() as f:
            rows = list(csv.DictReader(f))
        at = json.loads((out / "switch_meta.json").read_text())["switch_at"]
        off = np.array([int(r["offloaded"]) for r in rows], float)
        expected = [float(r["expected_ms"]) if r["expected_ms"] else np.nan for r in rows]
        fig, ax = plt.subplots(figsize=(8, 3.6))
        rate = np.convolve(off, np.ones(SWITCH_WINDOW) / SWITCH_WINDOW, mode="valid")
        ax.plot(
            np.arange(SWITCH_WINDOW - 1, len(off)), 100 * rate, label=f"offload rate (last {SWITCH_WINDOW})"
        )
        ax.axvline(at, color="red", ls="--", label="lan -> paris")
        ax.set_xlabel("request")
        ax.set_ylabel("offload rate (%)")
        right = ax.twinx()
        right.plot(expected, ".", ms=3, color="gray", label="expected offload (ms)")
        right.set_ylabel("router's expected offload time (ms)")
        ax.legend(loc="upper right", fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "link_switch.png", dpi=110)
        plt.close(fig)


def markdown(result: dict) -> str:
    lines = ["# Offload when it pays: fixed p_tar against accuracy targets and the network-aware rule", ""]
    lines += [f"Command: `{result['command']}`", "", "## What the issue asks", ""]
    lines += ["| check | result |", "|---|---|"]
    for c in result["target_checks"]:
        fixed = c["fixed_offload_at_that_accuracy"]
        lines.append(
            f"| {c['mode']} on {c['profile']}, {c['family']}: accuracy >= "
            f"{c['target'] - ACCURACY_SLACK:.3f}, offload <= "
            f"fixed's at that accuracy | {c['accuracy']}, offload {c['offload_rate']} vs "
            f"{'n/a' if fixed is None else f'{fixed:.3f}'}: {'ok' if c['ok'] else 'MISSED'} |"
        )
    d = result["deadline_check"]
    if d and "note" in d:
        lines.append(f"| paris, deadline 150 ms | {d['note']}: MISSED |")
    elif d:
        lines.append(
            "| paris, deadline 150 ms: max latency <= 160 ms, mean <= half the fixed rule's, "
            "accuracy within 0.5 pt | "
            f"max {d['net']['max_ms']} ms, mean {d['net']['mean_ms']} vs {d['fixed']['mean_ms']} ms "
            f"(ratio {d['mean_ratio']}), accuracy {d['net']['accuracy']} vs {d['fixed']['accuracy']}: "
            f"{'ok' if d['ok'] else 'MISSED'} |"
        )
    s = result["switch_check"]
    if s and "note" in s:
        lines.append(f"| link switch lan -> paris | {s['note']}: MISSED |")
    elif s:
        lines.append(
            f"| link switch lan -> paris: offload rate settles within {s['limit']} requests | "
            f"{s['offload_rate_before']:.3f} -> {s['offload_rate_after']:.3f}, settled within "
            f"{s['settled_within_requests']} requests: {'ok' if s['ok'] else 'MISSED'} |"
        )
    for profile, configs in result["summary"].items():
        lines += [
            "",
            f"## {profile}",
            "",
            "| config | family | n | accuracy | offload | degraded | mean ms | p95 ms | max ms |",
        ]
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for c, fams in configs.items():
            for fam, v in fams.items():
                lines.append(
                    f"| {c} | {fam} | {v['n']} | {v['accuracy']} | {v['offload_rate']} | "
                    f"{v['degraded_rate']} | {v['mean_ms']} | {v['p95_ms']} | {v['max_ms']} |"
                )
    lines += ["", "Plots: `accuracy_vs_offload.png`, `link_switch.png`.", ""]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.adaptive.report", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--out", default="docs/results/adaptive", help="the folder of benchmarks.adaptive's records"
    )
    p.add_argument("--no-plots", action="store_true")
    return p


def main(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    summary = summarise(load(out))
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    result = {
        "command": run.get("command", "python -m benchmarks.adaptive"),
        "seconds": run.get("seconds"),
        "target_checks": target_checks(summary),
        "deadline_check": deadline_check(summary),
        "switch_check": switch_check(out),
        "summary": summary,
    }
    result["all_ok"] = all(c["ok"] for c in result["target_checks"]) and all(
        (result[k] or {"ok": False})["ok"] for k in ("deadline_check", "switch_check")
    )
    write_json(out / "adaptive.json", result)
    (out / "adaptive.md").write_text(markdown(result))
    if not args.no_plots:
        plots(summary, out)
    print(f"{out}/adaptive.md: {'every check holds' if result['all_ok'] else 'a check is MISSED'}")
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser))
