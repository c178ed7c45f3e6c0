"""Authorised DICOMweb through the gateway against direct access to the central Orthanc.

    make up && .venv/bin/python -m bench.gateway_bench [--instances 100] [--rounds 5]

Our path: HTTPS to nginx, which asks the indexer (auth_request: the Keycloak token's
signature, issuer, audience and expiry, then the caller's right to the study) before it
proxies to central. Baseline: plain HTTP straight to central's loopback port with its own
Basic credentials, no token, no authorisation decision, no TLS. Same study, same run,
alternating sides. Reported: whole-study WADO-RS MB/s (target >= 0.9x), single-frame
requests/s with parallel clients (a viewer scrolling), uploads/s as an edge makes them
(through the gateway each file's StudyInstanceUID is checked by the indexer on the way),
and what one token validation costs: in-process, and as the whole auth_request round trip
to the indexer.
"""

from __future__ import annotations

import argparse
import io
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from deploy.samples.studies import make_study
from deploy.stack.client import ORTHANC_POOL_LIMITS, StackClient, find_study, wait_for_instances
from deploy.stack.settings import StackSettings
from indexer.security.auth import TokenVerifier

MULTIPART_DICOM = {"Accept": 'multipart/related; type="application/dicom"'}
MULTIPART_FRAME = {"Accept": 'multipart/related; type="application/octet-stream"'}


class Side:
    """One way of reaching central's DICOMweb: a factory of HTTP clients."""

    def __init__(self, name: str, make: Callable[[], httpx.Client]) -> None:
        self.name = name
        self.make = make


def token_source(fetch: Callable[[], str]) -> Callable[[], str]:
    """A token, fetched again every 2 minutes (access tokens live 5)."""
    value, at = [""], [-1e9]

    def token() -> str:
        if time.monotonic() - at[0] > 120:
            value[0], at[0] = fetch(), time.monotonic()
        return value[0]

    return token


def sides(stack: StackClient, token: Callable[[], str]) -> list[Side]:
    central = stack["CENTRAL_ORTHANC_URL"]
    auth = (stack["CENTRAL_ORTHANC_USER"], stack["CENTRAL_ORTHANC_PASSWORD"])

    def direct() -> httpx.Client:
        return httpx.Client(base_url=central, auth=auth, timeout=120, limits=ORTHANC_POOL_LIMITS)

    def gateway() -> httpx.Client:
        return httpx.Client(
            base_url=stack["GATEWAY_URL"],
            verify=stack.ca_context(),
            headers={"Authorization": f"Bearer {token()}"},
            timeout=120,
        )

    return [Side("direct Orthanc", direct), Side("gateway + token", gateway)]


def ensure_study(stack: StackClient, instances: int) -> str:
    """A CT study of hospital A at central, sent the real way (edge A forwards it)."""
    study = make_study(90_210, "CT", instances=instances, institution_code="H0001")
    uid = study.exam.study_instance_uid
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        if find_study(central, uid) is None:
            print(f"sending a {instances}-slice CT study through edge A ...", flush=True)
            assert stack.send_to_edge("A", study.instances()).ok
        wait_for_instances(central, uid, instances, timeout_s=300)
    return uid


def whole_study(side: Side, uid: str) -> tuple[float, int]:
    with side.make() as c:
        started = time.perf_counter()
        response = c.get(f"/dicom-web/studies/{uid}", headers=MULTIPART_DICOM)
        response.raise_for_status()
        return time.perf_counter() - started, len(response.content)


def frame_paths(side: Side, uid: str) -> list[str]:
    with side.make() as c:
        found = c.get(f"/dicom-web/studies/{uid}/instances").json()
    return [
        f"/dicom-web/studies/{uid}/series/{item['0020000E']['Value'][0]}"
        f"/instances/{item['00080018']['Value'][0]}/frames/1"
        for item in found
    ]


def frames_per_s(side: Side, paths: list[str], clients: int) -> float:
    local = threading.local()

    def fetch(path: str) -> None:
        if not hasattr(local, "c"):
            local.c = side.make()
        local.c.get(path, headers=MULTIPART_FRAME).raise_for_status()

    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(fetch, paths[: clients * 2]))  # open and warm the connections
        started = time.perf_counter()
        list(pool.map(fetch, paths))
        return len(paths) / (time.perf_counter() - started)


def upload_per_s(side: Side, files: list[bytes], path: str, clients: int) -> float:
    """Instances/s stored at central by `clients` parallel uploaders (the edges' path)."""
    local = threading.local()

    def post(raw: bytes) -> None:
        if not hasattr(local, "c"):
            local.c = side.make()
        local.c.post(
            path, content=raw, headers={"Content-Type": "application/dicom"}
        ).raise_for_status()

    with ThreadPoolExecutor(max_workers=clients) as pool:
        started = time.perf_counter()
        list(pool.map(post, files))
        return len(files) / (time.perf_counter() - started)


