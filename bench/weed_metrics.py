"""SeaweedFS's Prometheus counters (its -metricsPort), read by the archive benchmarks.

The text exposition format is parsed here rather than with prometheus_client, which the
venv does not have: one sample a line, `name{label="value",...} number [timestamp]`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import httpx

# Requests the S3 gateway answered, by S3 operation ("type": PUT, GET, HEAD, DELETE, ...).
S3_REQUESTS = "SeaweedFS_s3_request_total"
# What the S3 gateway's writes and reads cost behind it: the filer's requests and its
# metadata store's operations, and the volume server's requests.
FILER_REQUESTS = "SeaweedFS_filer_request_total"
FILER_STORE = "SeaweedFS_filerStore_request_total"
VOLUME_REQUESTS = "SeaweedFS_volumeServer_request_total"
COUNTERS = (S3_REQUESTS, FILER_REQUESTS, FILER_STORE, VOLUME_REQUESTS)

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Sample = tuple[str, dict[str, str], float]


def parse(text: str) -> list[Sample]:
    """Every sample in a Prometheus text page as (name, labels, value); comments skipped."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"not a Prometheus sample: {line[:80]!r}")
        name, labels, value = match.groups()
        pairs = {
            k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            for k, v in _LABEL.findall(labels or "")
        }
        samples.append((name, pairs, float(value)))
    return samples


def totals(samples: Iterable[Sample], name: str, by: str) -> dict[str, float]:
    """The samples of counter `name` summed per value of label `by` (other labels merged)."""
    out: dict[str, float] = {}
    for sample_name, labels, value in samples:
        if sample_name == name:
            key = labels.get(by, "")
            out[key] = out.get(key, 0.0) + value
    return out


def counters(samples: Iterable[Sample]) -> dict[str, dict[str, float]]:
    """COUNTERS, each summed by its "type" label."""
    listed = list(samples)
    return {name: totals(listed, name, "type") for name in COUNTERS}


def scrape(url: str) -> dict[str, dict[str, float]]:
    """The counters of the SeaweedFS whose metrics page is at `url`."""
    response = httpx.get(url, timeout=5.0)
    response.raise_for_status()
    return counters(parse(response.text))


def per_instance(
    after: Mapping[str, Mapping[str, float]],
    before: Mapping[str, Mapping[str, float]],
    instances: int,
) -> dict[str, dict[str, float]]:
    """Counter deltas per instance, per counter and type; types that did not move dropped."""
    out: dict[str, dict[str, float]] = {}
    for name, types in after.items():
        moved = {
            kind: (value - before.get(name, {}).get(kind, 0.0)) / instances
            for kind, value in types.items()
        }
        out[name] = {kind: v for kind, v in sorted(moved.items()) if v}
    return out
