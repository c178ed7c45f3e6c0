"""An edge's DICOM modalities are fixed by its configuration: the REST API may not add,
change or remove them. Otherwise a second entry for the TLS-only PACS AE title with
another Host, put through the edge's admin API, would escape the load-time checks of
DicomModalities and let that AE title in on the plain port."""

from __future__ import annotations

from deploy.stack.client import StackClient
from deploy.stack.settings import StackSettings

from ..support.eventually import eventually


def test_rest_changes_to_dicom_modalities_are_refused_and_logged(
    stack: StackClient, stack_settings: StackSettings
) -> None:
    with stack.orthanc("EDGE_A") as edge:
        before = edge.get("/modalities?expand").json()
        pacs_name = next(n for n, e in before.items() if e["AET"] == "HOSP_PACS")
        elsewhere = before[pacs_name] | {"Host": "127.0.0.99"}  # the PACS's AE, another host
        try:
            second = edge.put("/modalities/SECOND_PACS", json=elsewhere)
            changed = edge.put(f"/modalities/{pacs_name}", json=elsewhere)
            removed = edge.delete(f"/modalities/{pacs_name}")
        finally:
            edge.delete("/modalities/SECOND_PACS")  # refused too; undoes it without the fix
        assert (second.status_code, changed.status_code, removed.status_code) == (403, 403, 403)
        assert edge.get("/modalities?expand").json() == before
        # reading and using the entries is not changing them
        assert edge.get(f"/modalities/{pacs_name}").status_code == 200
        # a Lua script's RestApiPut would not pass the filter: no script runs
        script = 'RestApiDelete("/modalities/' + pacs_name + '")'
        assert edge.post("/tools/execute-script", content=script).status_code == 403
        assert edge.get("/modalities?expand").json() == before
    log = stack_settings.log("edge-a")
    eventually(
        lambda: "refused PUT '/modalities/SECOND_PACS'" in log.read_text(errors="replace"),
        what="the refusal in edge A's log",
        timeout=10,
    )
    assert "DicomModalities" in log.read_text(errors="replace")
