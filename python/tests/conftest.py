"""Shared fixtures for the Python tests."""

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
