"""The edge's side of the fleet (#15): a heartbeat to central, the rules document from
central, the upgrade orders (docs: /tmp contract, indexer/api/routes/fleet.py).

Central never connects into a hospital: the edge calls it, through the HTTPS gateway,
with the hospital gateway's service-account token (which is also how central knows
which gateway calls: never a field the edge sends).

- `FleetAgent` (every FleetHeartbeatSeconds): POST /fleet/heartbeat with versions,
  uptime, the forwarding queue, failures by kind, disk free, certificate expiry and
  error counts by kind; no study, patient or free text. Then the queued upgrade reports,
  and the upgrade order if central names one.
- `RulesPoller`: fetches GET /fleet/rules?have=<version> and applies what comes through
  the edge's own RulesStore (the local PUT's validation and persistence, so an invalid
  document leaves the last good one in force), then reports applied or refused. Central
  chooses how, in the heartbeat answer (`rules_long_poll`): by default the answer names
  the newest version central holds and the poller fetches only when that is above its
  own (in force within one heartbeat interval; an idle fleet costs central nothing but
  its heartbeats); or a long poll (wait=25, asked again at once) that is answered as soon
  as central holds a change, for one waiting request per gateway at all times.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from .edge_rules import RulesRejected, RulesStore
from .errors import ServiceCallError
from .forward_queue import ForwardQueue
from .http_call import Service
from .upgrade import ReleaseStore, Upgrader
from .worker import Worker

log = logging.getLogger(__name__)
LONG_POLL_S = 25  # the contract's maximum `wait`
MAX_V = 2**31 - 1  # the largest rules version, at central and here
KIND = re.compile(r"[^a-z0-9-]+")


class FleetError(ServiceCallError):
    """Central's fleet API did not answer or refused."""


