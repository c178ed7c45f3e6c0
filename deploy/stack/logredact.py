"""Copy a service's output into its log file with patient values masked.

Orthanc's core logs some DICOM values at ERROR level whatever the verbosity: a store that
lacks a UID is logged as "... not present in the DICOM file (PatientID=..., ...)". No
setting of Orthanc stops that line. nginx's error log writes the request line of a request
that failed upstream, query string and path included (a search's PatientName, a patient
route's MRN, a share link's secret). So the launcher pipes the output of both through this
filter: `python -m deploy.stack.logredact LOGFILE` reads stdin and appends to LOGFILE
(mode 0600), masking the value of every patient attribute it recognises, every query
string, MRNs in patient routes and share-link secrets.
"""

from __future__ import annotations

import os
import re
import signal
import sys

# DICOM keywords whose values are personal data (house rules: names, IDs, birth date, ...).
PERSONAL_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientBirthName",
    "PatientMotherBirthName",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "IssuerOfPatientID",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "AccessionNumber",
)
_KEYS = "|".join(PERSONAL_KEYWORDS)
# Keyword=value up to the next ", Keyword=", a closing parenthesis or the line's end (a
# value may hold commas), and "Keyword": "value".
_ASSIGNED = re.compile(rf"\b({_KEYS})=(.*?)(?=, [A-Za-z][A-Za-z0-9]*=|\)|$)")
_JSON = re.compile(rf'("(?:{_KEYS})"\s*:\s*)"((?:[^"\\\n]|\\.)*)"')
# In URLs: any query string, the MRN of a patient route, a share link's secret.
_QUERY = re.compile(r"(/[^\s\"?]*)\?[^\s\"]*")
_MRN = re.compile(r"(/api/v1/institutions/[^/\s\"]+/patients/)[^/\s\"?]+")
_SHARE = re.compile(r"(/s/)[^/\s\"?]+")
MASK = "(redacted)"


def redact(line: str) -> str:
    """The line with the values of personal attributes replaced by MASK."""
    line = _QUERY.sub(lambda m: f"{m.group(1)}?{MASK}", line)  # first: ends at a space
    line = _ASSIGNED.sub(lambda m: f"{m.group(1)}={MASK}", line)
    line = _JSON.sub(lambda m: f'{m.group(1)}"{MASK}"', line)
    line = _MRN.sub(lambda m: f"{m.group(1)}(mrn)", line)
    return _SHARE.sub(lambda m: f"{m.group(1)}(secret)", line)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m deploy.stack.logredact LOGFILE", file=sys.stderr)
        return 2
    # The service's process group gets the stop signals; this filter ends when its input
    # ends, so it keeps the service's last lines.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    fd = os.open(argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8", errors="replace") as out:
        stdin = open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False)
        for line in stdin:
            out.write(redact(line))
            out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
