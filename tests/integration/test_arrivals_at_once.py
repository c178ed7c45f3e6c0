"""The same study's first arrival reported several times at once (an edge and a retry, or
two indexer nodes): every report gets its answer, none a 500 from the race to insert it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from deploy.samples.studies import make_study
from deploy.stack.client import StackClient

from .fresh import fresh_seed
from .test_access_matrix import arrival


def test_concurrent_first_arrivals_of_one_study_all_succeed(stack: StackClient) -> None:
    study = make_study(fresh_seed(), "DX", instances=1, institution_code="H0001")
    token = stack.gateway_account_token("H0001")
    path = "/api/v1/institutions/H0001/studies"

    def report(_: int) -> int:
        with stack.gateway(token) as api:
            return api.post(path, json=arrival(study)).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(report, range(8)))
    assert codes == [200] * 8
    assert report(8) == 200  # and once more, after them
