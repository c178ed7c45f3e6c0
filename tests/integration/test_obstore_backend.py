"""The obstore S3 backend against the stack's real SeaweedFS: round trip, S3's own
answers for a missing object and for a wrong secret, listing, and SeaweedFS down."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from imgcloud.errors import ObjectNotFound, StorageUnavailable
from imgcloud.storage.backends import S3Settings, s3_store
from imgcloud.storage.obstore_store import ObstoreS3Store

from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context, start_service, stop_service
from deploy.stack.services.seaweedfs import s3_client
from deploy.stack.settings import StackSettings

from ..support.eventually import eventually


def settings(stack: StackClient, **kw: object) -> S3Settings:
    base: dict = dict(
        endpoint=stack["S3_ENDPOINT"],
        region="us-east-1",
        bucket=stack["S3_BUCKET"],
        access_key=stack["S3_ACCESS_KEY"],
        secret_key=stack["S3_SECRET_KEY"],
        client="obstore",
        connect_timeout_s=2.0,
        read_timeout_s=5.0,
        max_attempts=3,
    )
    return S3Settings(**(base | kw))


@pytest.fixture
def prefix() -> str:
    return f"test-obstore/{uuid.uuid4()}/"


def test_round_trip_and_the_bucket_holds_exactly_the_bytes(stack: StackClient, prefix: str):
    store = s3_store(settings(stack))
    assert isinstance(store, ObstoreS3Store)
    body = os.urandom(525_000)
    key = f"{prefix}ab/cd/{uuid.uuid4()}.1"
    store.put(key, body)
    assert store.get(key) == body
    # what boto3 reads back from the same bucket is the same object
    s3 = s3_client(stack["S3_ENDPOINT"], stack["S3_ACCESS_KEY"], stack["S3_SECRET_KEY"])
    assert s3.get_object(Bucket=stack["S3_BUCKET"], Key=key)["Body"].read() == body
    store.delete(key)
    with pytest.raises(ObjectNotFound):
        store.get(key)
    store.delete(key)  # deleting what is gone is not an error, as with boto3


def test_a_missing_object_is_object_not_found(stack: StackClient, prefix: str) -> None:
    with pytest.raises(ObjectNotFound, match="not found in bucket"):
        s3_store(settings(stack)).get(f"{prefix}never-written.1")


def test_a_wrong_secret_is_unavailable_never_not_found(stack: StackClient, prefix: str):
    wrong = "x" * len(stack["S3_SECRET_KEY"])
    store = s3_store(settings(stack, secret_key=wrong))
    for action in (lambda: store.get(f"{prefix}a.1"), lambda: store.put(f"{prefix}a.1", b"x")):
        with pytest.raises(StorageUnavailable) as caught:
            action()
        assert wrong not in str(caught.value) and stack["S3_SECRET_KEY"] not in str(caught.value)
    with pytest.raises(ObjectNotFound):  # and nothing was written with it
        s3_store(settings(stack)).get(f"{prefix}a.1")


def test_listing_keeps_s3_prefixes_and_start_after(stack: StackClient, prefix: str) -> None:
    store = s3_store(settings(stack))
    keys = [f"{prefix}ab/{n}.1" for n in ("k1", "k2", "k3")] + [f"{prefix}abc.1"]
    for key in keys:
        store.put(key, b"sealed")
    try:
        assert [o.key for o in store.list(f"{prefix}ab")] == sorted(keys)  # a string prefix
        listed = list(store.list(prefix, start_after=keys[0]))
        assert [o.key for o in listed] == sorted(keys)[1:]
        assert all(o.size == len(b"sealed") for o in listed)
    finally:
        for key in keys:
            store.delete(key)


def test_seaweedfs_down_is_a_clean_bounded_error(
    stack: StackClient, stack_settings: StackSettings, prefix: str
) -> None:
    store = s3_store(settings(stack))
    key = f"{prefix}x.1"
    store.put(key, b"before")
    ctx = load_context(stack_settings)
    stop_service(ctx, "seaweedfs")
    try:
        for action in (lambda: store.put(key, b"during"), lambda: store.get(key)):
            started = time.monotonic()
            with pytest.raises(StorageUnavailable, match=r"S3 (put|get)"):
                action()
            assert time.monotonic() - started < 3 * (2 + 5) + 5
    finally:
        start_service(ctx, "seaweedfs")
    # The same client, not rebuilt, reads again once SeaweedFS serves (its S3 gateway is up
    # a moment before its volumes: a GET just after the restart may be a 500, for any client).
    assert eventually(lambda: store.get(key), what="a read after the restart") == b"before"
    store.delete(key)
