"""SeaweedFS's per-bucket fsync rule: the weed shell line and the check of its output."""

from __future__ import annotations

import json

from deploy.stack.services.seaweedfs import bucket_prefix, fsync_command, fsync_rule_applied


def conf_text(*locations: dict) -> str:
    """What fs.configure prints: shell notes, then filer.conf as indented JSON."""
    body = json.dumps({"version": 0, "locations": list(locations)}, indent=2)
    return f"> fs.configure ...\n{body}\n\n"


def test_the_command_names_the_bucket_path_and_applies():
    assert fsync_command("imaging-archive") == (
        "fs.configure -locationPrefix=/buckets/imaging-archive/ -fsync -apply"
    )
    assert fsync_command("imaging-archive", fsync=False).endswith("-delete -apply")


def test_rule_with_fsync_for_the_bucket_is_applied():
    out = conf_text({"locationPrefix": bucket_prefix("b"), "fsync": True, "collection": ""})
    assert fsync_rule_applied(out, "b")


def test_rule_without_fsync_or_for_another_path_is_not():
    assert not fsync_rule_applied(conf_text({"locationPrefix": "/buckets/b/", "fsync": False}), "b")
    assert not fsync_rule_applied(conf_text({"locationPrefix": "/buckets/", "fsync": True}), "b")
    assert not fsync_rule_applied(conf_text(), "b")


def test_shell_errors_are_not_taken_for_success():
    assert not fsync_rule_applied("error: connection refused\n", "b")
    assert not fsync_rule_applied("{not json}", "b")
