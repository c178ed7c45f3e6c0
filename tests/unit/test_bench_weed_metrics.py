"""The archive bench's reading of SeaweedFS's Prometheus counters (bench.weed_metrics)."""

from __future__ import annotations

import pytest

from bench.archive_report import request_line
from bench.weed_metrics import S3_REQUESTS, counters, parse, per_instance, totals

PAGE = """\
# HELP SeaweedFS_s3_request_total Counter of s3 requests.
# TYPE SeaweedFS_s3_request_total counter
SeaweedFS_s3_request_total{bucket="imaging-archive",code="200",type="PUT"} 600
SeaweedFS_s3_request_total{bucket="imaging-archive",code="503",type="PUT"} 2
SeaweedFS_s3_request_total{bucket="imaging-archive",code="200",type="HEAD"} 3
SeaweedFS_s3_request_total{bucket="",code="200",type="LIST"} 1.5e1 1700000000000
SeaweedFS_filerStore_request_total{store="leveldb2",type="insert"} 600
SeaweedFS_filerStore_request_total{store="leveldb2",type="find"} 1200
SeaweedFS_s3_request_seconds_bucket{bucket="imaging-archive",type="PUT",le="0.005"} 10
SeaweedFS_label_escapes{path="a \\"quoted\\" \\\\ name",type="x"} 1
go_goroutines 211
"""


def test_parse_reads_labels_values_and_timestamps_and_skips_comments() -> None:
    samples = parse(PAGE)
    assert len(samples) == 9
    assert samples[0] == (
        S3_REQUESTS,
        {"bucket": "imaging-archive", "code": "200", "type": "PUT"},
        600.0,
    )
    assert samples[3][2] == 15.0  # exponent, and the timestamp is not the value
    assert samples[7][1]["path"] == 'a "quoted" \\ name'
    assert samples[8] == ("go_goroutines", {}, 211.0)


def test_parse_refuses_a_line_that_is_no_sample() -> None:
    with pytest.raises(ValueError, match="not a Prometheus sample"):
        parse('SeaweedFS_s3_request_total{type="PUT"}\n')


def test_totals_sum_every_code_and_bucket_per_type_and_ignore_histograms() -> None:
    assert totals(parse(PAGE), S3_REQUESTS, "type") == {"PUT": 602.0, "HEAD": 3.0, "LIST": 15.0}


def test_per_instance_gives_deltas_and_drops_types_that_did_not_move() -> None:
    before = counters(parse(PAGE))
    after_page = PAGE.replace('type="PUT"} 600', 'type="PUT"} 1200').replace(
        'type="insert"} 600', 'type="insert"} 900'
    )
    moved = per_instance(counters(parse(after_page)), before, 300)
    assert moved["SeaweedFS_s3_request_total"] == {"PUT": 2.0}
    assert moved["SeaweedFS_filerStore_request_total"] == {"insert": 1.0}
    assert moved["SeaweedFS_volumeServer_request_total"] == {}
    # A type seen only after the phase counts from zero.
    first = per_instance({S3_REQUESTS: {"DELETE": 30.0}}, {}, 300)
    assert first[S3_REQUESTS] == {"DELETE": 0.1}


def test_request_line_names_each_component() -> None:
    line = request_line(
        {
            "SeaweedFS_s3_request_total": {"PUT": 2.0},
            "SeaweedFS_filerStore_request_total": {"find": 4.0, "insert": 2.0},
        }
    )
    assert line == "S3 PUT 2.00; filer store find 4.00 insert 2.00"
    assert request_line({}) == "none"


def test_seaweedfs_serves_its_metrics_on_loopback_on_its_own_port(tmp_path) -> None:
    from types import SimpleNamespace

    from deploy.stack.ports import SEAWEEDFS_PORTS
    from deploy.stack.services.seaweedfs import SeaweedFS

    ports = {name: 20000 + i for i, name in enumerate(SEAWEEDFS_PORTS)}
    ctx = SimpleNamespace(ports=ports, state=tmp_path, settings=SimpleNamespace(venv_bin=tmp_path))
    argv = SeaweedFS(ctx).weed_argv()  # type: ignore[arg-type]
    assert f"-metricsPort={ports['weed_metrics']}" in argv
    assert "-metricsIp=127.0.0.1" in argv
    weed = SeaweedFS(ctx)  # type: ignore[arg-type]
    weed.extra_args = ("-filer.saveToFilerLimit=4096",)
    assert weed.weed_argv()[-1] == "-filer.saveToFilerLimit=4096"
    assert SeaweedFS.extra_args == ()  # the class default stays: one instance was changed