def iso(moment: float | dt.datetime | None) -> str | None:
    if moment is None:
        return None
    if not isinstance(moment, dt.datetime):
        moment = dt.datetime.fromtimestamp(moment, dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FleetClient:
    """/api/v1/fleet at central, as the gateway account (an httpx auth, BearerAuth)."""

    def __init__(
        self,
        api_url: str,
        auth: httpx.Auth | None,
        *,
        verify: Any = True,
        timeout_s: float = 15.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base = api_url.rstrip("/") + "/v1/fleet"
        timeout = httpx.Timeout(timeout_s, connect=5)
        self.client = httpx.Client(verify=verify, timeout=timeout, auth=auth, transport=transport)
        self.service = Service(self.client, "central's fleet API", FleetError, timeout)
        # a long poll's answer may take `wait` s: its read timeout allows the longest
        poll_timeout = httpx.Timeout(timeout_s + LONG_POLL_S, connect=5)
        self.poll = Service(self.client, "central's fleet API", FleetError, poll_timeout)

    def heartbeat(self, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base}/heartbeat"
        return dict(self.service.json("POST", url, "the heartbeat", json=body))

    def rules(self, have: int, wait_s: int) -> dict[str, Any] | None:
        """The newer document central holds, None when none came within `wait_s`."""
        answer = self.poll.call(
            "GET",
            f"{self.base}/rules",
            "the rules poll",
            expect={200, 204},
            params={"have": have, "wait": min(max(wait_s, 0), LONG_POLL_S)},
        )
        return None if answer.status_code == 204 else dict(answer.json())

    def report_rules(self, version: int, status: str, reason: str = "") -> None:
        body = {"version": version, "status": status, "reason": reason}
        self.service.call("POST", f"{self.base}/rules/report", "the rules report", json=body)

    def upgrade_order(self) -> dict[str, Any] | None:
        url = f"{self.base}/upgrade"
        answer = self.service.call("GET", url, "the upgrade order", expect={200, 204})
        return None if answer.status_code == 204 else dict(answer.json())

    def bundle(self, release: str, max_bytes: int) -> bytes:
        """The bundle's bytes, at most `max_bytes` read (a longer answer is cut, and then
        fails its size check)."""
        url = f"{self.base}/releases/{release}/bundle"
        try:
            with self.client.stream("GET", url, timeout=httpx.Timeout(120, connect=5)) as answer:
                if answer.status_code != 200:
                    raise FleetError(f"central refused (the bundle): HTTP {answer.status_code}")
                data = bytearray()
                for chunk in answer.iter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        break
                return bytes(data)
        except httpx.HTTPError as exc:
            raise FleetError(f"central did not answer (the bundle): {type(exc).__name__}") from exc

    def report_upgrade(self, release: str, status: str, detail: str) -> None:
        body = {"release": release, "status": status, "detail": detail}
        self.service.call("POST", f"{self.base}/upgrade/report", "the upgrade report", json=body)


class ErrorCounter(logging.Handler):
    """Counts the plugin's warnings and errors by kind (the logger's last name: forwarding,
    delivery, ...) since the last heartbeat took them. Messages are never kept."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._counts: Counter[str] = Counter()
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        kind = KIND.sub("-", record.name.rsplit(".", 1)[-1].lower()).strip("-") or "other"
        with self._lock2:
            self._counts[kind] += 1

    def take(self) -> dict[str, int]:
        with self._lock2:
            counts, self._counts = dict(self._counts), Counter()
        return counts

    def give_back(self, counts: Mapping[str, int]) -> None:
        """A heartbeat that did not reach central: its counts go into the next one."""
        with self._lock2:
            self._counts.update(counts)


def failure_kind(last_error: str | None) -> str:
    """A failed delivery's reason as a kind: never its text (it may name a study)."""
    text = (last_error or "").lower()
    if "did not answer" in text:
        return "central-unreachable"
    status = re.search(r"http (\d{3})", text)
    if "refused" in text and status:
        return f"central-http-{status.group(1)}"
    if "sha-256" in text or "hash" in text or "confirm" in text:
        return "not-confirmed"
    if "compress" in text or "encod" in text:
        return "compression"
    return "other"


def queue_health(queue: ForwardQueue, now: float) -> dict[str, Any]:
    """The heartbeat's forwarding fields, from the durable queue."""
    counters = queue.counters()
    oldest = queue.one(
        "SELECT MIN(queued_at) FROM studies WHERE state IN ('queued','sending','partial','failed')"
    )
    reasons = Counter(
        failure_kind(row[0])
        for row in queue.all("SELECT last_error FROM studies WHERE state = 'failed'")
    )
    return {
        "queue_depth": int(counters["queue_depth"]),
        "oldest_undelivered_age_s": (
            round(max(0.0, now - oldest[0]), 1) if oldest and oldest[0] is not None else None
        ),
        "failing_deliveries": int(counters["failing"]),
        "failure_reasons": dict(reasons),
        "last_delivery_at": iso(counters["last_success"]),
    }


def certificate_expiry(files: Mapping[str, Path]) -> dict[str, str]:
    """name -> notAfter of the first certificate in each PEM file (unreadable: left out)."""
    expiry = {}
    for name, path in files.items():
        try:
            certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except (OSError, ValueError):
            log.warning("certificate %s unreadable at %s", name, path)
            continue
        expiry[name] = str(iso(certificate.not_valid_after_utc))
    return expiry


class FleetAgent(Worker):
    """The heartbeat loop; also sends queued upgrade reports and acts on upgrade orders."""

    name = "imgcloud-fleet"

    def __init__(
        self,
        central: FleetClient,
        *,
        versions: Callable[[], dict[str, Any]],
        queue: ForwardQueue,
        rules: RulesStore,
        storage_dir: Path,
        certificates: Mapping[str, Path],
        errors: ErrorCounter,
        releases: ReleaseStore | None = None,
        upgrader: Upgrader | None = None,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(every_s=every_s, backoff_max_s=max(every_s, 60.0))
        self.central = central
        self.versions = versions
        self.queue = queue
        self.rules = rules
        self.storage_dir = storage_dir
        self.certificates = dict(certificates)
        self.errors = errors
        self.releases = releases
        self.upgrader = upgrader
        self.clock = clock
        self.started_at = clock()
        self.last_ok: float | None = None  # when central last took a heartbeat
        self.last_answer: dict[str, Any] = {}
        self.rules_poller: RulesPoller | None = None  # told what each answer says of rules

    def pause_s(self) -> float:
        """After a failure, again within seconds (central or the gateway may start after
        this edge), doubling up to the interval; else the interval."""
        if not self.failures:
            return self.every_s
        return min(self.every_s, 2.0 * 2.0 ** (self.failures - 1))

    def body(self, error_counts: dict[str, int]) -> dict[str, Any]:
        now = self.clock()
        versions = self.versions()
        return {
            "software_version": versions["software_version"],
            "orthanc_version": versions["orthanc_version"],
            "plugins": versions["plugins"],
            "uptime_s": round(now - self.started_at, 1),
            **queue_health(self.queue, now),
            "disk_free_bytes": shutil.disk_usage(self.storage_dir).free,
            "cert_expiry": certificate_expiry(self.certificates),
            "error_counts": error_counts,
            "rules_version": self.rules.current.version,
            "release": versions["software_version"],
        }

    def work(self) -> bool:
        counts = self.errors.take()
        try:
            answer = self.central.heartbeat(self.body(counts))
        except Exception:
            self.errors.give_back(counts)
            raise
        self.last_ok, self.last_answer = self.clock(), answer
        interval = answer.get("interval_s")
        if isinstance(interval, int | float) and 5 <= interval <= 3600:
            self.every_s = float(interval)  # central may slow a large fleet down
        if self.rules_poller is not None:
            self.rules_poller.on_heartbeat(answer)
        self.send_reports()
        if answer.get("upgrade") and self.upgrader is not None:
            self.upgrader.check()
        return False

    def send_reports(self) -> None:
        if self.releases is None:
            return
        reports = self.releases.take_reports()
        sent = 0
        try:
            for report in reports:
                try:
                    self.central.report_upgrade(
                        report["release"], report["status"], report.get("detail", "")
                    )
                except FleetError as exc:
                    if exc.status not in (400, 404, 409, 422):
                        raise  # unreachable, or not now: the report waits for the next beat
                    # central will never take it (an upgrade it no longer knows): sending it
                    # again would hold every later report back
                    log.warning("upgrade report for %s dropped: %s", report["release"], exc)
                sent += 1
        finally:
            if sent:
                self.releases.reported(sent)

    def central_took_a_heartbeat(self) -> str | None:
        """A health check for a trial release: None once central answered a heartbeat."""
        return None if self.last_ok is not None else "central has not taken a heartbeat yet"


class RulesPoller(Worker):
    """Fetches the rules document from central and applies it locally: when a heartbeat
    answer names a newer version than this edge holds, or, if central asks for it, by a
    long poll that is always waiting. Before the first heartbeat answer it asks once
    without waiting (a version published while this edge was down is taken at start)."""

    name = "imgcloud-fleet-rules"

    def __init__(
        self,
        central: FleetClient,
        rules: RulesStore,
        *,
        wait_s: int = LONG_POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # woken by the heartbeat (notify); every `every_s` it also asks without waiting, so
        # rules still arrive while heartbeats are refused or lost
        super().__init__(every_s=300.0, backoff_max_s=60.0)
        self.central = central
        self.rules = rules
        self.wait_s = wait_s
        self.clock = clock
        self.refused = 0  # the newest version refused here: asked past, not again
        self.long_poll = False  # as the last heartbeat answer said
        self.offered: int | None = None  # the newest version central named; None: unknown
        self.asked_at: float | None = None  # when central was last asked

    def have(self) -> int:
        return max(self.rules.current.version, self.refused)

    def on_heartbeat(self, answer: Mapping[str, Any]) -> None:
        """What a heartbeat answer says of rules: how to fetch, and the newest version."""
        self.long_poll = answer.get("rules_long_poll") is True
        version = answer.get("rules_version")
        if isinstance(version, int) and not isinstance(version, bool) and 0 <= version <= MAX_V:
            self.offered = version
        if self.long_poll or (self.offered or 0) > self.have():
            self.notify()

    def work(self) -> bool:
        now = self.clock()
        due = self.asked_at is None or now - self.asked_at >= self.every_s
        if not self.long_poll and not due and (self.offered or 0) <= self.have():
            return False  # nothing newer at central: wait for a heartbeat to say otherwise
        offered_before, wait = self.offered, self.wait_s if self.long_poll else 0
        self.asked_at = now
        offered = self.central.rules(self.have(), wait)
        if offered is None:
            if self.offered == offered_before:
                self.offered = self.have()  # central holds nothing newer after all
            if self.long_poll and self.clock() - now >= max(1.0, wait / 2):
                return not self._stop.is_set()  # the poll waited: poll again at once
            return False  # answered early (or not a long poll): until the next heartbeat
        version = int(offered.get("version", 0))
        document = dict(offered.get("document") or {})
        document["version"] = version  # central's numbering is the one in force
        try:
            self.rules.replace(json.dumps(document))
        except RulesRejected as exc:
            if self.rules.current.version < version <= MAX_V:
                self.refused = max(self.refused, version)
            log.warning("rules version %d from central refused: %s", version, exc)
            if 1 <= version <= MAX_V:
                self.central.report_rules(version, "refused", str(exc)[:500])  # keeps 500
            return False  # not again at once: at the next heartbeat, or the next round
        log.warning("rules version %d from central applied", version)
        self.central.report_rules(version, "applied")
        return True
