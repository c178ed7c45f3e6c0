"""The S3 bucket is reachable with the configured credentials, and only with them."""

from __future__ import annotations

import uuid

import pytest
from botocore.exceptions import ClientError

from deploy.stack.client import StackClient
from deploy.stack.services.seaweedfs import s3_client


def test_bucket_round_trip_with_configured_credentials(stack: StackClient) -> None:
    s3 = s3_client(stack["S3_ENDPOINT"], stack["S3_ACCESS_KEY"], stack["S3_SECRET_KEY"])
    key = f"tests/{uuid.uuid4()}"
    body = uuid.uuid4().bytes * 1000
    s3.put_object(Bucket=stack["S3_BUCKET"], Key=key, Body=body)
    try:
        assert s3.get_object(Bucket=stack["S3_BUCKET"], Key=key)["Body"].read() == body
    finally:
        s3.delete_object(Bucket=stack["S3_BUCKET"], Key=key)


def test_wrong_secret_is_refused(stack: StackClient) -> None:
    s3 = s3_client(stack["S3_ENDPOINT"], stack["S3_ACCESS_KEY"], "wrong-secret-key-000000")
    with pytest.raises(ClientError) as info:
        s3.head_bucket(Bucket=stack["S3_BUCKET"])
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
