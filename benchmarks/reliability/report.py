"""reliability.md: the requirements, then one section per part (fuzz, faults, soak, connection
abuse), each naming the invocation that produced it."""

from __future__ import annotations

from pathlib import Path

from benchmarks.lib import target


def write_markdown(r: dict, path: Path) -> None:
    lines = [
        "# Reliability: fuzzing, faults, soak and connection abuse against the live system",
        "",
        f"Invocations that wrote this file: {len(r.get('invocations', []))} (listed in reliability.json); "
        "each part names the one that produced it.",
        "",
    ]
    if "checks" in r:
        lines += ["## Requirements", "", "| requirement | met |", "|---|---|"]
        lines += [f"| {k} | {_yes_no(v)} |" for k, v in r["checks"].items()]
        top = r.get("router_rss_mb_max_all")
        lines += [
            "",
            (
                f"Router RSS, largest over every part sampled: **{top} MB** "
                f"(in {r.get('router_rss_mb_max_all_in')})"
                if top is not None
                else "Router RSS: not sampled"
            )
            + (
                f"; not sampled in: {', '.join(r['router_rss_not_sampled_in'])}"
                if r.get("router_rss_not_sampled_in")
                else ""
            )
            + ".",
            "",
        ]
    if "fuzz" in r:
        f = r["fuzz"]
        deaths = (
            f"{f['worker_deaths']} worker deaths"
            if f.get("worker_deaths") is not None
            else f"worker deaths {f.get('worker_deaths_note', 'not observed')}"
        )
        by_target = f.get("inputs_by_target") or {
            "router": f.get("router_inputs"),
            "cloud": f.get("cloud_inputs"),
        }  # (files written before the fuzz had four targets)
        lines += [
            "## Fuzz",
            "",
            f"Produced by: {target.describe(f.get('produced_by'))}",
            "",
            f"{f['inputs']} inputs (seed {f.get('seed', 0)}; "
            + ", ".join(f"{n} to the {t}" for t, n in by_target.items())
            + f"{'; ' + f['cloud_note'] if f.get('cloud_note') else ''}): "
            f"**{f['status_5xx']} 5xx, {deaths}, {f['hung']} hung**; "
            f"servers still correct afterwards: **{f['still_correct_after']}**"
            + (f" (against {against})" if (against := f.get("still_correct_checked_against")) else "")
            + "."
            + (
                " A valid request to each tier after the fuzz: "
                + ", ".join(f"{t} {c}" for t, c in f["control_after"].items())
                + "."
                if f.get("control_after")
                else ""
            )
            + _router_line(f),
            "",
        ]
        lines += [f"- {t} skipped: {why}" for t, why in f.get("skipped_targets", {}).items()]
        per = f.get("statuses_by_target") or {"all": f["statuses"]}
        codes = sorted({c for counts in per.values() for c in counts})
        lines += [
            "",
            "| target | inputs | " + " | ".join(codes) + " |",
            "|---|---|" + "---|" * len(codes),
        ]
        lines += [
            f"| {t} | {sum(counts.values())} | " + " | ".join(str(counts.get(c, 0)) for c in codes) + " |"
            for t, counts in per.items()
        ]
        lines.append("")
    if "faults" in r:
        ran = [x for x in r["faults"] if "skipped" not in x]
        skipped = [x for x in r["faults"] if "skipped" in x]
        runs: list = []
        for x in r["faults"]:
            if x.get("produced_by") not in runs:
                runs.append(x.get("produced_by"))
        lines += ["## Faults", ""]
        if ran:
            lines += [
                "| scenario | sent | correct | wrong | degraded | clear errors | lost | "
                "longest (s) | deadline (s) | error statuses | router RSS max (MB) | run |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {x['scenario']} | {x['sent']} | {x['correct']} | {x['wrong']} | {x['degraded']} | "
                f"{x['errors']} | {x['lost']} | {x['longest_s']} | {x['deadline_s']} | "
                f"{', '.join(x['error_statuses'])} | {_dash(x.get('router_rss_mb_max'))} | "
                f"[{runs.index(x.get('produced_by')) + 1}] |"
                for x in ran
            ]
            lines += [
                "",
                "`wrong` are answers whose class is not the label: the model's own error, not a fault.",
                "",
            ]
        for x in skipped:
            lines.append(
                f"- {x['scenario']}: skipped [{runs.index(x.get('produced_by')) + 1}]: {x['skipped']}"
            )
        if skipped:
            lines.append("")
        lines += [f"[{i + 1}] {target.describe(by)}  " for i, by in enumerate(runs)]
        lines.append("")
    if "soak" in r:
        s = r["soak"]
        rss = (
            f"RSS growth from minute {s.get('rss_growth_from_s', 60) / 60:g} to the end at most "
            f"**{100 * (s['rss_growth_max'] or 0):.1f} %**"
            if s["rss"]
            else f"RSS {s.get('rss_note', 'not sampled')}"
        )
        lines += [
            "## Soak",
            "",
            f"Produced by: {target.describe(s.get('produced_by'))}",
            "",
            f"{s['minutes']} min, {s['clients']} clients, {s['requests']} requests: "
            f"**{s['errors']} errors**, {rss}, p99 first/last minute {s['p99_first_last_ms']} ms."
            + _router_line(s),
            "",
        ]
        if s.get("offloaded_share") is not None:
            lines[-2] += f" {100 * s['offloaded_share']:.1f} % of the answers were offloaded."
        if s.get("cloud_endpoints"):
            lines[-2] += (
                " Offloads answered per cloud endpoint: "
                + ", ".join(
                    f"{n} ({c['kind']}) {c['answered']} ({c['failed']} failed)"
                    for n, c in s["cloud_endpoints"].items()
                )
                + "."
            )
        for e in s.get("error_examples", []):
            lines.insert(
                len(lines) - 1,
                f"- failed request in minute {e['minute']}: {e['status']} after {e['seconds']} s: "
                f"{e['reason'] or '-'}",
            )
        lines += soak_process_table(s)
        if s.get("plot"):
            lines += [f"![every process over the soak]({s['plot']})", ""]
    if "abuse" in r:
        lines += abuse_markdown(r["abuse"])
    path.write_text("\n".join(lines))


