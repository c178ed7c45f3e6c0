"""bench.syscalls: strace -c summaries parsed into counts."""

from __future__ import annotations

from bench.syscalls import parse_summary

SUMMARY = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 75.72    0.308621          19     15658           write
 23.65    0.096381          79      1207           pwrite64
  0.64    0.002596         185        14         2 fsync
------ ----------- ----------- --------- --------- ----------------
100.00    0.407598          24     16879         2 total
"""


def test_counts_come_from_the_calls_column():
    assert parse_summary(SUMMARY) == {"write": 15658, "pwrite64": 1207, "fsync": 14}


def test_an_empty_summary_counts_nothing():
    assert parse_summary("strace: Process 12 attached\n") == {}
