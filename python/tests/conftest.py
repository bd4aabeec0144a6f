"""Shared fixtures for the Python tests."""

import os

import pytest

import laminardb


@pytest.fixture
def db():
    """An in-memory database with two workers, closed after the test."""
    conn = laminardb.open(":memory:", config=laminardb.LaminarConfig(workers=2))
    yield conn
    conn.close()


@pytest.fixture
def trades(db):
    """A database with a `trades` source and an aggregate stream, started."""
    db.execute("CREATE SOURCE trades (symbol VARCHAR, price DOUBLE, qty BIGINT)")
    db.execute(
        "CREATE STREAM agg AS SELECT symbol, COUNT(*) AS n, SUM(qty) AS q, MAX(price) AS hi FROM trades GROUP BY symbol"
    )
    db.start()
    return db


@pytest.fixture
def s3(monkeypatch):
    """The S3 stand-in of scripts/services.sh: the AWS_* environment pointed at it; gives
    (endpoint, bucket)."""
    endpoint = os.environ.get("LAMINAR_TEST_S3_ENDPOINT")
    if not endpoint:
        raise RuntimeError("LAMINAR_TEST_S3_ENDPOINT is not set: run scripts/test.sh")
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "test",
                 "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    return endpoint, os.environ.get("LAMINAR_TEST_S3_BUCKET", "laminar-test")
