"""The WAN bench's link arithmetic (bench.netns), its CPU layouts and pinning, and its
report's figures (bench.wan_bench), on made-up samples and results."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from bench.netns import utilisation
from bench.wan_bench import ALL_CPUS, layout_cpus, parse_variant, pin
from bench.wan_report import CONNECTIONS, report

MB = 1_000_000


def samples(rates: list[float], step: float = 0.1) -> list[tuple[float, int]]:
    """tx_bytes samples every `step` s, sending `rates[i]` bytes/s in interval i."""
    out, total = [(0.0, 0)], 0.0
    for index, rate in enumerate(rates):
        total += rate * step
        out.append(((index + 1) * step, int(total)))
    return out


def test_utilisation_is_the_mean_rate_over_the_busy_window_only() -> None:
    link = 10 * MB  # bytes/s
    # idle 1 s, 2 s at the full rate with 0.5 s at 10 % in the middle, idle 1 s
    rates = [0.0] * 10 + [link] * 10 + [0.1 * link] * 5 + [link] * 10 + [0.0] * 10
    got = utilisation(samples(rates), link)
    assert got["busy_s"] == pytest.approx(2.5)
    assert got["utilisation"] == pytest.approx((2.0 + 0.05) / 2.5, abs=0.002)
    assert got["mean_mbit_s"] == pytest.approx(link * 0.82 * 8 / MB, abs=0.5)
    assert got["wire_mb"] == pytest.approx(20.5, abs=0.01)


def test_utilisation_of_an_idle_link_is_zero_and_a_trickle_is_its_share() -> None:
    idle = utilisation(samples([0.0] * 10), 10 * MB)
    assert idle["utilisation"] == 0.0 and idle["busy_s"] == 0.0 and idle["wire_mb"] == 0.0
    trickle = utilisation(samples([0.05 * MB] * 10), 10 * MB)
    assert trickle["utilisation"] == pytest.approx(0.005)
    assert trickle["wire_mb"] == pytest.approx(0.05, abs=0.001)


@pytest.mark.skipif(len(ALL_CPUS) < 2, reason="needs two CPUs")
def test_fair_layout_splits_the_cpus_and_shared_gives_every_one_to_both() -> None:
    edge, central = layout_cpus("fair", min(ALL_CPUS))
    assert edge == {min(ALL_CPUS)} and central == set(ALL_CPUS) - edge
    assert layout_cpus("shared", 0) == (set(ALL_CPUS), set(ALL_CPUS))
    with pytest.raises(SystemExit):
        layout_cpus("fair", max(ALL_CPUS) + 1)


@pytest.mark.skipif(len(ALL_CPUS) < 2, reason="needs two CPUs")
def test_pin_moves_every_thread_and_children_inherit_it() -> None:
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start()"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        cpu = max(ALL_CPUS)
        while len(os.listdir(f"/proc/{child.pid}/task")) < 2:
            pass
        assert pin([child.pid], {cpu}) == 2
        for tid in os.listdir(f"/proc/{child.pid}/task"):
            assert os.sched_getaffinity(int(tid)) == {cpu}
    finally:
        child.kill()
        child.wait()


def phase(wall: float, cpu: dict[str, float], rates: list[float]) -> dict[str, Any]:
    return {"wall_s": wall, "cpu_s": cpu, "samples": samples(rates), "link": {}}


def test_report_prints_the_ratios_floor_and_stages_from_the_phases() -> None:
    link = 12.5 * MB  # 100 Mbit/s
    edge = "edge Orthanc (receive, store, hash, TLS upload)"
    workers = "edge compression workers (CharLS)"
    cpu = {edge: 0.0, workers: 0.0, "central: TLS relay": 0.0, CONNECTIONS: 0.0}
    cpu["plain Orthanc sender"] = 0.0
    drain_cpu = {edge: 3.0, workers: 6.0, "central: TLS relay": 0.9, CONNECTIONS: 7.0}
    plain_cpu = cpu | {"plain Orthanc sender": 0.6}
    drain = phase(8.0, cpu | drain_cpu, [link] * 30)
    drain["link"] = utilisation(drain["samples"], link)
    one = {
        "slices": 300,
        "study_mb": 157.7,
        "probed_mbit_s": 98.6,
        "link_mbit_s": 100,
        "sha256_mb_s": 500.0,
        "edge_cpus": [0],
        "central_cpus": [1],
        "plain_cstore": phase(15.0, plain_cpu, [0.0] * 5),
        "plain_forward": phase(14.0, cpu, [link] * 20),
        "ours_cstore": phase(12.0, cpu, [0.5 * link] * 5),
        "ours_after_cstore": phase(3.0, cpu, [link] * 5),
        "ours_live": {"bytes_sent_mb": 42.0, "queued_after_s": 0.1, "delivered_after_cstore_s": 2},
        "backlog_cstore": phase(10.0, cpu, [0.0]),
        "backlog_drain": drain,
        "backlog_bytes_sent_mb": 40.0,
    }
    text = report({"runs": [one | {"layout": "fair", "rate_mbit": 100}]})
    lines = {line.split("  ")[0].strip(): line for line in text.splitlines()}
    assert "1.25x" in lines["C-STORE into the edge (s)"]  # 15 / 12
    assert "1.93x" in lines["live: C-STORE start -> study at central (s)"]  # 29 / 15
    assert "1.75x" in lines["backlog: waiting study -> at central (s)"]  # 14 / 8
    # floor: 40 MB at 12.5 MB/s = 3.2 s; the drain took 8 s, 2.5 times it
    floor = lines["backlog vs compressed-bytes floor"]
    assert "3.20" in floor and "2.50x" in floor
    # backlog study, 300 instances: 20 ms compress, 10 ms edge Orthanc of which 133 kB
    # hashed at 500 MB/s (0.27 ms) and 2 ms receiving as the plain sender did
    stages = next(line for line in text.splitlines() if line.startswith("edge CPU"))
    assert "(C-STORE + drain) 30.0 ms" in stages and "compress (CharLS workers) 20.0" in stages
    assert "plain Orthanc does (its C-STORE above) 2.0" in stages
    assert "0.3; the rest" in stages and "TLS upload) 7.7;" in stages
    assert "the other end, 3.0)" in stages
    assert "backlog drain 7" in text


def test_without_tbf_the_busy_window_follows_the_senders_peak() -> None:
    # a 5 Gbit/s link, a sender at 80 Mbit/s for 1 s between idle seconds
    rates = [0.0] * 10 + [10 * MB] * 10 + [0.0] * 10
    got = utilisation(samples(rates), 625 * MB)
    assert got["busy_s"] == pytest.approx(1.0)
    assert got["mean_mbit_s"] == pytest.approx(80.0, abs=0.5)
    assert got["utilisation"] == pytest.approx(0.016, abs=0.001)


def test_a_variant_is_named_in_its_heading_and_its_replaces_are_priced() -> None:
    assert parse_variant('after={"ReplaceAfterIdleSeconds": 2}') == (
        "after",
        {"ReplaceAfterIdleSeconds": 2},
    )
    for bad in ("={}", "x=[1]"):
        with pytest.raises(SystemExit):
            parse_variant(bad)
    link = 12.5 * MB
    edge = "edge Orthanc (receive, store, hash, TLS upload)"
    workers = "edge compression workers (CharLS)"
    cpu = {edge: 0.0, workers: 0.0, "central: TLS relay": 0.0, CONNECTIONS: 0.0}
    cpu["plain Orthanc sender"] = 0.0
    drain = phase(8.0, cpu | {edge: 3.0}, [link] * 30)
    one = {
        "slices": 300,
        "study_mb": 157.7,
        "probed_mbit_s": 98.6,
        "link_mbit_s": 100,
        "sha256_mb_s": 500.0,
        "edge_cpus": [0],
        "central_cpus": [1],
        "plain_cstore": phase(15.0, cpu, [0.0] * 5),
        "plain_forward": phase(14.0, cpu, [link] * 20),
        "ours_cstore": phase(12.0, cpu, [0.5 * link] * 5),
        "ours_after_cstore": phase(3.0, cpu, [link] * 5),
        "ours_settle": phase(4.5, cpu | {edge: 1.5}, [0.0]),
        "ours_live": {"bytes_sent_mb": 42.0, "queued_after_s": 0.1, "delivered_after_cstore_s": 2},
        "backlog_cstore": phase(10.0, cpu, [0.0]),
        "backlog_drain": drain,
        "backlog_settle": phase(4.0, cpu | {edge: 1.2}, [0.0]),
        "backlog_bytes_sent_mb": 40.0,
        "variant": "after",
        "edge_settings": {"ReplaceAfterIdleSeconds": 2},
    }
    text = report({"runs": [one | {"layout": "fair", "rate_mbit": 100}]})
    assert '== edge after {"ReplaceAfterIdleSeconds": 2}: tbf 100 Mbit/s' in text
    assert "live 4.50 s after delivery, backlog 4.00 s after the drain" in text
    # the replaces' CPU: 1.2 s over 300 instances after the drain, in the backlog's stages
    stages = next(line for line in text.splitlines() if line.startswith("edge CPU"))
    assert "(C-STORE + drain + replace) 14.0 ms" in stages
    assert "storing the compressed copy after the drain 4.0" in stages
    cpu_line = next(line for line in text.splitlines() if line.startswith("  edge Orthanc"))
    assert cpu_line.split()[-5:] == ["0.0", "5.0", "0.0", "10.0", "4.0"]
