"""The plugins' own metrics, in Orthanc's /tools/metrics-prometheus beside Orthanc's (#15).

Orthanc's Python plugin has `orthanc.SetMetricsValue(name, value, type)` (Python plugin
4.0 on Debian 12 and 5.0 on Debian 13 alike, platform-notes), but no callback run at scrape
time: a `MetricsPublisher` loop sets the values every few seconds (Python.AllowThreads is on
in both Orthancs' configurations, so the loop's SDK call does not hold the GIL). Orthanc's
exposition has no labels: one name per value, and the soonest certificate only. The stack's
Prometheus ignores Orthanc's timestamps (honor_timestamps: false), so a value the loop set
a few seconds before a scrape counts at the scrape.

Edge (from its durable forwarding queue and its certificate files; the same numbers the
fleet heartbeat sends central, imgcloud.fleet_agent):
  imgcloud_edge_queue_depth                   studies queued, sending, partial or failed
  imgcloud_edge_oldest_undelivered_seconds    age of the oldest of them (0: none)
  imgcloud_edge_failing_deliveries            studies whose last attempt failed
  imgcloud_edge_deliveries_total              studies delivered and confirmed
  imgcloud_edge_cert_expiry_seconds           until the soonest of CertificateFiles expires
Central:
  imgcloud_central_object_store_errors_total  failed creates, reads, removes of the storage
                                              area since start (OBJECT_STORE_ERRORS)

No value names or carries a study, a patient or an error's text.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .fleet_agent import certificate_expiry, queue_health
from .forward_queue import ForwardQueue
from .worker import Worker

log = logging.getLogger(__name__)
PUBLISH_EVERY_S = 5.0
SetValue = Callable[[str, float], None]
Sample = Callable[[], dict[str, float]]


class ErrorCounts:
    """Errors by kind since start, counted from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] = self._counts.get(kind, 0) + 1

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def by_kind(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


# The storage area's failures (create, read, remove), counted by its glue
# (glue_common.register_storage) and published by central's MetricsPublisher.
OBJECT_STORE_ERRORS = ErrorCounts()


def seconds_left(expiry: Mapping[str, str], now: dt.datetime) -> dict[str, float]:
    """name -> seconds until each certificate's notAfter (ISO 8601, as the heartbeat has
    it); negative once expired."""
    left = {}
    for name, text in expiry.items():
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        left[name] = (moment - now).total_seconds()
    return left


def edge_values(
    queue: ForwardQueue, certificates: Mapping[str, Path], clock: Callable[[], float] = time.time
) -> dict[str, float]:
    """The edge's metrics now."""
    now = clock()
    health = queue_health(queue, now)
    delivered = queue.counters()["delivered_studies"]
    values = {
        "imgcloud_edge_queue_depth": float(health["queue_depth"]),
        "imgcloud_edge_oldest_undelivered_seconds": float(
            health["oldest_undelivered_age_s"] or 0.0
        ),
        "imgcloud_edge_failing_deliveries": float(health["failing_deliveries"]),
        "imgcloud_edge_deliveries_total": float(delivered),
    }
    left = seconds_left(certificate_expiry(certificates), dt.datetime.fromtimestamp(now, dt.UTC))
    if left:
        values["imgcloud_edge_cert_expiry_seconds"] = min(left.values())
    return values


def edge_sample(
    queue: ForwardQueue, certificates: Mapping[str, Path], clock: Callable[[], float] = time.time
) -> Sample:
    return lambda: edge_values(queue, certificates, clock)


def central_sample(errors: ErrorCounts = OBJECT_STORE_ERRORS) -> Sample:
    return lambda: {"imgcloud_central_object_store_errors_total": float(errors.total())}


def orthanc_setter(orthanc: Any) -> SetValue:
    """SetValue through the SDK (the `orthanc` module, passed by the glue that imports it)."""

    def set_value(name: str, value: float) -> None:
        orthanc.SetMetricsValue(name, float(value), orthanc.MetricsType.DEFAULT)

    return set_value


class MetricsPublisher(Worker):
    """Every `every_s`: the sample's values into Orthanc's metrics."""

    name = "imgcloud-metrics"

    def __init__(self, sample: Sample, set_value: SetValue, every_s: float = PUBLISH_EVERY_S):
        super().__init__(every_s=every_s, backoff_max_s=max(every_s, 60.0))
        self.sample = sample
        self.set_value = set_value

    def work(self) -> bool:
        for name, value in self.sample().items():
            self.set_value(name, value)
        return False
