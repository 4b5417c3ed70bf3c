"""What `benchmarks.peers` writes besides peers.json: the ratios the project tracks (this stack /
peer), peers.csv, peers.md and peers.png."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterator
from pathlib import Path

from benchmarks.peers.measure import CLIENT_CPU, SERVER_CPU


def p50(r: dict, contender: str, path: str) -> float:
    return r[contender][path]["single"]["p50_ms"]


def peak(r: dict, contender: str, path: str) -> float:
    return max(x["throughput_rps"] for x in r[contender][path]["levels"])


def ratios(sizes: dict) -> dict:
    """This stack / peer, for one run of every contender. Against TorchServe eager, the same work on
    both sides: the whole network (this stack's offload path: every stage, the classifier and two
    TorchServe hops; eager: the whole MobileNetV2), with the same TorchServe batching."""
    out = {}
    for size, r in sizes.items():
        out[f"edge_exit_p50_vs_minimal_{size}"] = round(
            p50(r, "this_stack", "edge_exit") / p50(r, "minimal", "edge_exit"), 2
        )
        out[f"offload_p50_vs_minimal_{size}"] = round(
            p50(r, "this_stack", "offload") / p50(r, "minimal", "offload"), 2
        )
        out[f"throughput_vs_minimal_{size}"] = round(
            peak(r, "this_stack", "edge_exit") / peak(r, "minimal", "edge_exit"), 2
        )
        if "torchserve_eager" in r:
            out[f"throughput_vs_torchserve_eager_{size}"] = round(
                peak(r, "this_stack", "offload") / peak(r, "torchserve_eager", "whole_network"), 2
            )
            out[f"offload_p50_vs_torchserve_eager_{size}"] = round(
                p50(r, "this_stack", "offload") / p50(r, "torchserve_eager", "whole_network"), 2
            )
    return out


SUMMED = ("errors", "same", "of", "n")  # counts add up over runs; every other figure is a median


def median_run(runs: list) -> object:
    """One run's shape with every figure the median over `runs` (counts summed): what the tables
    and the plot show when every contender was measured several times."""
    first = runs[0]
    if isinstance(first, dict):
        return {
            k: (sum(r[k] for r in runs) if k in SUMMED else median_run([r[k] for r in runs])) for k in first
        }
    if isinstance(first, list):
        return [median_run(list(items)) for items in zip(*runs, strict=True)]
    if isinstance(first, bool) or not isinstance(first, int | float) or all(r == first for r in runs):
        return first  # labels, flags, and figures every run agrees on (a concurrency level) as they are
    return round(float(statistics.median(runs)), 2)


def summarise_ratios(runs: list[dict]) -> dict:
    """Every ratio over the runs: its median (the figure the project tracks), each run's value and
    the spread (min, max)."""
    per_run = [ratios(run) for run in runs]
    return {
        "ratios": {k: round(statistics.median(r[k] for r in per_run), 2) for k in per_run[0]},
        "ratio_runs": {k: [r[k] for r in per_run] for k in per_run[0]},
        "ratio_spread": {k: [min(r[k] for r in per_run), max(r[k] for r in per_run)] for k in per_run[0]},
    }


def rows(result: dict) -> Iterator[dict]:
    for size, r in result["sizes"].items():
        for contender, paths in r.items():
            for path, m in paths.items():
                if path in ("agreement", "rss_mb"):
                    continue
                for lv in m["levels"]:
                    yield {
                        "size": size,
                        "contender": contender,
                        "path": path,
                        "single_p50_ms": m["single"]["p50_ms"],
                        "single_p99_ms": m["single"]["p99_ms"],
                        "clients": lv["concurrency"],
                        "throughput_rps": lv["throughput_rps"],
                        "p99_ms": lv["p99_ms"],
                        "errors": lv.get("errors", 0),
                    }


def write_csv(result: dict, path: Path) -> None:
    data = list(rows(result))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(data[0]))
        w.writeheader()
        w.writerows(data)


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "# This stack beside its peers",
        "",
        f"`{result['command']}` ({result['machine']}; servers on "
        f"CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}; {result['weights']}; {result['seconds']} s).",
        "",
        "Every figure is the median over the runs (counts summed); `peers.json` keeps each run.",
        "",
        "| size | contender | path | single p50 ms | single p99 ms | peak req/s | p99 ms at peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, r in result["sizes"].items():
        for contender, paths in r.items():
            for p, m in paths.items():
                if p in ("agreement", "rss_mb"):
                    continue
                best = max(m["levels"], key=lambda x: x["throughput_rps"])
                lines.append(
                    f"| {size} | {contender} | {p} | {m['single']['p50_ms']} | {m['single']['p99_ms']} | "
                    f"{best['throughput_rps']} (c={best['concurrency']}) | {best['p99_ms']} |"
                )
    lines += ["", "RSS (MB) of every server process:", ""]
    for size, r in result["sizes"].items():
        for contender, paths in r.items():
            if "rss_mb" in paths:
                total = round(sum(paths["rss_mb"].values()), 1)
                lines.append(f"- {size} px {contender}: {total} MB in all ({paths['rss_mb']})")
    runs = len(result.get("runs", [None]))
    lines += [
        "",
        f"Ratios (this stack / peer; median of {runs} runs of every contender in this invocation, "
        "each run's value and the spread):",
        "",
    ]
    lines += [
        f"- `{k}`: **{v}** (runs {result['ratio_runs'][k]}, spread {result['ratio_spread'][k]})"
        if "ratio_runs" in result
        else f"- `{k}`: {v}"
        for k, v in result["ratios"].items()
    ]
    lines += [
        "",
        f"Answers of `minimal` and `this_stack` equal to `in_process` (expert, exit, class) on the "
        f"checked images: {result['agreement_ok']}.",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(result["sizes"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for contender, paths in result["sizes"][size].items():
            for p, m in paths.items():
                if p in ("agreement", "rss_mb") or len(m["levels"]) < 2:
                    continue
                xs = [lv["concurrency"] for lv in m["levels"]]
                ax.plot(
                    xs, [lv["throughput_rps"] for lv in m["levels"]], marker="o", label=f"{contender} {p}"
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("answers / s")
        ax.set_title(f"{size} px, servers on one core")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
