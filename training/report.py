"""Markdown tables and plots of the accuracy experiment (`training.evaluate`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from core import distortions  # noqa: E402

STYLE = {
    "conventional": ("tab:red", "o", "conventional (pristine-trained)"),
    "expert_oracle": ("tab:blue", "s", "expert, true distortion"),
    "expert_routed": ("tab:green", "^", "expert, classifier-routed"),
    "expert_oracle_adapt_bn": ("tab:purple", "s", "expert + adapted BN, true distortion"),
    "expert_routed_adapt_bn": ("tab:olive", "^", "expert + adapted BN, routed"),
}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _index(rows: list[dict], wire: str) -> dict:
    """The rows of one wire by (model, distortion, level, p_tar); rows from before the wire
    column are lossless (PNG)."""
    return {
        (r["model"], r["distortion"], float(r["level"]), float(r["p_tar"])): r
        for r in rows
        if r.get("wire", "png") == wire
    }


def wires_of(rows: list[dict]) -> list[str]:
    """The wires the rows cover, in the order they first appear."""
    return list(dict.fromkeys(r.get("wire", "png") for r in rows))


def _levels(name: str) -> list[float]:
    return [0.0, *map(float, distortions.get(name).levels)]


def markdown(rows: list[dict], summary: dict, p_tar: float = 0.8) -> str:
    wires = wires_of(rows)
    lines = [
        f"# Accuracy experiment: expert branches vs conventional early exit (p_tar {p_tar})",
        "",
        f"{summary['n_images']} {summary['split']} images per cell, sent on each wire "
        f"({', '.join(wires)}: the distorted image as the device encodes it); command:",
        "",
        f"    {summary['command']}",
        "",
        f"Wall time {summary['wall_time_s']:.0f} s. Overall accuracy / P(edge) / edge accuracy "
        f"in %; `routing` is how often the classifier picked the expert of the true distortion.",
        "",
    ]
    for wire in wires:
        lines += [f"## Sent as {wire}", "", *_table(rows, wire, p_tar), ""]
    if any(r["model"] == "expert_fallback" for r in rows):
        lines += [
            "## A type's own expert against its fallback's",
            "",
            "Overall accuracy in %: the type's expert routed by the classifier, the expert the edge "
            "falls back to while the type's own is not registered (`core.distortions`), and the "
            "conventional model.",
            "",
        ]
        for wire in wires:
            lines += [f"### Sent as {wire}", "", *_fallback_table(rows, wire, p_tar), ""]
    lines += [
        "## Calibration on the validation split (ECE per exit, before -> after)",
        "",
        "| model | temperatures | ECE before | ECE after |",
        "|---|---|---|---|",
    ]
    for name, m in summary["models"].items():
        c = m["calibration"]
        lines.append(
            f"| {name} | {' '.join(f'{t:.2f}' for t in c['temperatures'])} | "
            f"{' '.join(f'{e:.3f}' for e in c['ece_before'])} | "
            f"{' '.join(f'{e:.3f}' for e in c['ece_after'])} |"
        )
    return "\n".join(lines) + "\n"


def _fallback_table(rows: list[dict], wire: str, p_tar: float) -> list[str]:
    idx = _index(rows, wire)
    lines = [
        "| distortion | level | routed | fallback | conventional | routed - fallback |",
        "|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["distortion"] for r in rows if r["model"] == "expert_fallback"):
        for level in map(float, distortions.get(name).levels):
            got = [
                idx.get((m, name, level, p_tar)) for m in ("expert_routed", "expert_fallback", "conventional")
            ]
            if None in got:
                continue
            acc = [float(r["overall_acc"]) for r in got]
            cells = [name, f"{level:g}", *map(_pct, acc), f"{100 * (acc[0] - acc[1]):+.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _table(rows: list[dict], wire: str, p_tar: float) -> list[str]:
    """The seed's table form for the rows of one wire."""
    idx = _index(rows, wire)
    models = [m for m in STYLE if any(r["model"] == m for r in rows)]
    lines = []
    head = ["distortion", "level"]
    for m in models:
        short = m.replace("expert_", "").replace("conventional", "conv")
        head += [f"{short} acc", f"{short} P(edge)", f"{short} edge acc"]
    if "expert_routed" in models:
        head.append("routing")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in distortions.DISTORTION_CLASSES[1:]:
        for level in _levels(name):
            key_type = "pristine" if level == 0 else name
            cells = [name if level else f"{name} (pristine)", f"{level:g}"]
            for m in models:
                r = idx.get((m, key_type, level, p_tar))
                cells += [_pct(r and r["overall_acc"]), _pct(r and r["p_edge"]), _pct(r and r["edge_acc"])]
            if "expert_routed" in models:
                r = idx.get(("expert_routed", key_type, level, p_tar))
                cells.append(_pct(r and r["routing_acc"]))
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _type_axes():
    """One panel per routed distortion type, side by side."""
    types = distortions.DISTORTION_CLASSES[1:]
    fig, axes = plt.subplots(1, len(types), figsize=(5 * len(types), 4), sharey=True, squeeze=False)
    return fig, axes[0]