def study_files(instances: int) -> list[bytes]:
    out = []
    for ds in make_study(90_210, "CT", instances=instances, institution_code="H0001").instances():
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def verify_cost_us(stack: StackClient, token: str) -> tuple[float, float]:
    """(first validation, cached validation) of one access token, in microseconds: the
    indexer's own verifier, realm keys already fetched."""
    realm = f"/realms/{stack['KEYCLOAK_REALM']}"
    verifier = TokenVerifier(
        stack["KEYCLOAK_URL"] + realm,
        stack["KEYCLOAK_INTERNAL_URL"] + realm + "/protocol/openid-connect/certs",
        "imaging-cloud-api",
        5.0,
    )
    verifier.verify(token)  # fetches the realm's keys
    firsts, cached = [], []
    for _ in range(300):
        verifier.forget()
        started = time.perf_counter()
        verifier.verify(token)
        firsts.append(time.perf_counter() - started)
        started = time.perf_counter()
        verifier.verify(token)
        cached.append(time.perf_counter() - started)
    return statistics.median(firsts) * 1e6, statistics.median(cached) * 1e6


def authz_round_trip_ms(stack: StackClient, token: str, uid: str, rounds: int = 300) -> float:
    """The auth_request subrequest nginx makes, timed from the gateway host."""
    headers = {
        "Authorization": f"Bearer {token}",
        "X-Original-URI": f"/dicom-web/studies/{uid}/metadata",
        "X-Original-Method": "GET",
        "X-Original-Remote": "127.0.0.1",
    }
    out = []
    with httpx.Client(base_url=stack["INDEXER_URL"], timeout=10) as c:
        for _ in range(rounds):
            started = time.perf_counter()
            c.get("/api/v1/authz/dicomweb", headers=headers).raise_for_status()
            out.append(time.perf_counter() - started)
    return statistics.median(out) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5, help="whole-study retrievals per side")
    parser.add_argument("--clients", type=int, default=4, help="parallel frame clients")
    args = parser.parse_args()
    stack = StackClient.from_file(StackSettings.from_env().stack_env)
    user, password = stack["DEMO_RADIOLOGIST_A_USER"], stack["DEMO_RADIOLOGIST_A_PASSWORD"]
    token = token_source(lambda: stack.password_token(user, password)["access_token"])
    edge_token = token_source(lambda: stack.gateway_account_token("H0001"))

    uid = ensure_study(stack, args.instances)
    both = sides(stack, token)
    study: dict[str, list[tuple[float, int]]] = {s.name: [] for s in both}
    for _ in range(args.rounds):  # alternate, so drift hits both sides alike
        for side in both:
            study[side.name].append(whole_study(side, uid))
    paths = frame_paths(both[0], uid)
    frames = {s.name: frames_per_s(s, paths * 3, args.clients) for s in both}
    # uploads as hospital A's edge makes them: re-storing the same study's files
    files = study_files(args.instances)
    uploaders = sides(stack, edge_token)
    uploads = {
        s.name: upload_per_s(s, files, path, args.clients)
        for s, path in zip(uploaders, ("/instances", "/orthanc/instances"), strict=True)
    }
    first_us, cached_us = verify_cost_us(stack, token())
    round_trip_ms = authz_round_trip_ms(stack, token(), uid)

    size_mb = study[both[0].name][0][1] / 1e6
    mb_s = {
        name: statistics.median(size / 1e6 / s for s, size in runs) for name, runs in study.items()
    }
    base, ours = both[0].name, both[1].name
    print(f"\nstudy: {args.instances} CT instances, {size_mb:.1f} MB per WADO-RS retrieval")
    print(f"{'metric':<30} {base:>15} {ours:>16} {'ratio':>7}  target")
    print(
        f"{'whole-study WADO-RS MB/s':<30} {mb_s[base]:>15.1f} {mb_s[ours]:>16.1f} "
        f"{mb_s[ours] / mb_s[base]:>6.2f}x  >= 0.90x"
    )
    print(
        f"{f'single frames/s ({args.clients} clients)':<30} {frames[base]:>15.0f} "
        f"{frames[ours]:>16.0f} {frames[ours] / frames[base]:>6.2f}x"
    )
    print(
        f"{f'uploads/s ({args.clients} edge clients)':<30} {uploads[base]:>15.0f} "
        f"{uploads[ours]:>16.0f} {uploads[ours] / uploads[base]:>6.2f}x"
        "  (gateway: file's study checked)"
    )
    print(
        f"\ntoken validation: {first_us:.0f} us the first time a token is seen (RS256 "
        f"signature, claims), {cached_us:.1f} us when cached;\nthe whole auth_request "
        f"round trip (HTTP to the indexer, token, study lookup, audit): {round_trip_ms:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
