"""The WAN bench's report (bench/wan_bench.py): the figures of each run, printed from the
result the edge side returned (or a saved one, `python -m bench.wan_bench --report FILE`).
"""

from __future__ import annotations

import json
from typing import Any

from bench.netns import utilisation

CONNECTIONS = "TLS connections to central"  # counted by the relay, with the CPU figures
EDGE_ORTHANC = "edge Orthanc (receive, store, hash, TLS upload)"  # bench.wan_edge_side


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _per_instance(phases: list[dict[str, Any]], slices: int) -> dict[str, float]:
    total: dict[str, float] = {}
    for phase in phases:
        for name, cpu in phase["cpu_s"].items():
            total[name] = total.get(name, 0.0) + cpu
    return {name: 1000 * cpu / slices for name, cpu in total.items()}


def report_run(r: dict[str, Any]) -> list[str]:
    name, rate_mbit = r["layout"], r["rate_mbit"]
    n = r["slices"]
    link_bps = r["link_mbit_s"] * 1e6 / 8
    p_cs, p_fw = r["plain_cstore"], r["plain_forward"]
    o_cs, o_after = r["ours_cstore"], r["ours_after_cstore"]
    b_cs, drain = r["backlog_cstore"], r["backlog_drain"]
    # the local copies replaced after delivery (deferred, imgcloud.in_place); none before
    o_settle, b_settle = r.get("ours_settle"), r.get("backlog_settle")
    plain_e2e = p_cs["wall_s"] + p_fw["wall_s"]
    ours_e2e = o_cs["wall_s"] + o_after["wall_s"]
    p_link = utilisation(p_cs["samples"] + p_fw["samples"], link_bps)
    o_link = utilisation(o_cs["samples"] + o_after["samples"], link_bps)
    d_link = utilisation(drain["samples"], link_bps)  # not the run's own: same rule
    floor_s = r["backlog_bytes_sent_mb"] * 1e6 / link_bps
    tbf = f"tbf {rate_mbit} Mbit/s" if rate_mbit else "no tbf"
    where = (
        f"edge side (edge Orthanc / plain sender, storescu, bench driver) on CPU "
        f"{r['edge_cpus']}, central side (stack, TLS relay, plain receiver, sink) on CPU "
        f"{r['central_cpus']}"
        if name == "fair"
        else "every process on every CPU (today's layout)"
    )
    w = 50

    def row(label: str, plain: float, ours: float, target: str) -> str:
        return f"{label:<{w}}{plain:>9.2f}{ours:>9.2f}{_ratio(plain, ours):>9}  {target}"

    settings = json.dumps(r.get("edge_settings") or {})
    variant = f"edge {r['variant']} {settings}: " if "variant" in r else ""
    lines = [
        f"== {variant}{tbf}, layout {name}: {where}",
        f"link: one plain TCP stream put {r['probed_mbit_s']} Mbit/s on the wire; "
        f"rates below are against {r['link_mbit_s']} Mbit/s",
        f"{'':<{w}}{'plain':>9}{'ours':>9}{'plain/ours':>11}  target",
        row("C-STORE into the edge (s)", p_cs["wall_s"], o_cs["wall_s"], ">= 0.9x"),
        row("  same, forwarding off (backlog study) (s)", p_cs["wall_s"], b_cs["wall_s"], ""),
        row("live: C-STORE start -> study at central (s)", plain_e2e, ours_e2e, ">= 2x"),
        row("  of which after the last C-STORE (s)", p_fw["wall_s"], o_after["wall_s"], ""),
        row("backlog: waiting study -> at central (s)", p_fw["wall_s"], drain["wall_s"], ">= 2x"),
        f"{'backlog vs compressed-bytes floor':<{w}}{floor_s:>9.2f}{drain['wall_s']:>9.2f}"
        f"{drain['wall_s'] / floor_s:>8.2f}x  <= 1.3x (floor = {r['backlog_bytes_sent_mb']} MB"
        f" of instances / {r['link_mbit_s']} Mbit/s; ratio = drain/floor)",
        f"{'link in use while sending':<{w}}{p_link['utilisation']:>9.1%}"
        f"{'':>9}  live {o_link['utilisation']:.1%} ({o_link['mean_mbit_s']} Mbit/s), "
        f"backlog {d_link['utilisation']:.1%} ({d_link['mean_mbit_s']} Mbit/s); plain "
        f"{p_link['mean_mbit_s']} Mbit/s  target >= 85 %",
        f"{'bytes on the wire, edge -> central (MB)':<{w}}{p_link['wire_mb']:>9.1f}"
        f"{'':>9}  live {o_link['wire_mb']:.1f}, backlog {d_link['wire_mb']:.1f} "
        f"(instances: live {r['ours_live']['bytes_sent_mb']}, backlog "
        f"{r['backlog_bytes_sent_mb']}; study {r['study_mb']} MB uncompressed)",
        f"ours live: queued {r['ours_live']['queued_after_s']} s after the first C-STORE "
        f"began, delivered and confirmed {r['ours_live']['delivered_after_cstore_s']} s after "
        "the last (StableAge 1 s)",
    ]
    if o_settle is not None and b_settle is not None:
        lines.append(
            "local copies replaced by the compressed ones: live "
            f"{o_settle['wall_s']:.2f} s after delivery, backlog {b_settle['wall_s']:.2f} s "
            "after the drain (their CPU is in 'ours live' and 'backlog replace')"
        )
    columns = {
        "plain live": _per_instance([p_cs, p_fw], n),
        "ours live": _per_instance([o_cs, o_after, *([o_settle] if o_settle else [])], n),
        "backlog C-STORE": _per_instance([b_cs], n),
        "backlog drain": _per_instance([drain], n),
    }
    if b_settle is not None:
        columns["backlog replace"] = _per_instance([b_settle], n)
    lines.append(f"{'CPU ms per instance':<{w}}" + "".join(f"{c:>16}" for c in columns))
    connections = {c: col.pop(CONNECTIONS) * n / 1000 for c, col in columns.items()}
    for group in columns["plain live"]:
        values = [col[group] for col in columns.values()]
        if max(values) >= 0.05:
            lines.append(f"  {group:<{w - 2}}" + "".join(f"{v:>16.1f}" for v in values))
    lines.append(
        "TLS connections to central opened (accepted by its TLS endpoint): ours live "
        f"{connections['ours live']:.0f}, backlog drain {connections['backlog drain']:.0f}"
    )
    # The backlog study's whole cost at the edge: its C-STORE (compressed in the background
    # as it arrives) and its drain; receiving it costs about what plain Orthanc's C-STORE
    # cost the plain sender.
    whole = _per_instance([b_cs, drain, *([b_settle] if b_settle else [])], n)
    receive = _per_instance([p_cs], n)["plain Orthanc sender"]
    per_mb = r["backlog_bytes_sent_mb"] / n
    hash_ms = 1000 * per_mb / r["sha256_mb_s"]
    edge_orthanc = whole[EDGE_ORTHANC]
    compress = whole["edge compression workers (CharLS)"]
    phases = "C-STORE + drain + replace" if b_settle else "C-STORE + drain"
    lines.append(
        f"edge CPU per instance of the backlog study ({phases}) "
        f"{edge_orthanc + compress:.1f} ms: compress (CharLS workers) {compress:.1f}; "
        f"receive and store as plain Orthanc does (its C-STORE above) {receive:.1f}; hash "
        f"(SHA-256 of {per_mb * 1000:.0f} kB at {r['sha256_mb_s']:.0f} MB/s, computed) "
        f"{hash_ms:.1f}; the rest of the edge Orthanc (encryption at rest, plugin callbacks, "
        f"reads for the encoder, storing the compressed copy, TLS upload) "
        f"{edge_orthanc - receive - hash_ms:.1f}"
        + (
            f", of which storing the compressed copy after the drain "
            f"{columns['backlog replace'][EDGE_ORTHANC]:.1f}"
            if b_settle
            else ""
        )
        + "; TLS upload alone not separable "
        f"(central's TLS endpoint, the other end, {whole['central: TLS relay']:.1f})"
    )
    return lines


def report(result: dict[str, Any]) -> str:
    first = result["runs"][0]
    lines = [
        f"CT study: {first['slices']} slices, {first['study_mb']} MB uncompressed; veth "
        "between two network namespaces; plain: C-STORE into a plain Orthanc, then peer "
        "store of the uncompressed study over plain HTTP; ours: edge plugin, CharLS before "
        "forwarding, TLS, SHA-256 confirmed at central; plain/ours > 1 means ours is faster",
    ]
    for one in result["runs"]:
        lines += ["", *report_run(one)]
    if "lossless_ratio" in first:
        lines += [
            "",
            "lossless ratio (JPEG-LS) on generated data: "
            + ", ".join(f"{m} {r}:1" for m, r in first["lossless_ratio"].items()),
        ]
    return "\n".join(lines)