def plot_accuracy_vs_level(rows: list[dict], path: Path, p_tar: float = 0.8) -> None:
    """Overall accuracy per level, one line per model; the first wire solid, the others dashed."""
    wires = wires_of(rows)
    fig, axes = _type_axes()
    for ax, name in zip(axes, distortions.DISTORTION_CLASSES[1:], strict=True):
        for wire, style in zip(wires, ("-", "--", ":", "-."), strict=False):
            idx = _index(rows, wire)
            for model, (color, marker, label) in STYLE.items():
                pts = [
                    (lvl, idx.get((model, "pristine" if lvl == 0 else name, lvl, p_tar)))
                    for lvl in _levels(name)
                ]
                pts = [(lvl, r["overall_acc"]) for lvl, r in pts if r]
                if pts:
                    tag = label if len(wires) == 1 else f"{label}, {wire}"
                    ax.plot(*zip(*pts, strict=True), style, color=color, marker=marker, label=tag)
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel(f"{distortions.get(name).unit} (0 = pristine)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"overall accuracy at p_tar {p_tar}")
    axes[0].legend(fontsize=6 if len(wires) > 1 else 8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_p_edge_vs_ptar(rows: list[dict], path: Path) -> None:
    """P(edge) against p_tar on the first wire (lossless when it was evaluated)."""
    idx = _index(rows, wires_of(rows)[0])
    p_tars = sorted({float(r["p_tar"]) for r in rows})
    fig, axes = _type_axes()
    for ax, name in zip(axes, distortions.DISTORTION_CLASSES[1:], strict=True):
        levels = _levels(name)
        for level, style in zip(
            (levels[0], levels[len(levels) // 2], levels[-1]), ("-", "--", ":"), strict=True
        ):
            for model in ("conventional", "expert_oracle"):
                color, marker, label = STYLE[model]
                ys = [idx.get((model, "pristine" if level == 0 else name, level, p)) for p in p_tars]
                if all(ys):
                    ax.plot(
                        p_tars,
                        [y["p_edge"] for y in ys],
                        style,
                        color=color,
                        marker=marker,
                        label=f"{label}, {distortions.get(name).unit} {level:g}",
                    )
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("p_tar")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("P(edge): answered by a side branch")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_accuracy_report(rows: list[dict], summary: dict, out: Path) -> None:
    p_tar = 0.8 if any(float(r["p_tar"]) == 0.8 for r in rows) else float(rows[0]["p_tar"])
    (out / "accuracy.md").write_text(markdown(rows, summary, p_tar))
    plot_accuracy_vs_level(rows, out / "accuracy_vs_level.png", p_tar)
    plot_p_edge_vs_ptar(rows, out / "p_edge_vs_ptar.png")