def soak_process_table(s: dict) -> list[str]:
    """Per process: RSS growth over the measured span, and RSS, PSS, threads and open files at the
    first and the last minute's sample."""
    per = s.get("processes_per_minute") or []
    if not per:
        return [
            f"- {k}: {v['after_warmup_mb']} -> {v['end_mb']} MB ({100 * v['growth']:+.1f} %)"
            for k, v in s["rss"].items()
        ] + [""]
    first, last = per[0]["processes"], per[-1]["processes"]
    lines = [
        f"| process | RSS from minute {s.get('rss_growth_from_s', 60) / 60:g} to the end (MB) | growth | "
        f"RSS min {per[0]['minute']} / {per[-1]['minute']} (MB) | PSS (MB) | threads | open files |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(set(first) | set(last) | set(s["rss"])):
        g = s["rss"].get(name)
        a, b = first.get(name, {}), last.get(name, {})

        def pair(key, a=a, b=b):
            return f"{a.get(key, '-')} / {b.get(key, '-')}"

        span = f"{g['after_warmup_mb']} -> {g['end_mb']}" if g else "-"
        growth = f"{100 * g['growth']:+.1f} %" if g else "-"
        lines.append(
            f"| {name} | {span} | {growth} | {pair('rss_mb')} | {pair('pss_mb')} | "
            f"{pair('threads')} | {pair('open_files')} |"
        )
    return [*lines, ""]


def abuse_markdown(a: dict) -> list[str]:
    lines = ["## Connection abuse", "", f"Produced by: {target.describe(a.get('produced_by'))}", ""]
    if "skipped" in a:
        return [*lines, f"Skipped: {a['skipped']}", ""]
    scale = "" if a["scale"] == 1 else f" at scale {a['scale']:g} (not the required counts)"
    lines += [
        f"Each scenario held for {a['seconds']:g} s{scale}; router limits {a['max_in_flight']} requests in "
        f"flight, {a['max_body_bytes']} body bytes. One control request a second (a fresh connection, "
        f"10 s timeout). Passes with control p99 under {a['control_p99_limit_ms']:g} ms, 0 requests without "
        f"an answer, the router's threads and RSS measured and its RSS under {a['router_rss_limit_mb']:g} MB "
        "(the burst: every answer 200 or a 503 with Retry-After). "
        + (f"Router threads and RSS {a['router_note']}. " if a.get("router_note") else "")
        + f"All passed: {_yes_no(a['passed'])}.",
        "",
        "| scenario | abusers | control answered | control statuses | control p50 / p99 / max (ms) | "
        "without answer | router threads max | router RSS max (MB) | dropped by server | passed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in a["scenarios"]:
        c = s["control"]
        failed = [k for k, v in s["checks"].items() if v is False]
        lines.append(
            f"| {s['scenario']} | {s['sockets']} | {c['answered']}/{c['sent']} | "
            f"{', '.join(f'{k}: {v}' for k, v in c['status_counts'].items()) or '-'} | "
            f"{_dash(c['p50_ms'])} / {_dash(c['p99_ms'])} / {_dash(c['max_ms'])} | {s['without_answer']} | "
            f"{_dash(s.get('router_threads_max'))} | {_dash(s.get('router_rss_mb_max'))} | "
            f"{_dash(s.get('dropped_by_server'))} | {_yes_no(s['passed'])}"
            + (f" (failed: {', '.join(failed)})" if failed else "")
            + " |"
        )
    burst = next((s for s in a["scenarios"] if s["scenario"] == "overload_burst"), None)
    if burst:
        lines += [
            "",
            f"Overload burst: {burst['clients']} clients, {burst['requests_sent']} requests, answers "
            f"{burst['status_counts']} ({burst['with_retry_after']} 503 with Retry-After), "
            f"{burst['burst_without_answer']} without an answer.",
        ]
    lines.append("")
    return lines


def _dash(v) -> str:
    return "-" if v is None else str(v)


def _yes_no(v) -> str:
    return {True: "yes", False: "**no**", None: "not measured"}[v]


def _router_line(part: dict) -> str:
    if part.get("router_rss_mb_max") is None:
        return ""
    return (
        f" Router: RSS max {part['router_rss_mb_max']} MB, threads max {part['router_threads_max']} "
        f"({part.get('router_samples')} samples)."
    )
