"""The archive benchmark's ratios and tables."""

from __future__ import annotations

import math

from bench.archive_report import (
    OURS,
    PLAIN,
    comparison_table,
    cost_table,
    machine_table,
    object_table,
    per_instance,
    ratio,
)


def test_ratio_is_above_one_when_ours_is_better() -> None:
    assert ratio("ingest_4c_inst_s", 100.0, 50.0) == 0.5
    assert ratio("frame_p50_ms", 50.0, 100.0) == 0.5  # a latency: plain/ours
    assert math.isnan(ratio("wado_study_mb_s", 0.0, 10.0))


def test_comparison_table_has_both_layouts_side_by_side() -> None:
    results = {
        "fair": {PLAIN: {"ingest_4c_inst_s": 120.0}, OURS: {"ingest_4c_inst_s": 60.0}},
        "shared": {PLAIN: {"ingest_4c_inst_s": 100.0}, OURS: {"ingest_4c_inst_s": 40.0}},
    }
    lines = comparison_table(results, ["fair", "shared"])
    assert "fair: plain" in lines[0] and "shared: plain" in lines[0]
    row = lines[2].split()
    assert row[:4] == ["ingest_4c_inst_s", "|", "120.0", "60.0"]
    assert "0.50x" in lines[2] and "0.40x" in lines[2] and lines[2].endswith(">= 0.80")


def test_per_instance_divides_cpu_and_bytes() -> None:
    got = per_instance({"orthanc": 3.0, "postgres": 0.6}, {"orthanc": 600_000}, 300)
    assert got["orthanc"] == {"cpu_ms": 10.0, "write_kb": 2.0}
    assert got["postgres"] == {"cpu_ms": 2.0, "write_kb": 0.0}


def _entry(orthanc: float, weed: float) -> dict:
    groups = {"orthanc": {"cpu_ms": orthanc, "write_kb": 0.0}}
    groups["seaweedfs"] = {"cpu_ms": weed, "write_kb": 1050.0}
    return {"groups": groups, "objects": 2.0, "object_kb": 527.0}


def test_cost_table_rows_and_totals() -> None:
    cost = {"fair": {OURS: {"ingest 4c": _entry(8.0, 4.5)}}}
    lines = cost_table(cost, ["fair"], "cpu_ms", "CPU")
    assert lines[0] == "CPU"
    row = lines[2].split()
    assert row[:5] == ["fair", "encrypted", "S3", "ingest", "4c"]
    assert row[5:] == ["8.00", "4.50", "0.00", "0.00", "0.00", "12.50"]


def test_object_table_reports_objects_and_weed_bytes_per_object() -> None:
    cost = {"fair": {OURS: {"ingest 4c": _entry(8.0, 4.5)}, PLAIN: {"ingest 4c": {}}}}
    lines = object_table(cost, ["fair"])
    assert lines[2].split() == ["fair", "ingest", "4c", "2.00", "527.0", "525.0"]


def test_machine_table_reads_cpus_from_json_keys_too() -> None:
    share = {"busy": 91.6, "iowait": 2.0, "steal": 0.4}
    entry = {"groups": {}, "cpus": {"0": share, "1": {"busy": 40, "iowait": 0, "steal": 0}}}
    lines = machine_table({"fair": {OURS: {"ingest 4c": entry}}}, ["fair"])
    assert "cpu0 busy/iowait/steal %" in lines[1] and "cpu1" in lines[1]
    assert "92 / 2 / 0" in lines[2] and lines[2].endswith("40 / 0 / 0")
