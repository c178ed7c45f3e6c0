"""Tables of the archive benchmark: figures per layout and side, ratios, cost per instance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

PLAIN, OURS = "plain Orthanc", "encrypted S3"
GROUPS = ("orthanc", "seaweedfs", "postgres", "clients", "others")
TARGETS = {"ingest": ">= 0.80", "wado_study": ">= 0.80", "frame_p50": "p50 < 100 ms"}

# results[layout][side][metric]; cost[layout][side][phase] = Cost as a dict (see below)
Results = Mapping[str, Mapping[str, Mapping[str, float]]]


def ratio(metric: str, plain: float, ours: float) -> float:
    """ours/plain for rates; plain/ours for latencies (_ms), so above 1 is always better."""
    if metric.endswith("_ms"):
        return plain / ours if ours else float("nan")
    return ours / plain if plain else float("nan")


def comparison_table(results: Results, layouts: Sequence[str]) -> list[str]:
    """One row per metric; per layout the plain figure, ours and the ratio, then the target."""
    head = f"{'metric':<22}"
    for layout in layouts:
        head += f" | {layout + ': plain':>14} {'ours':>8} {'ratio':>6}"
    lines = [head + " | target", "-" * (len(head) + 9)]
    metrics = list(results[layouts[0]][PLAIN])
    for metric in metrics:
        row = f"{metric:<22}"
        for layout in layouts:
            plain = results[layout][PLAIN].get(metric, float("nan"))
            ours = results[layout][OURS].get(metric, float("nan"))
            row += f" | {plain:>14.1f} {ours:>8.1f} {ratio(metric, plain, ours):>5.2f}x"
        target = next((t for k, t in TARGETS.items() if metric.startswith(k)), "")
        lines.append(f"{row} | {target}")
    return lines


def per_instance(
    cpu_s: Mapping[str, float], written: Mapping[str, int], instances: int
) -> dict[str, dict[str, float]]:
    """CPU ms and kB written per instance for each group, from deltas over `instances`."""
    return {
        name: {
            "cpu_ms": cpu_s[name] * 1000 / instances,
            "write_kb": written.get(name, 0) / 1000 / instances,
        }
        for name in cpu_s
    }


def cost_table(cost: Mapping, layouts: Sequence[str], field: str, title: str) -> list[str]:
    """cost[layout][side][phase]["groups"][group][field] as one row per layout/side/phase."""
    head = f"{'layout':<7} {'side':<14} {'phase':<12}" + "".join(f" {g:>9}" for g in GROUPS)
    lines = [title, head + f" {'total':>9}"]
    for layout in layouts:
        for side, phases in cost[layout].items():
            for phase, entry in phases.items():
                groups = entry["groups"]
                values = [groups.get(g, {}).get(field, 0.0) for g in GROUPS]
                row = f"{layout:<7} {side:<14} {phase:<12}"
                row += "".join(f" {v:>9.2f}" for v in values) + f" {sum(values):>9.2f}"
                lines.append(row)
    return lines


def object_table(cost: Mapping, layouts: Sequence[str]) -> list[str]:
    """Objects created in the bucket and their stored kB, per instance ingested (ours)."""
    lines = [
        "object store, per instance (bucket delta over the ingest: objects and stored kB)",
        f"{'layout':<7} {'phase':<12} {'objects':>8} {'stored kB':>10} {'weed kB/obj':>12}",
    ]
    for layout in layouts:
        for phase, entry in cost[layout].get(OURS, {}).items():
            if "objects" not in entry:
                continue
            objects, stored = entry["objects"], entry["object_kb"]
            weed_kb = entry["groups"]["seaweedfs"]["write_kb"]
            per_obj = weed_kb / objects if objects else float("nan")
            lines.append(
                f"{layout:<7} {phase:<12} {objects:>8.2f} {stored:>10.1f} {per_obj:>12.1f}"
            )
    return lines


def machine_table(cost: Mapping, layouts: Sequence[str]) -> list[str]:
    """Per phase, how busy each CPU was (whole machine, /proc/stat): busy/iowait/steal %."""
    cpus = sorted(
        {
            int(c)
            for lay in layouts
            for s in cost[lay].values()
            for e in s.values()
            for c in e["cpus"]
        }
    )
    head = f"{'layout':<7} {'side':<14} {'phase':<12}" + "".join(
        f" {'cpu' + str(c) + ' busy/iowait/steal %':>26}" for c in cpus
    )
    lines = ["whole machine during each phase (/proc/stat; all processes and kernel work)", head]
    for layout in layouts:
        for side, phases in cost[layout].items():
            for phase, entry in phases.items():
                row = f"{layout:<7} {side:<14} {phase:<12}"
                for c in cpus:
                    share = entry["cpus"].get(c, entry["cpus"].get(str(c)))
                    cell = f"{share['busy']:.0f} / {share['iowait']:.0f} / {share['steal']:.0f}"
                    row += f" {cell:>26}"
                lines.append(row)
    return lines


# SeaweedFS's counters (bench.weed_metrics) under the names the table prints.
REQUEST_COUNTERS = {
    "SeaweedFS_s3_request_total": "S3",
    "SeaweedFS_filer_request_total": "filer",
    "SeaweedFS_filerStore_request_total": "filer store",
    "SeaweedFS_volumeServer_request_total": "volume",
}


def request_line(requests: Mapping[str, Mapping[str, float]]) -> str:
    """'S3 PUT 2.00 HEAD 0.00; filer ...' for one phase's requests per instance."""
    parts = []
    for counter, label in REQUEST_COUNTERS.items():
        kinds = requests.get(counter, {})
        if kinds:
            parts.append(label + " " + " ".join(f"{k} {v:.2f}" for k, v in kinds.items()))
    return "; ".join(parts) or "none"


def request_table(cost: Mapping, layouts: Sequence[str]) -> list[str]:
    """SeaweedFS's requests per instance by component and type, per layout/side/phase."""
    lines = [
        "SeaweedFS requests per instance (its Prometheus counters, by component and type)",
        f"{'layout':<7} {'side':<14} {'phase':<12} requests",
    ]
    for layout in layouts:
        for side, phases in cost[layout].items():
            for phase, entry in phases.items():
                if "requests" in entry:
                    line = request_line(entry["requests"])
                    lines.append(f"{layout:<7} {side:<14} {phase:<12} {line}")
    return lines
